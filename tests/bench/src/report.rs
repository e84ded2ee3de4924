//! The results: the machine they were measured on, and one row per figure with its ratio to the
//! baseline of the same scenario measured in the same run.

use serde::Serialize;

/// Where and how the run happened.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Machine {
    cores: usize,
    cpu: String,
    profile: &'static str,
    commit: String,
}

impl Machine {
    /// Reads the machine, the build profile and the commit.
    pub(crate) fn read() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            cpu,
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            commit,
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    /// The scenario.
    pub(crate) scenario: &'static str,
    /// What was measured (Rally, or a baseline).
    pub(crate) subject: String,
    /// The figure's value.
    pub(crate) value: f64,
    /// Its unit.
    pub(crate) unit: &'static str,
    /// Loss, where it applies (0 to 1).
    pub(crate) loss: Option<f64>,
    /// Settings that matter for reading it.
    pub(crate) settings: String,
    /// Whether this row is a baseline.
    pub(crate) baseline: bool,
}

/// Everything measured in one run.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    machine: Machine,
    quick: bool,
    rows: Vec<Row>,
}

impl Report {
    pub(crate) fn new(machine: Machine, quick: bool) -> Self {
        Self {
            machine,
            quick,
            rows: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    /// Rally's rows compared with each baseline row of the same scenario (higher is better for
    /// every figure so far: rates).
    fn ratios(&self, row: &Row) -> String {
        if row.baseline {
            return "baseline".to_owned();
        }
        self.rows
            .iter()
            .filter(|b| b.baseline && b.scenario == row.scenario && b.value > 0.0)
            .map(|b| format!("{:.2}x {}", row.value / b.value, b.subject))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The Markdown table, with the machine above it.
    pub(crate) fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = format!(
            "rally-bench{}: {} cores, {}, {} build, commit {}\n\n",
            if self.quick { " --quick" } else { "" },
            m.cores,
            m.cpu,
            m.profile,
            m.commit
        );
        out.push_str("| scenario | subject | figure | loss | ratio | settings |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for row in &self.rows {
            let loss = row
                .loss
                .map_or_else(|| "-".to_owned(), |l| format!("{:.2}%", l * 100.0));
            out.push_str(&format!(
                "| {} | {} | {:.0} {} | {} | {} | {} |\n",
                row.scenario,
                row.subject,
                row.value,
                row.unit,
                loss,
                self.ratios(row),
                row.settings
            ));
        }
        out
    }

    /// The same as JSON.
    pub(crate) fn json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Rows whose figures are not sane (zero or not finite, or loss outside 0..=1).
    pub(crate) fn insane(&self) -> Vec<String> {
        self.rows
            .iter()
            .filter(|r| {
                !(r.value.is_finite() && r.value > 0.0)
                    || r.loss.is_some_and(|l| !(0.0..=1.0).contains(&l))
            })
            .map(|r| format!("{} / {}", r.scenario, r.subject))
            .collect()
    }
}
