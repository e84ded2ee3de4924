//! `rally-bench`: Rally's figures next to baselines measured in the same run on the same machine,
//! printed as a Markdown table (and as JSON with `--json PATH`). Absolute numbers on a shared
//! machine mean little; the ratios to the baselines are the point.
//!
//! `--quick` runs every scenario briefly: CI uses it so the harness never rots; it checks that
//! each scenario ran and produced sane figures, never how fast they are.

mod attached;
mod bare;
mod baselines;
mod connect;
mod fan_out;
mod hist;
mod latency;
mod pace;
mod rally;
mod reliable;
mod report;
mod scenarios;
mod signalling;
mod store_ops;
mod udp;
mod unary;
mod unreliable;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use report::{Machine, Report};

/// Command line.
#[derive(Debug, Parser)]
#[command(version, about = "Rally's benchmark harness")]
struct Cli {
    /// Run every scenario briefly (CI): figures must only be sane.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run only these scenarios (comma-separated), e.g. to profile one; every one by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Scenario>,
}

/// The scenarios `--only` can pick, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// Unreliable 1200 B packets, with raw UDP and bare s2n-quic datagrams.
    Unreliable,
    /// Reliable 1 KiB and 64 KiB packets, with bare s2n-quic streams.
    Reliable,
    /// Round trips idle and under load (measures the bare datagram rate first).
    Latency,
    /// Brokered connect, with a bare handshake.
    Connect,
    /// Room fan-out.
    FanOut,
    /// Broker signalling on Postgres.
    Signalling,
    /// Room join/leave and matchmaking, with a pgbench-style transaction.
    Store,
    /// Attached clients per replica.
    Attached,
    /// One unary call at a time (GetRoom, ~4 KiB), with a bare tonic server.
    Unary,
}

/// How long each measurement runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// One measured window.
    pub(crate) window: Duration,
    /// `--quick`: every scenario briefly, with small counts.
    pub(crate) quick: bool,
}

/// Every scenario in order: Rally's side next to its baselines. The best bare s2n-quic datagram
/// rate is the maximum load of the round-trip scenarios.
async fn run_all(budget: Budget, only: &[Scenario], report: &mut Report) -> anyhow::Result<()> {
    use anyhow::Context;
    let runs = |scenario| only.is_empty() || only.contains(&scenario);
    if runs(Scenario::Unreliable) {
        unreliable::run(budget, report)
            .await
            .context("the unreliable scenario failed")?;
    }
    let mut max_rate = None;
    if runs(Scenario::Unreliable) || runs(Scenario::Latency) {
        max_rate = Some(
            baselines::unreliable(budget, report)
                .await
                .context("the unreliable baselines failed")?,
        );
    }
    if runs(Scenario::Reliable) {
        reliable::run(budget, report)
            .await
            .context("the reliable scenario failed")?;
        baselines::reliable(budget, report)
            .await
            .context("the reliable baselines failed")?;
    }
    if let Some(max_rate) = max_rate.filter(|_| runs(Scenario::Latency)) {
        baselines::latency(budget, report, max_rate)
            .await
            .context("the round-trip baselines failed")?;
        latency::run(budget, report, max_rate)
            .await
            .context("the round-trip scenario failed")?;
    }
    if runs(Scenario::Connect) {
        baselines::connect(budget, report)
            .await
            .context("the connect baselines failed")?;
        connect::run(budget, report)
            .await
            .context("the connect scenario failed")?;
    }
    if runs(Scenario::FanOut) {
        fan_out::run(budget, report)
            .await
            .context("the fan-out scenario failed")?;
    }
    if runs(Scenario::Signalling) {
        signalling::run(budget, report)
            .await
            .context("the broker signalling scenario failed")?;
    }
    if runs(Scenario::Store) {
        store_ops::run(budget, report)
            .await
            .context("the room join/leave and matchmaking scenario failed")?;
    }
    if runs(Scenario::Attached) {
        attached::run(budget, report)
            .await
            .context("the attached clients scenario failed")?;
    }
    if runs(Scenario::Unary) {
        unary::run(budget, report)
            .await
            .context("the unary call scenario failed")?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    if let Some(code) = attached::serve_child().await {
        return code;
    }
    let cli = Cli::parse();
    let budget = Budget {
        window: if cli.quick {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        },
        quick: cli.quick,
    };
    let mut report = Report::new(Machine::read(), cli.quick);
    if let Err(error) = run_all(budget, &cli.only, &mut report).await {
        eprintln!("rally-bench: {error:#}");
        return ExitCode::FAILURE;
    }
    println!("{}", report.markdown());
    if let Some(path) = &cli.json
        && let Err(error) = std::fs::write(path, report.json())
    {
        eprintln!("rally-bench: cannot write {}: {error}", path.display());
        return ExitCode::FAILURE;
    }
    let insane = report.insane();
    if !insane.is_empty() {
        eprintln!("rally-bench: figures that are not sane: {insane:?}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
