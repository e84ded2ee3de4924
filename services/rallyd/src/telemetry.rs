//! Logging set-up.
//!
//! Structured logs through `tracing`, filtered by `RALLY_LOG` (or `RUST_LOG`), default `info`.
//! This is the one place where exporters are attached: OpenTelemetry (OTLP traces and metrics)
//! joins here as one more `tracing_subscriber` layer.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::LogFormat;

/// Installs the global subscriber. Call once, from the binary (tests leave logging alone).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("RALLY_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(true)
                    .with_ansi(std::io::stdout().is_terminal()),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true),
            )
            .try_init(),
    };
    if let Err(error) = result {
        eprintln!("rallyd: logging was already set up: {error}");
    }
}
