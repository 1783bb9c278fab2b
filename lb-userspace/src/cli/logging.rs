//! Where log events go and how they look: `--log-format` and `--log-level`, both global.

use std::io::IsTerminal as _;

use clap::{Args, ValueEnum};
use tracing::Subscriber;
use tracing_subscriber::{EnvFilter, fmt::MakeWriter, util::SubscriberInitExt as _};

/// The logging flags every command takes.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// How log lines on stderr look: text for people, JSON (one object a line, the event's
    /// fields at the top level) for log collectors.
    #[arg(
        long,
        global = true,
        value_name = "FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        env = "SLICELB_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// The least severe events logged. RUST_LOG, when set, wins over this flag (and takes
    /// per-module directives such as `slicelb=debug,kube=info`).
    #[arg(
        long,
        global = true,
        value_name = "LEVEL",
        value_enum,
        default_value_t = LogLevel::Info,
        env = "SLICELB_LOG_LEVEL"
    )]
    pub log_level: LogLevel,
}

impl Default for LogArgs {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Text,
            log_level: LogLevel::Info,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line an event.
    Text,
    /// One JSON object a line: timestamp, level, target, message and the event's fields.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn directive(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

/// The filter: `rust_log` (RUST_LOG's value) when it is set and parses, else `level`.
fn filter(level: LogLevel, rust_log: Option<&str>) -> EnvFilter {
    rust_log
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new(level.directive()))
}

/// A subscriber writing events as `args` say to `writer`, filtered by `rust_log` (RUST_LOG's
/// value) when set, else by `--log-level`; `colour`ed text for a terminal.
pub fn subscriber<W>(
    args: &LogArgs,
    rust_log: Option<&str>,
    colour: bool,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'writer> MakeWriter<'writer> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(args.log_level, rust_log))
        .with_ansi(colour)
        .with_writer(writer);
    match args.log_format {
        LogFormat::Text => Box::new(builder.finish()),
        // Fields at the top level, beside "message": what log collectors index.
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
    }
}

/// Log events to stderr as `args` say (RUST_LOG wins over `--log-level` when set).
pub fn init(args: &LogArgs) {
    let rust_log = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    // Escape codes only where a person reads them, not in `kubectl logs` or a file.
    let colour = std::io::stderr().is_terminal();
    subscriber(args, rust_log.as_deref(), colour, std::io::stderr).init();
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::model::{ObjectKind, ObjectRef, Warning, WarningReason};

    /// A writer that keeps what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .expect("not poisoned")
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'writer> MakeWriter<'writer> for Captured {
        type Writer = Self;
        fn make_writer(&'writer self) -> Self {
            self.clone()
        }
    }

    fn lines_logged(args: &LogArgs, rust_log: Option<&str>, log: impl FnOnce()) -> Vec<String> {
        let captured = Captured::default();
        tracing::subscriber::with_default(subscriber(args, rust_log, false, captured.clone()), log);
        let bytes = captured.0.lock().expect("not poisoned").clone();
        String::from_utf8(bytes)
            .expect("UTF-8")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn json(level: LogLevel) -> LogArgs {
        LogArgs {
            log_format: LogFormat::Json,
            log_level: level,
        }
    }

    #[test]
    fn a_skipped_service_is_one_json_line_naming_it_in_fields() {
        let warning = Warning {
            object: ObjectRef {
                kind: ObjectKind::Service,
                namespace: "shop".into(),
                name: "cart".into(),
            },
            reason: WarningReason::NoValidClusterIp,
        };
        let lines = lines_logged(&json(LogLevel::Info), None, || warning.log());
        let [line] = lines.as_slice() else {
            panic!("one line expected, got {lines:?}");
        };
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?} is not JSON: {e}"));
        assert_eq!(event["level"], "WARN");
        assert_eq!(event["namespace"], "shop");
        assert_eq!(event["service"], "cart");
        assert!(event.get("slice").is_none(), "{event}");
        let message = event["message"].as_str().expect("a message");
        assert!(message.contains("no valid cluster IP"), "{message}");
        assert!(
            !message.contains("shop/cart"),
            "the name is a field, not message text: {message}"
        );
    }

    #[test]
    fn a_skipped_slice_is_named_by_the_slice_field() {
        let warning = Warning {
            object: ObjectRef {
                kind: ObjectKind::EndpointSlice,
                namespace: "shop".into(),
                name: "cart-x7k2p".into(),
            },
            reason: WarningReason::EndpointWithoutAddress,
        };
        let lines = lines_logged(&json(LogLevel::Info), None, || warning.log());
        let event: serde_json::Value = serde_json::from_str(&lines[0]).expect("JSON");
        assert_eq!(event["slice"], "cart-x7k2p");
        assert_eq!(event["namespace"], "shop");
        assert!(event.get("service").is_none(), "{event}");
    }

    #[test]
    fn the_level_filters_unless_rust_log_is_set() {
        let log = || {
            tracing::debug!("detail");
            tracing::warn!("trouble");
        };
        let warn_only = lines_logged(&json(LogLevel::Warn), None, log);
        assert_eq!(warn_only.len(), 1, "{warn_only:?}");
        let debug = lines_logged(&json(LogLevel::Debug), None, log);
        assert_eq!(debug.len(), 2, "{debug:?}");
        let rust_log_wins = lines_logged(&json(LogLevel::Warn), Some("debug"), log);
        assert_eq!(rust_log_wins.len(), 2, "{rust_log_wins:?}");
    }

    #[test]
    fn text_format_is_not_json() {
        let text = LogArgs::default();
        let lines = lines_logged(&text, None, || tracing::info!(service = "cart", "hello"));
        let [line] = lines.as_slice() else {
            panic!("one line expected, got {lines:?}");
        };
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_err(),
            "{line}"
        );
        assert!(
            line.contains("hello") && line.contains("service=\"cart\""),
            "{line}"
        );
    }
}
