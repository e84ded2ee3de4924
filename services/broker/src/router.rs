//! Getting a server message to a user's attachment, on this replica or another.
//!
//! A message for a user attached here goes straight into its link's queue. Otherwise it is
//! published on the cross-replica bus (Postgres LISTEN/NOTIFY with several replicas), and the
//! replica holding the user's attachment delivers it; the others ignore it. The bus is
//! at-most-once: when a replica may have missed messages (its listening connection dropped), it
//! re-syncs its attachments from the store (see `Broker::resync`).
//!
//! Envelope (one bus payload, far below NOTIFY's 8000 bytes: the largest message, a PunchStart or
//! PeerInfo with 17 candidates, encodes to about 1.3 KB):
//! `<kind> <user id> <attachment id or -> <base64 of the encoded AttachResponse>`, where kind `m`
//! delivers a message and `s` delivers a Superseded message that ends the attachment.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use prost::Message as _;
use rally_proto::broker::v1::AttachResponse;
use uuid::Uuid;

/// The bus topic of broker signals.
pub const BROKER_TOPIC: &str = "rally_broker";

/// What an envelope asks the receiving replica to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Deliver the message.
    Message,
    /// Deliver the (Superseded) message and end the attachment with OK.
    Supersede,
}

/// A routed message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Envelope {
    pub(crate) kind: Kind,
    pub(crate) user: Uuid,
    /// Only this attachment of the user (any, when `None`).
    pub(crate) attachment: Option<Uuid>,
    pub(crate) message: AttachResponse,
}

impl Envelope {
    pub(crate) fn encode(&self) -> String {
        let kind = match self.kind {
            Kind::Message => 'm',
            Kind::Supersede => 's',
        };
        let attachment = self
            .attachment
            .map_or_else(|| "-".to_owned(), |id| id.to_string());
        let body = STANDARD_NO_PAD.encode(self.message.encode_to_vec());
        format!("{kind} {} {attachment} {body}", self.user)
    }

    /// Reads a payload from the bus; `None` for anything malformed (another replica's bug, or
    /// another version's format), which is logged and dropped.
    pub(crate) fn decode(payload: &str) -> Option<Self> {
        let mut parts = payload.splitn(4, ' ');
        let kind = match parts.next()? {
            "m" => Kind::Message,
            "s" => Kind::Supersede,
            _ => return None,
        };
        let user = Uuid::try_parse(parts.next()?).ok()?;
        let attachment = match parts.next()? {
            "-" => None,
            text => Some(Uuid::try_parse(text).ok()?),
        };
        let bytes = STANDARD_NO_PAD.decode(parts.next()?).ok()?;
        let message = AttachResponse::decode(bytes.as_slice()).ok()?;
        Some(Self {
            kind,
            user,
            attachment,
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rally_proto::broker::v1::attach_response::Body;
    use rally_proto::broker::v1::{
        Candidate, CandidateKind, PunchRole, PunchStart, SocketAddress, Superseded,
    };

    #[test]
    fn envelopes_round_trip() {
        let envelope = Envelope {
            kind: Kind::Supersede,
            user: Uuid::new_v4(),
            attachment: Some(Uuid::new_v4()),
            message: AttachResponse {
                request_id: 0,
                body: Some(Body::Superseded(Superseded {
                    by_attachment_id: Uuid::new_v4().to_string(),
                })),
            },
        };
        assert_eq!(Envelope::decode(&envelope.encode()), Some(envelope));
    }

    #[test]
    fn the_largest_signal_fits_a_notify_payload() {
        let candidate = Candidate {
            kind: CandidateKind::PeerReflexive as i32,
            address: Some(SocketAddress {
                ip: "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".into(),
                port: 65535,
            }),
            priority: u32::MAX,
        };
        let envelope = Envelope {
            kind: Kind::Message,
            user: Uuid::new_v4(),
            attachment: Some(Uuid::new_v4()),
            message: AttachResponse {
                request_id: u64::MAX,
                body: Some(Body::PunchStart(PunchStart {
                    user_id: Uuid::new_v4().to_string(),
                    candidates: vec![candidate; crate::validate::MAX_CANDIDATES + 1],
                    start_at: Some(prost_types::Timestamp {
                        seconds: i64::MAX,
                        nanos: 999_999_999,
                    }),
                    role: PunchRole::Acceptor as i32,
                    observed_ip: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".into(),
                })),
            },
        };
        let payload = envelope.encode();
        assert!(
            payload.len() <= rally_store::bus::MAX_PAYLOAD_BYTES,
            "{} bytes",
            payload.len()
        );
    }

    proptest! {
        #[test]
        fn any_payload_decodes_or_is_refused_without_panicking(payload in ".{0,300}") {
            let _ = Envelope::decode(&payload);
        }
    }
}
