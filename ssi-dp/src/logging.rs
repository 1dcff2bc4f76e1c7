//! Structured logs through `tracing-subscriber`: a filter (`EnvFilter`: `--log`, else
//! `--verbose`, else `RUST_LOG`, else `info`) in front of a `fmt` layer that writes one line
//! per event on stderr, either for people (`ssi-dp: node 3: warning: message key=value`) or
//! as one JSON object per line (`--log-format json`).
//!
//! A JSON line is `{"ts":1764990000.123456,"level":"WARN","node":3,"target":"engine::mesh",
//! "msg":"...","spans":[{"name":"shard","shard":0}], ...fields}`: the event's own fields sit
//! at the top level with their types kept (integers, floats and booleans as JSON numbers and
//! booleans, text as strings, anything else as its `Debug` text); a field whose name is one
//! of the fixed keys (`ts`, `level`, `node`, `target`, `msg`, `spans`) is written as
//! `field.<name>` instead, so no key appears twice; the spans the event happened in are
//! listed outermost first with their fields. Human lines append span fields after the
//! event's own.
//!
//! Every event carries the node id set at start. Messages a peer or a guest can trigger are
//! rate-limited where they are emitted (`wire::ratelimit`, whose events have the target
//! `wire::ratelimit`); page tracing (`--trace-page`) emits one event per protocol step on the
//! traced pages, each with its transaction id, so the steps of one fault can be followed
//! across nodes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line.
    Json,
}

/// Why logging could not be set up as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    /// Not a log format.
    #[error("bad log format {0:?}: use human or json")]
    UnknownFormat(String),
    /// `--log` does not parse.
    #[error(
        "--log {filter:?}: {why}; give directives like `info`, `warn,engine=debug` or \
         `control::membership=trace` (the RUST_LOG syntax, see docs/operations.md)"
    )]
    BadFlag {
        /// What was given.
        filter: String,
        /// What the parser said.
        why: String,
    },
    /// `RUST_LOG` does not parse.
    #[error(
        "RUST_LOG={filter:?}: {why}; fix or unset it (e.g. RUST_LOG=info or \
         RUST_LOG=warn,engine=debug), or pass --log"
    )]
    BadEnv {
        /// What the environment held.
        filter: String,
        /// What the parser said.
        why: String,
    },
}

impl std::str::FromStr for LogFormat {
    type Err = LogError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            _ => Err(LogError::UnknownFormat(s.to_string())),
        }
    }
}

/// `u32::MAX` until the node id is known.
static NODE: AtomicU32 = AtomicU32::new(u32::MAX);

/// Records this process's node id for every later line.
pub fn set_node(id: u16) {
    NODE.store(u32::from(id), Ordering::Relaxed);
}

/// Which events are written: `--log` when given, else `debug` with `--verbose`, else
/// `RUST_LOG` when set (`env` is its value), else `info`.
pub fn filter(flag: Option<&str>, verbose: bool, env: Option<&str>) -> Result<EnvFilter, LogError> {
    let parse = |s: &str| EnvFilter::builder().parse(s).map_err(|e| e.to_string());
    match (flag, verbose, env) {
        (Some(f), _, _) => parse(f).map_err(|why| LogError::BadFlag {
            filter: f.to_string(),
            why,
        }),
        (None, true, _) => Ok(EnvFilter::new("debug")),
        (None, false, Some(e)) if !e.trim().is_empty() => {
            parse(e).map_err(|why| LogError::BadEnv {
                filter: e.to_string(),
                why,
            })
        }
        _ => Ok(EnvFilter::new("info")),
    }
}

/// Installs the global subscriber (once; a later call changes nothing and says so with
/// `Ok(false)`).
pub fn init(format: LogFormat, flag: Option<&str>, verbose: bool) -> Result<bool, LogError> {
    let env = std::env::var("RUST_LOG").ok();
    let filter = filter(flag, verbose, env.as_deref())?;
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .event_format(Lines { format });
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(SpanFields)
        .with(lines);
    Ok(tracing::subscriber::set_global_default(subscriber).is_ok())
}

/// Keeps each span's fields, typed, in its extensions, for both line formats.
struct SpanFields;

/// A span's fields.
struct Recorded(Map<String, Value>);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for SpanFields {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut v = Typed::default();
        attrs.record(&mut v);
        span.extensions_mut().insert(Recorded(v.fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        if let Some(Recorded(map)) = ext.get_mut::<Recorded>() {
            let mut v = Typed {
                fields: std::mem::take(map),
                message: None,
            };
            values.record(&mut v);
            *map = v.fields;
        }
    }
}

/// Collects fields with their types; `message` apart.
#[derive(Default)]
struct Typed {
    fields: Map<String, Value>,
    message: Option<String>,
}

impl Typed {
    fn put(&mut self, field: &Field, v: Value) {
        if field.name() == "message" {
            self.message = Some(match v {
                Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.fields.insert(field.name().to_string(), v);
        }
    }
}

impl Visit for Typed {
    fn record_f64(&mut self, field: &Field, value: f64) {
        // JSON has no NaN or infinity: those are written as text.
        let v = serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(value.to_string()));
        self.put(field, v);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        let v = i64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.put(field, v);
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        let v = u64::try_from(value).map_or_else(|_| Value::String(value.to_string()), Value::from);
        self.put(field, v);
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

/// Keys every JSON line has (or may have, for `node` and `spans`).
const FIXED: [&str; 6] = ["ts", "level", "node", "target", "msg", "spans"];

/// The two line formats, as `fmt`'s event formatter.
struct Lines {
    format: LogFormat,
}

impl<S, N> FormatEvent<S, N> for Lines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut out: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut f = Typed::default();
        event.record(&mut f);
        // The spans the event happened in, outermost first.
        let mut spans: Vec<(&'static str, Map<String, Value>)> = Vec::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let fields = span
                    .extensions()
                    .get::<Recorded>()
                    .map(|r| r.0.clone())
                    .unwrap_or_default();
                spans.push((span.name(), fields));
            }
        }
        let node = NODE.load(Ordering::Relaxed);
        let message = f.message.unwrap_or_default();
        match self.format {
            LogFormat::Human => {
                out.write_str("ssi-dp: ")?;
                if node != u32::MAX {
                    write!(out, "node {node}: ")?;
                }
                match *meta.level() {
                    Level::ERROR => out.write_str("error: ")?,
                    Level::WARN => out.write_str("warning: ")?,
                    _ => {}
                }
                out.write_str(&message)?;
                let all = f
                    .fields
                    .iter()
                    .chain(spans.iter().flat_map(|(_, m)| m.iter()));
                for (k, v) in all {
                    match v {
                        Value::String(s) => write!(out, " {k}={s}")?,
                        other => write!(out, " {k}={other}")?,
                    }
                }
            }
            LogFormat::Json => {
                // Fixed keys first, in this order; then the event's fields.
                let ts = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                write!(
                    out,
                    "{{\"ts\":{}.{:06},\"level\":\"{}\"",
                    ts.as_secs(),
                    ts.subsec_micros(),
                    meta.level()
                )?;
                if node != u32::MAX {
                    write!(out, ",\"node\":{node}")?;
                }
                write!(
                    out,
                    ",\"target\":{},\"msg\":{}",
                    Value::from(meta.target()),
                    Value::from(message)
                )?;
                if !spans.is_empty() {
                    let list: Vec<Value> = spans
                        .into_iter()
                        .map(|(name, fields)| {
                            let mut m = Map::new();
                            for (k, v) in fields {
                                let k = if k == "name" { "field.name".into() } else { k };
                                m.insert(k, v);
                            }
                            m.insert("name".into(), Value::from(name));
                            Value::Object(m)
                        })
                        .collect();
                    write!(out, ",\"spans\":{}", Value::Array(list))?;
                }
                for (k, v) in f.fields {
                    let k = if FIXED.contains(&k.as_str()) {
                        format!("field.{k}")
                    } else {
                        k
                    };
                    // `Value`'s Display is its JSON text (strings quoted and escaped).
                    write!(out, ",{}:{v}", Value::String(k))?;
                }
                out.write_char('}')?;
            }
        }
        out.write_char('\n')
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse() {
        assert_eq!("json".parse(), Ok(LogFormat::Json));
        assert_eq!("human".parse(), Ok(LogFormat::Human));
        assert!("xml".parse::<LogFormat>().is_err());
    }

    #[test]
    fn filter_precedence_and_errors() {
        // --log wins over everything; a bad one names the flag.
        assert!(filter(Some("warn,engine=debug"), true, Some("trace")).is_ok());
        assert!(matches!(
            filter(Some("engine=loud"), false, None),
            Err(LogError::BadFlag { .. })
        ));
        // RUST_LOG is read only without --log and --verbose, and a bad one names it.
        assert!(matches!(
            filter(None, false, Some("engine=loud")),
            Err(LogError::BadEnv { .. })
        ));
        assert!(filter(None, true, Some("engine=loud")).is_ok());
        assert_eq!(filter(None, false, None).unwrap().to_string(), "info");
        assert_eq!(filter(None, false, Some(" ")).unwrap().to_string(), "info");
        assert_eq!(filter(None, true, None).unwrap().to_string(), "debug");
    }
}
