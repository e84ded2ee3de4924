//! `rally-bench`: Rally's figures next to baselines measured in the same run on the same machine,
//! printed as a Markdown table (and as JSON with `--json PATH`). Absolute numbers on a shared
//! machine mean little; the ratios to the baselines are the point.
//!
//! `--quick` runs every scenario briefly: CI uses it so the harness never rots; it checks that
//! each scenario ran and produced sane figures, never how fast they are.

mod report;
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
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let budget = Budget {
        window: if cli.quick {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(5)
        },
    };
    let mut report = Report::new(Machine::read(), cli.quick);
    if let Err(error) = unreliable::run(budget, &mut report).await {
        eprintln!("rally-bench: the unreliable scenario failed: {error:#}");
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
