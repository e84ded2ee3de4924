//! This client's public address and NAT type, learned from the relay's reflectors (RFC 5780's
//! tests, reduced to what a game needs): the mapping behaviour from binding requests sent from
//! the QUIC port to two reflector addresses with different IPs, the filtering behaviour from a
//! fresh socket asking a reflector to answer from another address or another port.
//!
//! The classification is pure ([`classify`]) and unit-tested; [`discover`] does the I/O with
//! bounded retries and time.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rally_relay::wire::{self, Message, RespondFrom};
use tokio::net::UdpSocket;

use super::traversal::NatClass;

/// How often a binding request is repeated while unanswered.
const RETRY: Duration = Duration::from_millis(200);
/// How many times.
const TRIES: u32 = 3;

/// How the NAT maps this client's port to public ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// No NAT: the reflectors see this client's own address.
    NoNat,
    /// One public port for every destination (cone NATs).
    EndpointIndependent,
    /// A new public port per destination (symmetric NAT).
    AddressDependent,
    /// Not measured (fewer than two reflector addresses answered).
    Unknown,
}

/// Which unsolicited packets the NAT lets in to a mapped port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filtering {
    /// Any sender (full cone, or no NAT and no firewall).
    EndpointIndependent,
    /// Any port of an address this client sent to (address-restricted cone).
    AddressDependent,
    /// Only the exact address and port this client sent to (port-restricted cone, symmetric).
    AddressAndPortDependent,
    /// Not measured (the server has no second reflector address or port).
    Unknown,
}

/// This client's NAT as measured at startup (Epic Online Services' NAT type report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatReport {
    /// Open, moderate or strict (or unknown).
    pub nat_type: NatClass,
    /// The mapping behaviour.
    pub mapping: Mapping,
    /// The filtering behaviour.
    pub filtering: Filtering,
    /// The public (server-reflexive) address of the QUIC port, as the first reflector saw it.
    pub public_address: Option<SocketAddr>,
}

impl NatReport {
    /// The report when nothing could be measured.
    pub fn unknown() -> Self {
        Self {
            nat_type: NatClass::Unknown,
            mapping: Mapping::Unknown,
            filtering: Filtering::Unknown,
            public_address: None,
        }
    }
}

/// Classifies: `local` is the QUIC port's bound address, `hosts` this machine's addresses,
/// `mapped` what up to two reflectors (different IPs) saw, `filtering` what the filtering tests
/// found.
pub fn classify(
    local: SocketAddr,
    hosts: &[IpAddr],
    mapped: &[SocketAddr],
    filtering: Filtering,
) -> NatReport {
    let Some(first) = mapped.first().copied() else {
        return NatReport::unknown();
    };
    let own = first.port() == local.port()
        && (first.ip() == local.ip()
            || (local.ip().is_unspecified() && hosts.contains(&first.ip())));
    let mapping = if own {
        Mapping::NoNat
    } else {
        match mapped.get(1) {
            Some(second) if *second == first => Mapping::EndpointIndependent,
            Some(_) => Mapping::AddressDependent,
            None => Mapping::Unknown,
        }
    };
    let filtering = if own && filtering == Filtering::Unknown {
        // No NAT; a host firewall would be the only filter, and none was measured.
        Filtering::Unknown
    } else {
        filtering
    };
    let nat_type = match (mapping, filtering) {
        (Mapping::NoNat, _) => NatClass::Open,
        (Mapping::AddressDependent, _) => NatClass::Strict,
        (Mapping::EndpointIndependent, Filtering::EndpointIndependent) => NatClass::Open,
        (Mapping::EndpointIndependent, _) => NatClass::Moderate,
        // One reflector answered: a NAT, behaviour unknown; moderate is the safe middle.
        (Mapping::Unknown, Filtering::EndpointIndependent) => NatClass::Open,
        (Mapping::Unknown, _) => NatClass::Moderate,
    };
    NatReport {
        nat_type,
        mapping,
        filtering,
        public_address: Some(first),
    }
}

/// Measures this client's NAT: `transport` is the QUIC endpoint (binding requests leave from
/// its port), `reflectors` the server's reflector addresses, `hosts` this machine's addresses.
/// Takes at most about `2 × TRIES × RETRY`: the filtering tests, then the mapping tests.
pub async fn discover(
    transport: &rally_quic::Transport,
    reflectors: &[SocketAddr],
    hosts: &[IpAddr],
) -> NatReport {
    let local = transport.local_addr();
    let reflectors: Vec<SocketAddr> = reflectors
        .iter()
        .copied()
        .filter(|r| r.is_ipv4() == local.is_ipv4())
        .collect();
    let Some(first) = reflectors.first().copied() else {
        return NatReport::unknown();
    };
    // Two reflectors with different IPs for the mapping test.
    let second = reflectors.iter().copied().find(|r| r.ip() != first.ip());
    let other_port = reflectors
        .iter()
        .any(|r| r.ip() == first.ip() && r.port() != first.port());
    // Filtering first, from fresh sockets that have contacted only the first reflector: some
    // address-restricted NATs admit any address the whole NAT sent to, so the mapping test's
    // packets to the second reflector would make them look like full cones.
    let filter_address = async {
        match second {
            Some(_) => fresh_socket_query(first, RespondFrom::OtherAddress).await,
            None => None,
        }
    };
    let filter_port = async {
        if other_port {
            fresh_socket_query(first, RespondFrom::OtherPort).await
        } else {
            None
        }
    };
    let (by_address, by_port) = tokio::join!(filter_address, filter_port);
    let mapping_b = async {
        match second {
            Some(second) => mapped_from_port(transport, second).await,
            None => None,
        }
    };
    let (a, b) = tokio::join!(mapped_from_port(transport, first), mapping_b);
    let filtering = if by_address == Some(true) {
        Filtering::EndpointIndependent
    } else if by_port == Some(true) {
        Filtering::AddressDependent
    } else if by_port == Some(false) {
        Filtering::AddressAndPortDependent
    } else {
        Filtering::Unknown
    };
    let mapped: Vec<SocketAddr> = a.into_iter().chain(b).collect();
    let report = classify(local, hosts, &mapped, filtering);
    tracing::debug!(?report, "NAT measured");
    report
}

/// The address a reflector sees the QUIC port at.
async fn mapped_from_port(
    transport: &rally_quic::Transport,
    reflector: SocketAddr,
) -> Option<SocketAddr> {
    let socket = match transport.side_socket(reflector) {
        Ok(socket) => socket,
        Err(error) => {
            tracing::debug!(%error, %reflector, "cannot open a socket for the reflector");
            return None;
        }
    };
    query(&socket, reflector, RespondFrom::Same)
        .await
        .map(|(mapped, _)| mapped)
}

/// Whether an answer from another address or port of the reflector reaches a fresh socket:
/// `Some(true)` it did, `Some(false)` it did not, `None` the socket could not be opened.
async fn fresh_socket_query(reflector: SocketAddr, respond_from: RespondFrom) -> Option<bool> {
    let socket = UdpSocket::bind(super::relay_path::any_port_like(reflector))
        .await
        .ok()?;
    Some(query(&socket, reflector, respond_from).await.is_some())
}

/// Sends binding requests to `reflector` until one is answered (from anywhere, with the same
/// transaction id): the mapped address and who answered.
async fn query(
    socket: &UdpSocket,
    reflector: SocketAddr,
    respond_from: RespondFrom,
) -> Option<(SocketAddr, SocketAddr)> {
    let mut transaction = [0u8; 12];
    getrandom::fill(&mut transaction).ok()?;
    let mut request = Vec::new();
    wire::encode(
        &Message::BindingRequest {
            transaction,
            respond_from,
        },
        &mut request,
    );
    let mut buf = [0u8; 128];
    for _ in 0..TRIES {
        if let Err(error) = socket.send_to(&request, reflector).await {
            tracing::debug!(%error, %reflector, "binding request not sent");
            return None;
        }
        let deadline = tokio::time::Instant::now() + RETRY;
        while let Ok(received) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
        {
            let Ok((len, from)) = received else {
                continue;
            };
            if let Ok(Message::BindingResponse {
                transaction: t,
                address,
            }) = wire::decode(&buf[..len])
                && t == transaction
            {
                return Some((address, from));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn the_reflectors_seeing_our_own_address_means_no_nat() {
        let report = classify(
            a("0.0.0.0:4000"),
            &["100.64.0.20".parse().expect("ip")],
            &[a("100.64.0.20:4000"), a("100.64.0.20:4000")],
            Filtering::EndpointIndependent,
        );
        assert_eq!(report.mapping, Mapping::NoNat);
        assert_eq!(report.nat_type, NatClass::Open);
        assert_eq!(report.public_address, Some(a("100.64.0.20:4000")));
    }

    #[test]
    fn one_public_port_for_both_reflectors_is_a_cone_classed_by_filtering() {
        let mapped = [a("100.64.0.11:4000"), a("100.64.0.11:4000")];
        let local = a("10.1.0.2:4000");
        let full = classify(local, &[], &mapped, Filtering::EndpointIndependent);
        assert_eq!(
            (full.mapping, full.nat_type),
            (Mapping::EndpointIndependent, NatClass::Open)
        );
        for filtering in [
            Filtering::AddressDependent,
            Filtering::AddressAndPortDependent,
        ] {
            assert_eq!(
                classify(local, &[], &mapped, filtering).nat_type,
                NatClass::Moderate
            );
        }
    }

    #[test]
    fn a_port_per_destination_is_strict_whatever_the_filtering() {
        let report = classify(
            a("10.1.0.2:4000"),
            &[],
            &[a("100.64.0.11:31000"), a("100.64.0.11:52000")],
            Filtering::EndpointIndependent,
        );
        assert_eq!(report.mapping, Mapping::AddressDependent);
        assert_eq!(report.nat_type, NatClass::Strict);
    }

    #[test]
    fn nothing_answered_is_unknown_and_one_answer_is_moderate() {
        assert_eq!(
            classify(a("10.1.0.2:4000"), &[], &[], Filtering::Unknown),
            NatReport::unknown()
        );
        let one = classify(
            a("10.1.0.2:4000"),
            &[],
            &[a("100.64.0.11:4000")],
            Filtering::Unknown,
        );
        assert_eq!(
            (one.mapping, one.nat_type),
            (Mapping::Unknown, NatClass::Moderate)
        );
    }
}
