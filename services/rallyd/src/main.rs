//! The `rallyd` binary: parse the configuration, set up logging and telemetry, run until SIGINT
//! or SIGTERM (SIGHUP rereads the TLS certificate), then export the last spans and metrics.

use std::process::ExitCode;

use clap::Parser;
use rallyd::{Config, RallydError, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let telemetry = match telemetry::init(config.log_format) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("rallyd: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "rallyd failed");
            eprintln!("rallyd: {error}");
            ExitCode::FAILURE
        }
    };
    // Flushing blocks until the exporters are done; their gRPC calls run on the runtime's other
    // threads.
    if let Err(error) = tokio::task::spawn_blocking(move || telemetry.shutdown()).await {
        eprintln!("rallyd: flushing telemetry failed: {error}");
    }
    code
}

async fn run(config: Config) -> Result<(), RallydError> {
    // Listening for SIGHUP before anything else: a SIGHUP that arrived during start-up would
    // otherwise end the process.
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(
        |source| RallydError::Io {
            what: "listening for SIGHUP".into(),
            source,
        },
    )?;
    let running = rallyd::start(config).await?;
    #[cfg(unix)]
    tokio::spawn(reload_on_hangup(hangups, running.tls_reloader()));
    let shutdown = running.shutdown_token();
    tokio::spawn(async move {
        match shutdown_signal().await {
            Ok(name) => tracing::info!(signal = name, "shutdown requested"),
            Err(error) => tracing::error!(%error, "cannot listen for signals; shutting down"),
        }
        shutdown.cancel();
    });
    running.wait().await
}

/// Rereads the TLS files on every SIGHUP (they are watched too; this is for file systems where
/// watching misses the change, and for operators used to it). Without TLS, SIGHUP does nothing.
#[cfg(unix)]
async fn reload_on_hangup(
    mut hangups: tokio::signal::unix::Signal,
    reloader: Option<rallyd::TlsReloader>,
) {
    while hangups.recv().await.is_some() {
        let Some(reloader) = &reloader else {
            tracing::info!("SIGHUP: no TLS certificate to reread");
            continue;
        };
        match reloader.reload() {
            Ok(true) => {}
            Ok(false) => tracing::info!("SIGHUP: the TLS files are unchanged"),
            Err(error) => tracing::warn!(
                %error,
                "SIGHUP: the TLS files cannot be used; keeping the current certificate"
            ),
        }
    }
}

async fn shutdown_signal() -> std::io::Result<&'static str> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = terminate.recv() => Ok("SIGTERM"),
            _ = interrupt.recv() => Ok("SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok("Ctrl-C")
    }
}
