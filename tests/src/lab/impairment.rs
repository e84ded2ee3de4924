//! Impaired WAN links: loss, delay and jitter between a router and the lab's internet.
//!
//! ```text
//!   router: wan0 ──veth── a0  middle namespace  b0 ──veth── p<k> on the internet's br0
//!   (loss: iptables          (`rally-lab-node delay`: every frame
//!    statistic, both ways)    a0 <-> b0 after delay ± jitter)
//! ```
//!
//! The middle namespace is a pure layer-2 pipe: no addresses, IPv6 off so that it sends nothing
//! of its own, and the router keeps its addresses and routes as on a plain link. Loss is
//! iptables' `statistic` in the router: `mangle POSTROUTING -o wan0` on the way out, `raw
//! PREROUTING -i wan0` on the way in (before conntrack, as if the packet never came). TX checksum
//! offload is off on the veths that send into the forwarder (`wan0` and `p<k>`; the forwarder's
//! own two as well), since it copies frames as they are and a partial checksum would get the
//! re-sent packet dropped; that also turns off TSO and UDP segmentation there, so no frame is
//! larger than the MTU. Not for: rate limits, or impairing a host without a router.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::command::{self, CommandFailed, Namespace};
use super::delay::ForwarderReport;
use super::{Lab, Router, Shared, lock, router};

/// How long the forwarder may take to open its interfaces.
const FORWARDER_START: Duration = Duration::from_secs(20);

/// How long the forwarder may take to report its counters.
const FORWARDER_ANSWER: Duration = Duration::from_secs(5);

/// What a router's WAN link does to the packets crossing it, the same in each direction.
///
/// ```no_run
/// # fn f(lab: &rally_e2e::lab::Lab, node: &std::path::Path) {
/// use rally_e2e::lab::{Impairment, NatKind};
/// let router = lab.add_router_impaired(
///     NatKind::PortRestricted,
///     Impairment { loss: 0.10, delay_ms: 50, jitter_ms: 20 },
///     node,
/// );
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Share of IPv4 packets dropped, each way (0.0 to 1.0).
    pub loss: f64,
    /// Mean one-way delay added to every frame, each way, in milliseconds.
    pub delay_ms: u64,
    /// Each frame's delay is drawn uniformly from `delay_ms ± jitter_ms` (so frames reorder).
    pub jitter_ms: u64,
}

/// The comments that mark the loss rules: one counts every packet, the next drops some.
const SEEN: &str = "rlab-loss-seen";
const LOST: &str = "rlab-loss-dropped";

impl Impairment {
    /// The iptables rules that drop `loss` of the router's packets each way (none for 0), each
    /// drop preceded by a rule that only counts, so that the share dropped can be read back.
    fn loss_rules(&self) -> Vec<Vec<String>> {
        if self.loss <= 0.0 {
            return Vec::new();
        }
        let p = format!("{:.6}", self.loss.min(1.0));
        let mut rules = Vec::new();
        for head in [
            ["-t", "mangle", "-A", "POSTROUTING", "-o", "wan0"],
            ["-t", "raw", "-A", "PREROUTING", "-i", "wan0"],
        ] {
            let rule = |tail: &[&str]| -> Vec<String> {
                head.iter().chain(tail).map(|w| (*w).to_owned()).collect()
            };
            rules.push(rule(&["-m", "comment", "--comment", SEEN]));
            rules.push(rule(&[
                "-m",
                "comment",
                "--comment",
                LOST,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &p,
                "-j",
                "DROP",
            ]));
        }
        rules
    }
}

/// Joins router namespace `ns` (its `wan0`) to the internet through a new middle namespace
/// running the delay forwarder (`node` is `rally-lab-node`), and adds the loss rules. The
/// forwarder belongs to the lab. Panics when the forwarder does not start.
#[track_caller]
pub(crate) fn plug_through(
    shared: &Arc<Shared>,
    internet: &Namespace,
    ns: &Namespace,
    segment: u8,
    public_ip: Ipv4Addr,
    impairment: Impairment,
    node: &Path,
) -> Result<(), CommandFailed> {
    assert!(
        (0.0..=1.0).contains(&impairment.loss),
        "loss is a share between 0 and 1, not {}",
        impairment.loss
    );
    let middle = Namespace::create(shared)?;
    // No IPv6 in the pipe: it must not send router solicitations or MLD reports of its own.
    middle.sysctl_if_present("net.ipv6.conf.all.disable_ipv6", "1")?;
    middle.sysctl_if_present("net.ipv6.conf.default.disable_ipv6", "1")?;
    command::run(
        "ip",
        &[
            "link",
            "add",
            "wan0",
            "netns",
            ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            "a0",
            "netns",
            middle.name(),
        ],
    )?;
    router::plug_into_internet(internet, &middle, segment, "b0")?;
    let port = format!("p{segment}");
    for (space, interface) in [
        (ns, "wan0"),
        (internet, port.as_str()),
        (&middle, "a0"),
        (&middle, "b0"),
    ] {
        space.run("ethtool", &["-K", interface, "tx", "off"])?;
    }
    middle.ip(&["link", "set", "a0", "up"])?;
    middle.ip(&["link", "set", "b0", "up"])?;
    for rule in impairment.loss_rules() {
        ns.iptables(&rule.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    let (delay, jitter) = (
        impairment.delay_ms.to_string(),
        impairment.jitter_ms.to_string(),
    );
    let seed = segment.to_string();
    let args = [
        "delay",
        "--a",
        "a0",
        "--b",
        "b0",
        "--delay-ms",
        &delay,
        "--jitter-ms",
        &jitter,
        "--seed",
        &seed,
    ];
    let label = forwarder_label(public_ip);
    let mut forwarder = match middle.spawn(&label, node, args) {
        Ok(process) => process,
        Err(error) => panic!("cannot start {node:?} delay: {error}"),
    };
    if let Err(failed) = forwarder.expect_json(|v| v["event"] == "ready", FORWARDER_START) {
        panic!("the delay forwarder of {public_ip}'s link did not start: {failed}");
    }
    lock(&shared.forwarders).push(forwarder);
    Ok(())
}

/// The label of the forwarder on the link of the router with `public_ip`.
fn forwarder_label(public_ip: Ipv4Addr) -> String {
    format!("delay-{public_ip}")
}

/// What an impaired link did so far, from [`Lab::link_report`]. The forwarder's side A is the
/// router's, side B the internet's. The router counts packets as its netfilter sees them (a
/// UDP GSO burst is one packet there, and several frames at the forwarder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkReport {
    /// The delay forwarder's counters.
    pub forwarder: ForwarderReport,
    /// Packets that reached the router's loss rule on the way out.
    pub seen_out: u64,
    /// Of those, packets it dropped.
    pub dropped_out: u64,
    /// Packets that reached the router's loss rule on the way in.
    pub seen_in: u64,
    /// Of those, packets it dropped.
    pub dropped_in: u64,
}

impl LinkReport {
    /// The share of the router's outgoing packets dropped.
    pub fn loss_out(&self) -> f64 {
        share(self.dropped_out, self.seen_out)
    }

    /// The share of the router's incoming packets dropped.
    pub fn loss_in(&self) -> f64 {
        share(self.dropped_in, self.seen_in)
    }
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The packet counter of the rule marked `comment` in `iptables -L -v -x -n` output (0 without
/// one).
fn rule_packets(listing: &str, comment: &str) -> u64 {
    let mark = format!("/* {comment} */");
    listing
        .lines()
        .filter(|line| line.contains(&mark))
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

impl Lab {
    /// What `router`'s impaired link did so far: the delay forwarder's counters and the loss
    /// rules' drops; `None` when the link is not impaired. Panics when the forwarder does not
    /// answer or iptables cannot be read.
    #[track_caller]
    pub fn link_report(&self, router: &Router) -> Option<LinkReport> {
        let label = forwarder_label(router.public_ip());
        let forwarder = {
            let mut forwarders = lock(&self.shared.forwarders);
            let process = forwarders.iter_mut().find(|p| p.label() == label)?;
            if let Err(error) = process.send_line("stats") {
                panic!("{label} does not take `stats`: {error}");
            }
            let report = process.expect_map(
                |line| serde_json::from_str::<ForwarderReport>(line).ok(),
                FORWARDER_ANSWER,
            );
            match report {
                Ok(report) => report,
                Err(failed) => panic!("{label} did not report: {failed}"),
            }
        };
        let ns = router.ns()?;
        let listing = |table: &str, chain: &str| match ns
            .run("iptables", &["-t", table, "-L", chain, "-v", "-x", "-n"])
        {
            Ok(listing) => listing,
            Err(error) => panic!("cannot read the loss rules: {error}"),
        };
        let (out, into) = (
            listing("mangle", "POSTROUTING"),
            listing("raw", "PREROUTING"),
        );
        Some(LinkReport {
            forwarder,
            seen_out: rule_packets(&out, SEEN),
            dropped_out: rule_packets(&out, LOST),
            seen_in: rule_packets(&into, SEEN),
            dropped_in: rule_packets(&into, LOST),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_is_counted_then_dropped_both_ways_in_the_router() {
        let rules: Vec<String> = Impairment {
            loss: 0.1,
            delay_ms: 50,
            jitter_ms: 20,
        }
        .loss_rules()
        .iter()
        .map(|r| r.join(" "))
        .collect();
        assert_eq!(
            rules,
            [
                "-t mangle -A POSTROUTING -o wan0 -m comment --comment rlab-loss-seen",
                "-t mangle -A POSTROUTING -o wan0 -m comment --comment rlab-loss-dropped \
                 -m statistic --mode random --probability 0.100000 -j DROP",
                "-t raw -A PREROUTING -i wan0 -m comment --comment rlab-loss-seen",
                "-t raw -A PREROUTING -i wan0 -m comment --comment rlab-loss-dropped \
                 -m statistic --mode random --probability 0.100000 -j DROP",
            ]
        );
    }

    #[test]
    fn the_loss_rules_counters_are_read_from_the_listing() {
        let listing = "\
Chain POSTROUTING (policy ACCEPT 1200 packets, 345678 bytes)
    pkts      bytes target     prot opt in     out     source               destination
    1310   409600            all  --  *      wan0    0.0.0.0/0            0.0.0.0/0            /* rlab-loss-seen */
     131    40960 DROP       all  --  *      wan0    0.0.0.0/0            0.0.0.0/0            /* rlab-loss-dropped */ statistic mode random probability 0.10000000009
";
        assert_eq!(rule_packets(listing, SEEN), 1310);
        assert_eq!(rule_packets(listing, LOST), 131);
        assert_eq!(rule_packets("Chain PREROUTING (policy ACCEPT)\n", SEEN), 0);
    }

    #[test]
    fn no_loss_means_no_rules() {
        let clean = Impairment {
            loss: 0.0,
            delay_ms: 50,
            jitter_ms: 0,
        };
        assert!(clean.loss_rules().is_empty());
    }
}
