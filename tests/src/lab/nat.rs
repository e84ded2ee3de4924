//! The NAT behaviours, as iptables rules (the table in `/work/shared/NAT-LAB.md`). Pure: rules
//! are data here, applied by the lab.

use std::net::Ipv4Addr;

/// How a router translates and filters (RFC 4787 terms: mapping, filtering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// No router: the player has a public address on the internet.
    None,
    /// Endpoint-independent mapping and filtering: once the host sent anything, anyone reaching
    /// its public port gets in. Unsolicited packets go to the router's first host (one mapping
    /// per port for the whole router; looser than a real full cone).
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering: any port of an address the
    /// host contacted gets in.
    AddressRestricted,
    /// Endpoint-independent mapping, address-and-port-dependent filtering: only the exact
    /// address and port the host contacted get in (plain MASQUERADE; the common home router).
    PortRestricted,
    /// Address-and-port-dependent mapping: a new random public port per destination
    /// (`--random-fully`); no port prediction possible.
    Symmetric,
}

impl NatKind {
    /// Every kind, from the most open.
    pub const ALL: [NatKind; 5] = [
        NatKind::None,
        NatKind::FullCone,
        NatKind::AddressRestricted,
        NatKind::PortRestricted,
        NatKind::Symmetric,
    ];

    /// Whether the public port is the same for every destination.
    pub fn is_endpoint_independent(self) -> bool {
        self != NatKind::Symmetric
    }
}

/// An iptables command line (without `iptables`).
pub(crate) type Rule = Vec<String>;

/// A rule written as on the command line (words separated by spaces).
fn rule(line: &str) -> Rule {
    line.split_whitespace().map(str::to_owned).collect()
}

/// The name under which an address-restricted router remembers the addresses its LAN
/// contacted (`-m recent`).
const CONTACTED: &str = "rlab-contacted";

/// The rules a router of `kind` with LAN 10.`segment`.0.0/24 gets when it is made.
pub(crate) fn router_rules(kind: NatKind, segment: u8) -> Vec<Rule> {
    let lan = format!("10.{segment}.0.0/24");
    let masquerade = format!("-t nat -A POSTROUTING -o wan0 -s {lan} -j MASQUERADE");
    let mut rules = match kind {
        NatKind::None => return Vec::new(),
        NatKind::Symmetric => vec![rule(&format!("{masquerade} --random-fully"))],
        NatKind::FullCone | NatKind::AddressRestricted | NatKind::PortRestricted => {
            vec![rule(&masquerade)]
        }
    };
    if kind == NatKind::AddressRestricted {
        // Remember every address the LAN sends to; from the WAN, let in replies and anything
        // from a remembered address (whatever its port); drop the rest.
        rules.extend([
            rule(&format!(
                "-A FORWARD -i lan0 -o wan0 -m recent --name {CONTACTED} --rdest --set -j ACCEPT"
            )),
            rule("-A FORWARD -i wan0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"),
            rule(&format!(
                "-A FORWARD -i wan0 -m recent --name {CONTACTED} --rsource --rcheck -j ACCEPT"
            )),
            rule("-A FORWARD -i wan0 -j DROP"),
        ]);
    }
    // Unsolicited UDP to the router itself is dropped, as home routers do: otherwise a peer's
    // early probe leaves a conntrack entry that our own later packet clashes with, and
    // MASQUERADE moves us to another port.
    rules.push(rule("-A INPUT -i wan0 -p udp -j DROP"));
    rules
}

/// The rules a router of `kind` gets with its first host at `host`: full-cone and
/// address-restricted routers send unsolicited UDP to it.
pub(crate) fn first_host_rules(kind: NatKind, host: Ipv4Addr) -> Vec<Rule> {
    match kind {
        NatKind::FullCone | NatKind::AddressRestricted => vec![rule(&format!(
            "-t nat -A PREROUTING -i wan0 -p udp -j DNAT --to-destination {host}"
        ))],
        NatKind::None | NatKind::PortRestricted | NatKind::Symmetric => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(rules: &[Rule]) -> Vec<String> {
        rules.iter().map(|r| r.join(" ")).collect()
    }

    #[test]
    fn every_router_drops_unsolicited_udp_to_itself() {
        for kind in NatKind::ALL.into_iter().filter(|k| *k != NatKind::None) {
            assert!(
                lines(&router_rules(kind, 1)).contains(&"-A INPUT -i wan0 -p udp -j DROP".into()),
                "{kind:?}"
            );
        }
        assert!(router_rules(NatKind::None, 1).is_empty());
    }

    #[test]
    fn only_the_symmetric_nat_randomises_ports() {
        let masquerade = |kind| lines(&router_rules(kind, 3))[0].clone();
        assert_eq!(
            masquerade(NatKind::PortRestricted),
            "-t nat -A POSTROUTING -o wan0 -s 10.3.0.0/24 -j MASQUERADE"
        );
        assert_eq!(
            masquerade(NatKind::Symmetric),
            "-t nat -A POSTROUTING -o wan0 -s 10.3.0.0/24 -j MASQUERADE --random-fully"
        );
    }

    #[test]
    fn cone_nats_with_open_filtering_forward_to_their_first_host() {
        let host = Ipv4Addr::new(10, 1, 0, 2);
        for kind in [NatKind::FullCone, NatKind::AddressRestricted] {
            assert_eq!(
                lines(&first_host_rules(kind, host)),
                ["-t nat -A PREROUTING -i wan0 -p udp -j DNAT --to-destination 10.1.0.2"]
            );
        }
        for kind in [NatKind::PortRestricted, NatKind::Symmetric, NatKind::None] {
            assert!(first_host_rules(kind, host).is_empty());
        }
    }

    #[test]
    fn the_address_restricted_nat_filters_on_contacted_addresses() {
        let rules = lines(&router_rules(NatKind::AddressRestricted, 2));
        assert!(rules.iter().any(|r| r.contains("--rdest --set")));
        assert!(rules.iter().any(|r| r.contains("--rsource --rcheck")));
        assert!(rules.contains(&"-A FORWARD -i wan0 -j DROP".into()));
        assert!(
            !lines(&router_rules(NatKind::FullCone, 2))
                .iter()
                .any(|r| r.contains("FORWARD"))
        );
    }
}
