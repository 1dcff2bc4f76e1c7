//! Finding the line an inventory error is about, in TOML or YAML text alike: a consistency
//! error (a node id twice, an address twice, timeouts in the wrong order) is found after
//! parsing, where the parsers' positions are gone, so the key or value is looked up in the
//! text. A line that cannot be found is left out of the message, never guessed.

/// The value written after `key` on a line of the form `key = value` (TOML) or
/// `key: value` (YAML, also as a list item `- key: value`), quotes and comments removed.
fn value_after_key<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let l = line.trim_start();
    let l = l.strip_prefix("- ").map(str::trim_start).unwrap_or(l);
    let rest = l.strip_prefix(key)?;
    let rest = rest.trim_start();
    let rest = rest
        .strip_prefix('=')
        .or_else(|| rest.strip_prefix(':'))?
        .trim_start();
    Some(unquote(rest))
}

/// A scalar without its quotes and trailing comment.
fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q) {
            return inner.split(q).next().unwrap_or(inner);
        }
    }
    v.split(" #").next().unwrap_or(v).trim_end()
}

/// The 1-based line of the `nth` (0-based) occurrence of `key`, with `value` when given.
pub fn key_line(text: &str, key: &str, value: Option<&str>, nth: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            value_after_key(l, key).is_some_and(|v| value.is_none_or(|want| v == want))
        })
        .nth(nth)
        .map(|(i, _)| i + 1)
}

/// The 1-based line of the `nth` (0-based) occurrence of `value` as the value of any key.
pub fn value_line(text: &str, value: &str, nth: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| {
            let l = l.trim_start();
            let l = l.strip_prefix("- ").unwrap_or(l);
            l.split_once(['=', ':'])
                .is_some_and(|(_, v)| unquote(v.trim_start()) == value)
        })
        .nth(nth)
        .map(|(i, _)| i + 1)
}

/// The 1-based line where flow brackets (`[`, `{`, outside quotes and comments) first nest
/// deeper than `max`, if they do.
pub fn nested_deeper_than(text: &str, max: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, line) in text.lines().enumerate() {
        let mut quote: Option<char> = None;
        let mut prev = ' ';
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '#') if prev.is_whitespace() => break,
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > max {
                        return Some(i + 1);
                    }
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
            prev = c;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_values_in_both_formats() {
        let toml = "[[node]]\nid = 0 # first\n[[node]]\nid = 0\nlisten = \"127.0.0.1:7000\"\n";
        assert_eq!(key_line(toml, "id", Some("0"), 0), Some(2));
        assert_eq!(key_line(toml, "id", Some("0"), 1), Some(4));
        assert_eq!(key_line(toml, "id", Some("0"), 2), None);
        assert_eq!(value_line(toml, "127.0.0.1:7000", 0), Some(5));
        let yaml = "node:\n  - id: 3\n    listen: '127.0.0.1:7000'\n  - id: 3\n";
        assert_eq!(key_line(yaml, "id", Some("3"), 1), Some(4));
        assert_eq!(key_line(yaml, "listen", None, 0), Some(3));
        assert_eq!(value_line(yaml, "127.0.0.1:7000", 0), Some(3));
        // Nesting, with brackets in quotes and comments not counted.
        assert_eq!(nested_deeper_than("a: [[1], {b: [2]}]\n", 3), None);
        assert_eq!(nested_deeper_than("a: [[1], {b: [2]}]\n", 2), Some(1));
        assert_eq!(nested_deeper_than("a: '[[[['\nb: 1 # [[[[\n", 1), None);
        assert_eq!(nested_deeper_than("a: [\n [\n  [\n", 2), Some(3));
        // A key that only starts like another is not it.
        assert_eq!(key_line("idle = \"spin\"\n", "id", None, 0), None);
    }
}
