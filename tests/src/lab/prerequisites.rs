//! What the lab needs from the machine (root, `ip`, `iptables` that work in a namespace), and
//! the removal of namespaces left behind by crashed runs.

use std::fmt;
use std::path::Path;
use std::sync::Once;

use super::command::{self, Namespace};

/// Why the lab cannot run on this machine.
#[derive(Debug, Clone)]
pub struct LabUnavailable {
    reason: String,
}

impl LabUnavailable {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }

    /// The reason, in words.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for LabUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the NAT lab cannot run here: {}", self.reason)
    }
}

impl std::error::Error for LabUnavailable {}

/// Root and the tools, before anything is changed.
pub(crate) fn check_tools() -> Result<(), LabUnavailable> {
    match effective_uid() {
        Some(0) => {}
        Some(uid) => {
            return Err(LabUnavailable::new(format!(
                "it needs root (effective uid is {uid})"
            )));
        }
        None => {
            return Err(LabUnavailable::new(
                "cannot read the uid in /proc/self/status",
            ));
        }
    }
    for (tool, version) in [("ip", "-V"), ("iptables", "--version")] {
        command::run(tool, &[version]).map_err(|e| {
            LabUnavailable::new(format!(
                "`{tool}` does not run ({}); install iproute2, iptables and conntrack",
                e.stderr.trim()
            ))
        })?;
    }
    Ok(())
}

/// iptables really works inside a namespace (the nft backend, with the kernel's netfilter).
pub(crate) fn check_iptables_in(ns: &Namespace) -> Result<(), LabUnavailable> {
    ns.iptables(&["-t", "nat", "-S"])
        .map_err(|e| LabUnavailable::new(format!("iptables does not work in a namespace: {e}")))
}

/// The effective uid, from `/proc/self/status` (`Uid: real effective saved fs`).
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Once per process: deletes every `rlab<pid>x…` namespace whose process is gone.
pub(crate) fn remove_leftovers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(list) = command::run("ip", &["netns", "list"]) else {
            return;
        };
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if let Some(pid) = owner(name)
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                eprintln!("lab: removing {name}, left behind by process {pid}");
                command::delete_namespace(name);
            }
        }
    });
}

/// The pid in a lab namespace's name (`rlab<pid>x<n>`).
fn owner(name: &str) -> Option<u32> {
    let (pid, n) = name.strip_prefix("rlab")?.split_once('x')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lab_namespaces_have_an_owner() {
        assert_eq!(owner("rlab1234x0"), Some(1234));
        assert_eq!(owner("rlab1234x17"), Some(1234));
        assert_eq!(owner("rlab1234"), None);
        assert_eq!(owner("rlabx1"), None);
        assert_eq!(owner("rlab12x"), None);
        assert_eq!(owner("netns-other"), None);
    }

    #[test]
    fn the_effective_uid_is_read() {
        assert!(effective_uid().is_some());
    }
}
