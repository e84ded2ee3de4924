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
}

/// How long each measurement runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// One measured window.
    pub(crate) window: Duration,
    /// `--quick`: every scenario briefly, with small counts.
    pub(crate) quick: bool,
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
    if let Err(error) = unreliable::run(budget, &mut report).await {
        eprintln!("rally-bench: the unreliable scenario failed: {error:#}");
        return ExitCode::FAILURE;
    }
    let max_rate = match baselines::unreliable(budget, &mut report).await {
        Ok(rate) => rate,
        Err(error) => {
            eprintln!("rally-bench: the unreliable baselines failed: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = reliable::run(budget, &mut report).await {
        eprintln!("rally-bench: the reliable scenario failed: {error:#}");
        return ExitCode::FAILURE;
    }
    if let Err(error) = baselines::reliable(budget, &mut report).await {
        eprintln!("rally-bench: the reliable baselines failed: {error:#}");
        return ExitCode::FAILURE;
    }
    if let Err(error) = baselines::latency(budget, &mut report, max_rate).await {
        eprintln!("rally-bench: the round-trip baselines failed: {error:#}");
        return ExitCode::FAILURE;
    }
    if let Err(error) = latency::run(budget, &mut report, max_rate).await {
        eprintln!("rally-bench: the round-trip scenario failed: {error:#}");
        return ExitCode::FAILURE;
    }
    if let Err(error) = baselines::connect(budget, &mut report).await {
        eprintln!("rally-bench: the connect baselines failed: {error:#}");
        return ExitCode::FAILURE;
    }
    if let Err(error) = connect::run(budget, &mut report).await {
        eprintln!("rally-bench: the connect scenario failed: {error:#}");
        return ExitCode::FAILURE;
    }
    if let Err(error) = fan_out::run(budget, &mut report).await {
        eprintln!("rally-bench: the fan-out scenario failed: {error:#}");
        return ExitCode::FAILURE;
    }
    if let Err(error) = signalling::run(budget, &mut report).await {
        eprintln!("rally-bench: the broker signalling scenario failed: {error:#}");
        return ExitCode::FAILURE;
    }
    if let Err(error) = store_ops::run(budget, &mut report).await {
        eprintln!("rally-bench: the room join/leave and matchmaking scenario failed: {error:#}");
        return ExitCode::FAILURE;
    }
    if let Err(error) = attached::run(budget, &mut report).await {
        eprintln!("rally-bench: the attached clients scenario failed: {error:#}");
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
