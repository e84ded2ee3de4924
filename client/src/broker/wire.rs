//! The Attach stream's messages, both ways (sans-IO).
//!
//! Toward the server: the Hello of an [`Announcement`] and the checks the SDK makes before
//! sending (the contract's bounds, so a mistake is an [`Error::InvalidArgument`] at the call, not
//! a refused stream). From the server: [`classify`] turns each message into an answer, a
//! [`BrokerEvent`] or nothing. The server is not trusted: a message with a malformed user id,
//! fingerprint, address or time is dropped with the reason, never a panic.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rally_proto::broker::v1::attach_response::Body;
use rally_proto::broker::v1::{
    AttachResponse, Candidate, CandidateKind, ErrorCode, Hello, NatType, PeerClosedReason,
    PeerInfo, PunchRole, PunchStart, RelayGrant, SocketAddress, Welcome,
};
use uuid::Uuid;

use super::clock::{ClockSync, ServerNanos, server_nanos};
use super::pending::Answer;
use super::{Announcement, BrokerEvent};
use crate::{Error, Result};

/// Most candidates a client announces.
pub(crate) const MAX_CANDIDATES: usize = 16;
/// Longest reject reason.
pub(crate) const MAX_REASON_BYTES: usize = 256;
/// Most candidates accepted in one server message (the contract says 17).
const MAX_PEER_CANDIDATES: usize = 32;
/// Longest textual IP address.
const MAX_IP_BYTES: usize = 45;
/// Longest text accepted as an attachment id.
const MAX_ATTACHMENT_ID_BYTES: usize = 64;
/// Bytes of a relay allocation id.
const ALLOCATION_ID_BYTES: usize = 16;
/// Longest relay grant token.
const MAX_GRANT_TOKEN_BYTES: usize = 256;
/// The keepalive interval the server may ask for (its own configuration bounds).
const KEEPALIVE_RANGE: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(600));
/// The keepalive interval when the Welcome has none.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(10);

/// The SDK's name and version, sent in every Hello.
pub(crate) const CLIENT_VERSION: &str = concat!("rally-sdk-rust/", env!("CARGO_PKG_VERSION"));

/// The Hello that announces `announcement`.
pub(crate) fn hello(announcement: &Announcement) -> Hello {
    Hello {
        certificate_fingerprint: announcement.fingerprint.to_vec(),
        candidates: announcement.candidates.clone(),
        relay_policy: announcement.relay_policy as i32,
        nat_type: announcement.nat_type as i32,
        client_version: CLIENT_VERSION.to_owned(),
    }
}

/// Checks a client's own candidates against the contract: at most [`MAX_CANDIDATES`], each
/// HOST, SERVER_REFLEXIVE or PEER_REFLEXIVE, with an IP address and a port 1 to 65535.
pub(crate) fn check_candidates(candidates: &[Candidate]) -> Result<()> {
    if candidates.len() > MAX_CANDIDATES {
        return Err(Error::InvalidArgument(format!(
            "{} candidates; at most {MAX_CANDIDATES}",
            candidates.len()
        )));
    }
    for (i, candidate) in candidates.iter().enumerate() {
        match CandidateKind::try_from(candidate.kind) {
            Ok(
                CandidateKind::Host | CandidateKind::ServerReflexive | CandidateKind::PeerReflexive,
            ) => {}
            _ => {
                return Err(Error::InvalidArgument(format!(
                    "candidates[{i}].kind must be HOST, SERVER_REFLEXIVE or PEER_REFLEXIVE"
                )));
            }
        }
        if candidate.address.as_ref().and_then(socket_addr).is_none() {
            return Err(Error::InvalidArgument(format!(
                "candidates[{i}].address is not an IP address with a port 1 to 65535"
            )));
        }
    }
    Ok(())
}

/// Checks a reject reason: at most [`MAX_REASON_BYTES`].
pub(crate) fn check_reason(reason: &str) -> Result<()> {
    if reason.len() > MAX_REASON_BYTES {
        return Err(Error::InvalidArgument(format!(
            "reason is {} bytes; at most {MAX_REASON_BYTES}",
            reason.len()
        )));
    }
    Ok(())
}

/// A wire address as a socket address, if it is a valid one.
pub(crate) fn socket_addr(address: &SocketAddress) -> Option<SocketAddr> {
    if address.ip.len() > MAX_IP_BYTES {
        return None;
    }
    let ip: IpAddr = address.ip.parse().ok()?;
    let port = u16::try_from(address.port).ok().filter(|p| *p != 0)?;
    Some(SocketAddr::new(ip, port))
}

/// What a Welcome says, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Welcomed {
    /// The attachment's id (empty if the server sent something unusable).
    pub(crate) attachment_id: String,
    /// How often to ping at least.
    pub(crate) keepalive: Duration,
    /// The valid reflector addresses.
    pub(crate) reflectors: Vec<SocketAddr>,
    /// The server's clock when it sent the Welcome.
    pub(crate) server_time: Option<ServerNanos>,
}

/// Reads a Welcome. Unusable parts are replaced (keepalive) or left out (reflectors), with a
/// warning: the attachment itself is live either way.
pub(crate) fn welcome(welcome: &Welcome) -> Welcomed {
    let attachment_id = if welcome.attachment_id.len() <= MAX_ATTACHMENT_ID_BYTES {
        welcome.attachment_id.clone()
    } else {
        tracing::warn!("the Welcome's attachment id is too long; ignored");
        String::new()
    };
    let keepalive = welcome
        .keepalive_interval
        .and_then(|d| Duration::try_from(d).ok())
        .map_or(DEFAULT_KEEPALIVE, |d| {
            d.clamp(KEEPALIVE_RANGE.0, KEEPALIVE_RANGE.1)
        });
    let reflectors = welcome
        .reflector_addresses
        .iter()
        .take(MAX_PEER_CANDIDATES)
        .filter_map(|a| {
            let parsed = socket_addr(a);
            if parsed.is_none() {
                tracing::warn!(ip = %a.ip, port = a.port, "the Welcome names a malformed reflector; ignored");
            }
            parsed
        })
        .collect();
    Welcomed {
        attachment_id,
        keepalive,
        reflectors,
        server_time: welcome.server_time.as_ref().and_then(server_nanos),
    }
}

/// What one server message means.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Incoming {
    /// The immediate answer to the client's request `request_id`.
    Answer {
        /// The request answered.
        request_id: u64,
        /// The answer.
        answer: Result<Answer>,
    },
    /// The answer to a Ping.
    Pong {
        /// The Ping's request id.
        request_id: u64,
        /// The server's clock when it answered.
        server_time: Option<ServerNanos>,
    },
    /// Something for the game.
    Event(BrokerEvent),
    /// A newer attachment replaced this one; the stream ends.
    Superseded,
    /// A message that is dropped, and why.
    Dropped(String),
}

/// Classifies one server message. PunchStart times are converted with `clock` at `now`.
pub(crate) fn classify(message: AttachResponse, clock: &ClockSync, now: Instant) -> Incoming {
    let id = message.request_id;
    let Some(body) = message.body else {
        return Incoming::Dropped("a message without a body this SDK knows".into());
    };
    let answer = |answer| match id {
        0 => Incoming::Dropped("an answer without a request id".into()),
        request_id => Incoming::Answer { request_id, answer },
    };
    let event = |result: Result<BrokerEvent, String>| match result {
        Ok(event) => Incoming::Event(event),
        Err(why) => Incoming::Dropped(why),
    };
    match body {
        Body::Welcome(_) => Incoming::Dropped("a Welcome on a live attachment".into()),
        Body::Ack(_) | Body::Reauthenticated(_) => answer(Ok(Answer::Ack)),
        Body::Error(error) => answer(Err(Error::Broker {
            code: ErrorCode::try_from(error.code).unwrap_or(ErrorCode::Unspecified),
            message: error.message,
        })),
        Body::RoomPresence(presence) => answer(Ok(Answer::RoomPresence(presence))),
        Body::Pong(pong) if id != 0 => Incoming::Pong {
            request_id: id,
            server_time: pong.server_time.as_ref().and_then(server_nanos),
        },
        Body::Pong(_) => Incoming::Dropped("a Pong without a request id".into()),
        Body::RelayGrant(grant) => match (check_grant(&grant), id) {
            (Ok(()), 0) => Incoming::Event(BrokerEvent::RelayGrant(grant)),
            (Ok(()), _) => answer(Ok(Answer::RelayGrant(grant))),
            (Err(why), 0) => Incoming::Dropped(why),
            (Err(why), _) => answer(Err(Error::protocol(why))),
        },
        Body::PeerConnectRequest(request) => event(
            user("PeerConnectRequest", &request.user_id)
                .map(|user| BrokerEvent::PeerConnectRequest { user }),
        ),
        Body::ConnectAccepted(accepted) => event(
            user("ConnectAccepted", &accepted.user_id)
                .map(|user| BrokerEvent::ConnectAccepted { user }),
        ),
        Body::ConnectRejected(rejected) => {
            event(user("ConnectRejected", &rejected.user_id).map(|user| {
                BrokerEvent::ConnectRejected {
                    user,
                    reason: rejected.reason,
                }
            }))
        }
        Body::PeerInfo(info) => event(peer_info(info)),
        Body::PunchStart(punch) => event(punch_start(punch, clock, now)),
        Body::PeerClosed(closed) => {
            event(
                user("PeerClosed", &closed.user_id).map(|user| BrokerEvent::PeerClosed {
                    user,
                    detached: closed.reason == PeerClosedReason::Detached as i32,
                }),
            )
        }
        Body::Superseded(_) => Incoming::Superseded,
    }
}

fn user(message: &str, text: &str) -> Result<Uuid, String> {
    match Uuid::try_parse(text) {
        Ok(user) if !user.is_nil() => Ok(user),
        _ => Err(format!("{message} with a malformed user id")),
    }
}

/// A peer's candidates: the direct ones (highest priority first) and the relayed one.
#[derive(Debug, Default)]
struct Addresses {
    direct: Vec<SocketAddr>,
    reflexive: Vec<SocketAddr>,
    relayed: Option<SocketAddr>,
}

fn addresses(message: &str, candidates: &[Candidate]) -> Result<Addresses, String> {
    if candidates.len() > MAX_PEER_CANDIDATES {
        return Err(format!("{message} with {} candidates", candidates.len()));
    }
    let mut direct = Vec::new();
    let mut reflexive = Vec::new();
    let mut relayed: Option<(u32, SocketAddr)> = None;
    for candidate in candidates {
        let address = candidate
            .address
            .as_ref()
            .and_then(socket_addr)
            .ok_or_else(|| format!("{message} with a malformed candidate address"))?;
        match CandidateKind::try_from(candidate.kind) {
            Ok(CandidateKind::Host) => direct.push((candidate.priority, address)),
            Ok(CandidateKind::ServerReflexive | CandidateKind::PeerReflexive) => {
                direct.push((candidate.priority, address));
                reflexive.push(address);
            }
            Ok(CandidateKind::Relayed) => {
                if relayed.is_none_or(|(priority, _)| candidate.priority > priority) {
                    relayed = Some((candidate.priority, address));
                }
            }
            // A kind from a newer server: not usable by this SDK, harmless to skip.
            _ => tracing::debug!(
                kind = candidate.kind,
                "skipped a candidate of an unknown kind"
            ),
        }
    }
    direct.sort_by_key(|(priority, _)| std::cmp::Reverse(*priority));
    Ok(Addresses {
        direct: direct.into_iter().map(|(_, a)| a).collect(),
        reflexive,
        relayed: relayed.map(|(_, a)| a),
    })
}

fn fingerprint(bytes: &[u8]) -> Result<[u8; 32], String> {
    <[u8; 32]>::try_from(bytes).map_err(|_| {
        format!(
            "PeerInfo with a fingerprint of {} bytes, not 32",
            bytes.len()
        )
    })
}

fn nat_type(value: i32) -> NatType {
    NatType::try_from(value).unwrap_or(NatType::Unspecified)
}

fn peer_info(info: PeerInfo) -> Result<BrokerEvent, String> {
    let user = user("PeerInfo", &info.user_id)?;
    let fingerprint = fingerprint(&info.certificate_fingerprint)?;
    let addresses = addresses("PeerInfo", &info.candidates)?;
    Ok(BrokerEvent::PeerInfo {
        user,
        fingerprint,
        candidates: addresses.direct,
        relayed: addresses.relayed,
        nat_type: nat_type(info.nat_type),
    })
}

fn punch_start(punch: PunchStart, clock: &ClockSync, now: Instant) -> Result<BrokerEvent, String> {
    let user = user("PunchStart", &punch.user_id)?;
    let addresses = addresses("PunchStart", &punch.candidates)?;
    let start_at = punch
        .start_at
        .as_ref()
        .and_then(server_nanos)
        .ok_or("PunchStart without a valid start time")?;
    let dialer = match PunchRole::try_from(punch.role) {
        Ok(PunchRole::Dialer) => true,
        Ok(PunchRole::Acceptor) => false,
        _ => return Err("PunchStart without a valid role".into()),
    };
    // Birthday probing aims only where the broker saw the peer, never where it merely says it
    // is: a hostile peer could otherwise aim this client's probes at a third party.
    let observed: Option<IpAddr> = punch
        .observed_ip
        .parse::<IpAddr>()
        .ok()
        .map(|ip| ip.to_canonical());
    let reflexive = addresses
        .reflexive
        .into_iter()
        .filter(|addr| Some(addr.ip().to_canonical()) == observed)
        .collect();
    Ok(BrokerEvent::PunchStart {
        user,
        candidates: addresses.direct,
        reflexive,
        start_at: clock.to_local(start_at, now),
        dialer,
    })
}

fn check_grant(grant: &RelayGrant) -> Result<(), String> {
    user("RelayGrant", &grant.user_id)?;
    if grant.relay_address.as_ref().and_then(socket_addr).is_none() {
        return Err("RelayGrant with a malformed relay address".into());
    }
    if grant.allocation_id.len() != ALLOCATION_ID_BYTES {
        return Err("RelayGrant with an allocation id that is not 16 bytes".into());
    }
    if grant.token.is_empty() || grant.token.len() > MAX_GRANT_TOKEN_BYTES {
        return Err("RelayGrant with a missing or oversized token".into());
    }
    if grant.side > 1 {
        return Err("RelayGrant with a side other than 0 or 1".into());
    }
    if grant.expires_at.as_ref().and_then(server_nanos).is_none() {
        return Err("RelayGrant without a valid expiry".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
