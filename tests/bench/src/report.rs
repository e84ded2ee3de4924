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
    /// The scenario, with its variant (e.g. "RTT at 50% load"): rows compare only within one.
    pub(crate) scenario: String,
    /// What was measured (Rally, or a baseline).
    pub(crate) subject: String,
    /// Which figure of the subject (e.g. "rate", "p50", "p99"): ratios pair equal metrics.
    pub(crate) metric: &'static str,
    /// The figure's value.
    pub(crate) value: f64,
    /// Its unit.
    pub(crate) unit: &'static str,
    /// Whether a smaller value is better (latencies, memory); rates are higher-is-better.
    pub(crate) lower_is_better: bool,
    /// Loss, where it applies (0 to 1).
    pub(crate) loss: Option<f64>,
    /// Settings that matter for reading it.
    pub(crate) settings: String,
    /// Whether this row is a baseline.
    pub(crate) baseline: bool,
}

impl Row {
    /// A rate (higher is better) of `subject` in `scenario`.
    pub(crate) fn rate(
        scenario: impl Into<String>,
        subject: impl Into<String>,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Self {
            scenario: scenario.into(),
            subject: subject.into(),
            metric: "rate",
            value,
            unit,
            lower_is_better: false,
            loss: None,
            settings: String::new(),
            baseline: false,
        }
    }

    /// A cost (lower is better: a latency, a size) named `metric`, of `subject` in `scenario`.
    pub(crate) fn cost(
        scenario: impl Into<String>,
        subject: impl Into<String>,
        metric: &'static str,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Self {
            metric,
            lower_is_better: true,
            ..Self::rate(scenario, subject, value, unit)
        }
    }

    /// Marks the row as a baseline.
    pub(crate) fn baseline(mut self) -> Self {
        self.baseline = true;
        self
    }

    /// Sets the loss (0 to 1).
    pub(crate) fn loss(mut self, loss: f64) -> Self {
        self.loss = Some(loss);
        self
    }

    /// Sets the settings that matter for reading the row.
    pub(crate) fn settings(mut self, settings: impl Into<String>) -> Self {
        self.settings = settings.into();
        self
    }
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

    /// A row compared with each baseline row of the same scenario and metric: value divided by
    /// the baseline's, so above 1 is faster for a rate and slower (or larger) for a cost.
    fn ratios(&self, row: &Row) -> String {
        if row.baseline {
            return "baseline".to_owned();
        }
        self.rows
            .iter()
            .filter(|b| {
                b.baseline && b.scenario == row.scenario && b.metric == row.metric && b.value > 0.0
            })
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
        out.push_str(
            "Ratios divide a figure by the baseline's in the same scenario: above 1 is better \
             for a rate, worse for a latency or a size.\n\n",
        );
        out.push_str("| scenario | subject | figure | loss | ratio | settings |\n");
        out.push_str("|---|---|---|---|---|---|\n");
        for row in &self.rows {
            let loss = row
                .loss
                .map_or_else(|| "-".to_owned(), |l| format!("{:.2}%", l * 100.0));
            let metric = if row.metric == "rate" {
                String::new()
            } else {
                format!("{} ", row.metric)
            };
            out.push_str(&format!(
                "| {} | {} | {metric}{} {} | {} | {} | {} |\n",
                row.scenario,
                row.subject,
                figure(row.value),
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

/// A figure with as many digits as it needs: integers above 100, three significant digits below.
fn figure(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}
