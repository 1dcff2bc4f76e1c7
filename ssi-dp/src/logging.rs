//! Structured logs (`tracing`): one line per event on stderr, either for people
//! (`ssi-dp: node 3: warning: message key=value`) or as JSON objects (`--log-format json`:
//! `{"ts":..., "level":"WARN", "node":3, "target":"...", "msg":"...", "key":value}`).
//!
//! Every event carries the node id set at start. Messages a peer or a guest can trigger are
//! rate-limited where they are emitted (`wire::ratelimit`); page tracing (`--trace-page`)
//! emits one event per protocol step on the traced pages, each with its transaction id so
//! the steps of one fault can be followed across nodes.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// For people.
    Human,
    /// One JSON object per line.
    Json,
}

/// Why a `--log-format` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogFormatError {
    /// Not a log format.
    #[error("bad log format {0:?}: use human or json")]
    Unknown(String),
}

impl std::str::FromStr for LogFormat {
    type Err = LogFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            _ => Err(LogFormatError::Unknown(s.to_string())),
        }
    }
}

/// `u32::MAX` until the node id is known.
static NODE: AtomicU32 = AtomicU32::new(u32::MAX);

/// Records this process's node id for every later line.
pub fn set_node(id: u16) {
    NODE.store(u32::from(id), Ordering::Relaxed);
}

/// Installs the global subscriber (once; later calls are ignored). `verbose` also shows
/// debug events.
pub fn init(format: LogFormat, verbose: bool) {
    let max = if verbose { Level::DEBUG } else { Level::INFO };
    let subscriber = tracing_subscriber::registry().with(Lines { format, max });
    let _ = tracing::subscriber::set_global_default(subscriber);
}

struct Lines {
    format: LogFormat,
    max: Level,
}

#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(&'static str, String, bool)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.rest.push((field.name(), value.to_string(), true));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.rest.push((field.name(), value.to_string(), false));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.rest.push((field.name(), value.to_string(), false));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.rest.push((field.name(), value.to_string(), false));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        } else {
            self.rest.push((field.name(), format!("{value:?}"), true));
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl<S: Subscriber> Layer<S> for Lines {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: Context<'_, S>) -> bool {
        *meta.level() <= self.max
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() > self.max {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let node = NODE.load(Ordering::Relaxed);
        let mut line = String::with_capacity(128);
        match self.format {
            LogFormat::Human => {
                line.push_str("ssi-dp: ");
                if node != u32::MAX {
                    let _ = write!(line, "node {node}: ");
                }
                match *meta.level() {
                    Level::ERROR => line.push_str("error: "),
                    Level::WARN => line.push_str("warning: "),
                    _ => {}
                }
                line.push_str(&f.message);
                for (k, v, _) in &f.rest {
                    let _ = write!(line, " {k}={v}");
                }
            }
            LogFormat::Json => {
                let ts = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                let _ = write!(
                    line,
                    "{{\"ts\":{}.{:06},\"level\":\"{}\"",
                    ts.as_secs(),
                    ts.subsec_micros(),
                    meta.level()
                );
                if node != u32::MAX {
                    let _ = write!(line, ",\"node\":{node}");
                }
                let _ = write!(
                    line,
                    ",\"target\":{},\"msg\":{}",
                    json_str(meta.target()),
                    json_str(&f.message)
                );
                for (k, v, quoted) in &f.rest {
                    if *quoted {
                        let _ = write!(line, ",{}:{}", json_str(k), json_str(v));
                    } else {
                        let _ = write!(line, ",{}:{v}", json_str(k));
                    }
                }
                line.push('}');
            }
        }
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
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
        assert_eq!(json_str("a\"b\n"), "\"a\\\"b\\n\"");
    }
}
