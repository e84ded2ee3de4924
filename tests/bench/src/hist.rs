//! Latency histograms: durations recorded in nanoseconds, percentiles read in microseconds, and
//! the rows they make in the report.

use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;

use crate::report::{Report, Row};

/// The longest duration recorded exactly; longer ones count as this (a minute).
const HIGHEST_NS: u64 = 60_000_000_000;

/// Round trips (or any durations) of one subject, with what was lost on the way.
#[derive(Debug, Clone)]
pub(crate) struct Hist {
    histogram: Histogram<u64>,
    /// Samples that never completed (an unreliable ping that did not come back).
    lost: u64,
    /// Whether samples can be lost, so the rows show a loss (even when nothing was lost).
    lossy: bool,
    /// Facts about the measurement for the settings column (load achieved, drops...).
    notes: Vec<String>,
}

impl Hist {
    /// An empty histogram; `lossy` when its samples can be lost (unreliable pings).
    pub(crate) fn new(lossy: bool) -> anyhow::Result<Self> {
        Ok(Self {
            histogram: Histogram::new_with_bounds(1, HIGHEST_NS, 3)
                .context("creating a histogram")?,
            lost: 0,
            lossy,
            notes: Vec::new(),
        })
    }

    /// Records one duration.
    pub(crate) fn record(&mut self, duration: Duration) {
        let ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(ns.max(1));
    }

    /// Counts one sample that never completed.
    pub(crate) fn record_lost(&mut self) {
        self.lost += 1;
    }

    /// Adds a fact for the settings column.
    pub(crate) fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Samples recorded.
    pub(crate) fn len(&self) -> u64 {
        self.histogram.len()
    }

    /// The value at `quantile` (0 to 1), in microseconds.
    pub(crate) fn quantile_us(&self, quantile: f64) -> f64 {
        self.histogram.value_at_quantile(quantile) as f64 / 1e3
    }

    /// The median, in microseconds.
    pub(crate) fn p50(&self) -> f64 {
        self.quantile_us(0.5)
    }

    /// The 99th percentile, in microseconds.
    pub(crate) fn p99(&self) -> f64 {
        self.quantile_us(0.99)
    }

    /// The 99.9th percentile, in microseconds.
    pub(crate) fn p999(&self) -> f64 {
        self.quantile_us(0.999)
    }

    /// The share of samples lost (0 to 1).
    pub(crate) fn loss(&self) -> f64 {
        let total = self.len() + self.lost;
        if total == 0 {
            0.0
        } else {
            self.lost as f64 / total as f64
        }
    }

    /// The settings column: `settings`, the sample count and the notes.
    pub(crate) fn describe(&self, settings: &str) -> String {
        let mut parts = Vec::with_capacity(self.notes.len() + 2);
        if !settings.is_empty() {
            parts.push(settings.to_owned());
        }
        parts.push(format!("n = {}", self.len()));
        parts.extend(self.notes.iter().cloned());
        parts.join("; ")
    }

    /// Pushes the rows p50, p99 and p999 (µs) of `subject` in `scenario`.
    pub(crate) fn push_rows(
        &self,
        report: &mut Report,
        scenario: &str,
        subject: &str,
        settings: &str,
        baseline: bool,
    ) {
        let settings = self.describe(settings);
        for (metric, value) in [
            ("p50", self.p50()),
            ("p99", self.p99()),
            ("p999", self.p999()),
        ] {
            let mut row = Row::cost(scenario, subject, metric, value, "µs").settings(&settings);
            if self.lossy {
                row = row.loss(self.loss());
            }
            if baseline {
                row = row.baseline();
            }
            report.push(row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_in_microseconds() -> anyhow::Result<()> {
        let mut hist = Hist::new(true)?;
        for us in 1..=1000 {
            hist.record(Duration::from_micros(us));
        }
        hist.record_lost();
        assert_eq!(hist.len(), 1000);
        assert!((hist.p50() - 500.0).abs() < 1.0, "{}", hist.p50());
        assert!((hist.p99() - 990.0).abs() < 1.0, "{}", hist.p99());
        assert!((hist.p999() - 999.0).abs() < 1.0, "{}", hist.p999());
        assert!((hist.loss() - 1.0 / 1001.0).abs() < 1e-9);
        Ok(())
    }
}
