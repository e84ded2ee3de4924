//! The one place where room ids, enumerations and events become stored text, and back.
//!
//! Visibility, join policy, leave reasons and event kinds are lowercase words; an event's details
//! are a JSON object whose shape is defined here, by private mirror types rather than by
//! `rally-store`'s types, so that a change to those cannot silently change what is stored. Every
//! backend stores the same words and JSON, so a dump moves between them.

use std::collections::{BTreeMap, BTreeSet};

use crate::rooms::{JoinPolicy, LeaveReason, Member, RoomEventKind, Visibility};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::backend::BoxError;

/// The stored word for [`Visibility::Public`], which ListRooms's query names literally so that
/// it matches the `rooms_listed` partial index.
pub const PUBLIC: &str = "public";
const PRIVATE: &str = "private";
const OPEN: &str = "open";
const INVITE_ONLY: &str = "invite_only";

const MEMBER_JOINED: &str = "member_joined";
const MEMBER_LEFT: &str = "member_left";
const DATA_CHANGED: &str = "data_changed";
const OWNER_CHANGED: &str = "owner_changed";
const ROOM_CLOSED: &str = "room_closed";

/// The stored form of an id: canonical hyphenated lowercase text.
pub fn id_text(id: Uuid) -> String {
    id.hyphenated().to_string()
}

/// Parses a stored id.
pub fn parse_id(text: &str) -> Result<Uuid, BoxError> {
    Ok(Uuid::parse_str(text)?)
}

/// The stored word of a visibility.
pub fn visibility_text(visibility: Visibility) -> &'static str {
    match visibility {
        Visibility::Public => PUBLIC,
        Visibility::Private => PRIVATE,
    }
}

/// Parses a stored visibility.
pub fn parse_visibility(text: &str) -> Result<Visibility, BoxError> {
    match text {
        PUBLIC => Ok(Visibility::Public),
        PRIVATE => Ok(Visibility::Private),
        other => Err(format!("unknown room visibility {other:?}").into()),
    }
}

/// The stored word of a join policy.
pub fn join_policy_text(policy: JoinPolicy) -> &'static str {
    match policy {
        JoinPolicy::Open => OPEN,
        JoinPolicy::InviteOnly => INVITE_ONLY,
    }
}

/// Parses a stored join policy.
pub fn parse_join_policy(text: &str) -> Result<JoinPolicy, BoxError> {
    match text {
        OPEN => Ok(JoinPolicy::Open),
        INVITE_ONLY => Ok(JoinPolicy::InviteOnly),
        other => Err(format!("unknown join policy {other:?}").into()),
    }
}

/// `MemberJoined`'s details.
#[derive(Serialize, Deserialize)]
struct Joined {
    user_id: Uuid,
    display_name: String,
    joined_at: i64,
}

/// `MemberLeft`'s details.
#[derive(Serialize, Deserialize)]
struct Left {
    user_id: Uuid,
    reason: Reason,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reason {
    Left,
    Kicked,
    Disconnected,
}

/// `DataChanged`'s details.
#[derive(Serialize, Deserialize)]
struct DataChanged {
    set: BTreeMap<String, String>,
    deleted: BTreeSet<String>,
    invited: BTreeSet<Uuid>,
    uninvited: BTreeSet<Uuid>,
}

/// `OwnerChanged`'s details.
#[derive(Serialize, Deserialize)]
struct OwnerChanged {
    previous: Uuid,
    new: Uuid,
}

/// `RoomClosed` has no details: `{}`.
#[derive(Serialize, Deserialize)]
struct Closed {}

/// An event's stored kind and JSON details.
pub fn encode_event(event: &RoomEventKind) -> Result<(&'static str, String), BoxError> {
    let encoded = match event.clone() {
        RoomEventKind::MemberJoined(member) => (
            MEMBER_JOINED,
            serde_json::to_string(&Joined {
                user_id: member.user_id,
                display_name: member.display_name,
                joined_at: member.joined_at,
            })?,
        ),
        RoomEventKind::MemberLeft { user_id, reason } => {
            let reason = match reason {
                LeaveReason::Left => Reason::Left,
                LeaveReason::Kicked => Reason::Kicked,
                LeaveReason::Disconnected => Reason::Disconnected,
            };
            (
                MEMBER_LEFT,
                serde_json::to_string(&Left { user_id, reason })?,
            )
        }
        RoomEventKind::DataChanged {
            set,
            deleted,
            invited,
            uninvited,
        } => (
            DATA_CHANGED,
            serde_json::to_string(&DataChanged {
                set,
                deleted,
                invited,
                uninvited,
            })?,
        ),
        RoomEventKind::OwnerChanged { previous, new } => (
            OWNER_CHANGED,
            serde_json::to_string(&OwnerChanged { previous, new })?,
        ),
        RoomEventKind::RoomClosed => (ROOM_CLOSED, serde_json::to_string(&Closed {})?),
    };
    Ok(encoded)
}

/// The event stored as `kind` with details `payload`.
pub fn decode_event(kind: &str, payload: &str) -> Result<RoomEventKind, BoxError> {
    let event = match kind {
        MEMBER_JOINED => {
            let joined: Joined = serde_json::from_str(payload)?;
            RoomEventKind::MemberJoined(Member {
                user_id: joined.user_id,
                display_name: joined.display_name,
                joined_at: joined.joined_at,
            })
        }
        MEMBER_LEFT => {
            let left: Left = serde_json::from_str(payload)?;
            let reason = match left.reason {
                Reason::Left => LeaveReason::Left,
                Reason::Kicked => LeaveReason::Kicked,
                Reason::Disconnected => LeaveReason::Disconnected,
            };
            RoomEventKind::MemberLeft {
                user_id: left.user_id,
                reason,
            }
        }
        DATA_CHANGED => {
            let changed: DataChanged = serde_json::from_str(payload)?;
            RoomEventKind::DataChanged {
                set: changed.set,
                deleted: changed.deleted,
                invited: changed.invited,
                uninvited: changed.uninvited,
            }
        }
        OWNER_CHANGED => {
            let changed: OwnerChanged = serde_json::from_str(payload)?;
            RoomEventKind::OwnerChanged {
                previous: changed.previous,
                new: changed.new,
            }
        }
        ROOM_CLOSED => {
            let _: Closed = serde_json::from_str(payload)?;
            RoomEventKind::RoomClosed
        }
        other => return Err(format!("unknown room event kind {other:?}").into()),
    };
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_kind() -> Vec<RoomEventKind> {
        let alice = Uuid::new_v4();
        let bob = Uuid::new_v4();
        vec![
            RoomEventKind::MemberJoined(Member {
                user_id: alice,
                display_name: "Alice \"the\" player ✓".to_owned(),
                joined_at: 1_700_000_000_000,
            }),
            RoomEventKind::MemberLeft {
                user_id: alice,
                reason: LeaveReason::Left,
            },
            RoomEventKind::MemberLeft {
                user_id: alice,
                reason: LeaveReason::Kicked,
            },
            RoomEventKind::MemberLeft {
                user_id: alice,
                reason: LeaveReason::Disconnected,
            },
            RoomEventKind::DataChanged {
                set: BTreeMap::from([("mode".to_owned(), "ctf".to_owned())]),
                deleted: BTreeSet::from(["map".to_owned()]),
                invited: BTreeSet::from([alice]),
                uninvited: BTreeSet::from([bob]),
            },
            RoomEventKind::OwnerChanged {
                previous: alice,
                new: bob,
            },
            RoomEventKind::RoomClosed,
        ]
    }

    #[test]
    fn every_event_kind_round_trips() {
        for event in every_kind() {
            let (kind, payload) = encode_event(&event).expect("encodes");
            let decoded = decode_event(kind, &payload).expect("decodes");
            assert_eq!(decoded, event, "stored as {kind} {payload}");
        }
    }

    #[test]
    fn the_stored_json_has_the_documented_shape() {
        let id = Uuid::nil();
        let (kind, payload) = encode_event(&RoomEventKind::MemberLeft {
            user_id: id,
            reason: LeaveReason::Disconnected,
        })
        .expect("encodes");
        assert_eq!(kind, "member_left");
        assert_eq!(
            payload,
            r#"{"user_id":"00000000-0000-0000-0000-000000000000","reason":"disconnected"}"#
        );
        let (kind, payload) = encode_event(&RoomEventKind::RoomClosed).expect("encodes");
        assert_eq!((kind, payload.as_str()), ("room_closed", "{}"));
    }

    #[test]
    fn unknown_words_and_malformed_payloads_are_errors() {
        assert!(decode_event("member_teleported", "{}").is_err());
        assert!(decode_event("member_left", "{\"user_id\": 3}").is_err());
        assert!(decode_event("member_left", "not json").is_err());
        assert!(parse_visibility("secret").is_err());
        assert!(parse_join_policy("closed").is_err());
    }

    #[test]
    fn enumerations_round_trip() {
        for visibility in [Visibility::Public, Visibility::Private] {
            let text = visibility_text(visibility);
            assert_eq!(parse_visibility(text).expect("parses"), visibility);
        }
        for policy in [JoinPolicy::Open, JoinPolicy::InviteOnly] {
            let text = join_policy_text(policy);
            assert_eq!(parse_join_policy(text).expect("parses"), policy);
        }
    }
}
