//! `rally`: Rally from the command line.
//!
//! - `rally demo --players 8` starts an embedded `rallyd` and N bot clients that sign in,
//!   matchmake into rooms, connect peer to peer and exchange traffic, with a live view and a
//!   summary table. Exits 0 only if every bot connected to every room peer and got traffic.
//! - `rally chat --server URL --user NAME --room ROOM` is a line chat over reliable packets.
//!   `--ca-file` or `--pin-sha256` say which certificate an `https://` server may present.
//! - `rally ping --server URL --user NAME PEER` measures the round trip to a peer over QUIC.
//!
//! This binary holds presentation only; everything it does goes through `rally-client`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod chat;
mod demo;
mod ping;
mod server;
mod view;

/// Rally: peer-to-peer networking for games.
#[derive(Debug, Parser)]
#[command(name = "rally", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs an embedded server and bot players that matchmake, connect peer to peer and play.
    Demo(demo::DemoArgs),
    /// A line chat with the other members of a room, peer to peer over reliable packets.
    Chat(chat::ChatArgs),
    /// Measures the round trip to a peer over QUIC.
    Ping(ping::PingArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RALLY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("rally: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(args) => demo::run(args).await,
            Command::Chat(args) => chat::run(args).await,
            Command::Ping(args) => ping::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("rally: {error:#}");
            ExitCode::FAILURE
        }
    }
}
