//! Logging for every role of the `haven` binary, set up in this one place.
//!
//! Daemons (coordinator, worker, storage node, `haven dev`, `serve-nbd`, `replicate
//! --watch`) report what they do at `info`: an operator reads their logs. One-shot
//! commands (backup, restore, ...) print their own results and stay at `warn`, so a
//! person or a script sees only their output. `HAVEN_LOG` (an `EnvFilter` directive such as `debug` or
//! `haven_worker=debug`) overrides either default.
//!
//! `--log-format json` (or `HAVEN_LOG_FORMAT=json`) writes one JSON object per line
//! for log shippers. The fields of every span an event is in are merged into the
//! object, outermost first, then the event's own: a worker's job span puts `job` and
//! `vm` on every line logged while that job runs, at the top level where a query
//! such as `jq 'select(.job == "...")'` finds them.

use std::fmt;
use std::io::IsTerminal;

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The environment variable holding the log filter.
const FILTER_VARIABLE: &str = "HAVEN_LOG";

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, span fields included.
    Json,
}

/// What kind of process a command runs, which decides its default log level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A long-running server whose logs an operator reads: Haven at `info`.
    Daemon,
    /// A command a person or a script runs once: warnings and errors only.
    OneShot,
}

impl Role {
    /// The filter used when `HAVEN_LOG` is not set. Daemons log Haven's own crates at
    /// `info` but their dependencies (HTTP, gRPC, etcd clients) only at `warn`, whose
    /// `info` lines are per-connection noise.
    fn default_filter(self) -> &'static str {
        match self {
            Role::Daemon => "warn,haven=info",
            Role::OneShot => "warn",
        }
    }
}

/// Installs the process's one subscriber: log lines on standard error and, when
/// traces are exported, `telemetry`'s layer beside them, each with its own filter (the
/// log level does not decide what is traced). A `HAVEN_LOG` that does not parse is
/// reported and the default is used, so a typo cannot stop a daemon from starting.
pub fn init(role: Role, format: LogFormat, telemetry: Option<&haven_telemetry::Telemetry>) {
    let filter = match std::env::var(FILTER_VARIABLE) {
        // Compose passes an unset variable on as an empty one: the default too.
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .unwrap_or_else(|error| {
                eprintln!(
                    "warning: {FILTER_VARIABLE}={directives:?} is not a valid filter ({error}); \
                 using {:?}",
                    role.default_filter()
                );
                EnvFilter::new(role.default_filter())
            }),
        _ => EnvFilter::new(role.default_filter()),
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Colour codes belong on a terminal, not in a log file or a journal.
        .with_ansi(std::io::stderr().is_terminal());
    let log = match format {
        LogFormat::Text => layer.boxed(),
        LogFormat::Json => layer
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .boxed(),
    };
    // Another subscriber (a test harness's) may already be installed: keep it.
    let _ = tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .with(telemetry.map(haven_telemetry::Telemetry::layer))
        .try_init();
}

/// Writes an event as one flat JSON object: `timestamp`, `level` and `target` first,
/// then the fields of its spans from the outermost in and its own fields (`message`
/// among them); of two fields with one name the later wins, and none replaces the
/// first three.
struct FlatJson;

/// The keys every line starts with, in this order.
const LEADING_KEYS: [&str; 3] = ["timestamp", "level", "target"];

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Map::new();
        if let Some(scope) = context.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(span_fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                // JsonFields stores a span's fields as one JSON object (or nothing).
                if let Ok(Value::Object(span_fields)) = serde_json::from_str(span_fields.as_str()) {
                    fields.extend(span_fields);
                }
            }
        }
        event.record(&mut JsonVisitor(&mut fields));
        let timestamp = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .map_err(|_| fmt::Error)?;
        let metadata = event.metadata();
        let leading = [
            timestamp.as_str(),
            metadata.level().as_str(),
            metadata.target(),
        ];
        let mut separator = '{';
        for (key, value) in LEADING_KEYS.iter().zip(leading) {
            write!(
                writer,
                "{separator}{}:{}",
                Value::from(*key),
                Value::from(value)
            )?;
            separator = ',';
        }
        for (key, value) in fields {
            if !LEADING_KEYS.contains(&key.as_str()) {
                write!(writer, ",{}:{value}", Value::from(key))?;
            }
        }
        writeln!(writer, "}}")
    }
}

/// Records an event's fields into a JSON object, numbers and booleans as such.
struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::fmt::MakeWriter;

    /// A writer into a shared buffer, to read what the formatter wrote.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(bytes)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    #[test]
    fn span_fields_are_merged_into_each_line_outermost_first() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(buffer.clone())
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let job = tracing::info_span!("job", job = "j-7", vm = "web1", attempt = 2u32);
            let _job = job.enter();
            let disk = tracing::info_span!("disk", disk = "vda", vm = "inner");
            let _disk = disk.enter();
            tracing::info!(bytes = 42u64, done = true, level = "mine", "disk read");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("{\"timestamp\":"), "{text}");
        let line: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(
            line["level"], "INFO",
            "a field named level replaces nothing"
        );
        assert_eq!(line["message"], "disk read");
        assert_eq!(line["job"], "j-7");
        assert_eq!(line["attempt"], 2);
        assert_eq!(line["disk"], "vda");
        assert_eq!(line["vm"], "inner", "the inner span wins");
        assert_eq!(line["bytes"], 42);
        assert_eq!(line["done"], true);
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(line["target"], "haven::logging::tests");
    }
}
