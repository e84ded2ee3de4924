//! Store types to wire types, and ListRooms page tokens.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rally_proto::rooms::v1 as pb;
use rally_store::UnixMillis;
use rally_store::rooms::{
    JoinPolicy, LeaveReason, Member, Room, RoomCursor, RoomEvent, RoomEventKind, Visibility,
};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::RoomsError;

pub(crate) use crate::clock::timestamp;

pub(crate) fn visibility(value: i32) -> Visibility {
    match pb::RoomVisibility::try_from(value) {
        Ok(pb::RoomVisibility::Private) => Visibility::Private,
        _ => Visibility::Public,
    }
}

pub(crate) fn join_policy(value: i32) -> JoinPolicy {
    match pb::JoinPolicy::try_from(value) {
        Ok(pb::JoinPolicy::InviteOnly) => JoinPolicy::InviteOnly,
        _ => JoinPolicy::Open,
    }
}

fn member(member: &Member) -> pb::Member {
    pb::Member {
        user_id: member.user_id.to_string(),
        display_name: member.display_name.clone(),
        joined_at: Some(timestamp(member.joined_at)),
    }
}

fn ids<'a>(ids: impl IntoIterator<Item = &'a Uuid>) -> Vec<String> {
    ids.into_iter().map(Uuid::to_string).collect()
}

pub(crate) fn room(room: &Room) -> pb::Room {
    pb::Room {
        room_id: room.id.to_string(),
        owner_user_id: room.owner.to_string(),
        members: room.members.iter().map(member).collect(),
        capacity: room.capacity,
        visibility: match room.visibility {
            Visibility::Public => pb::RoomVisibility::Public,
            Visibility::Private => pb::RoomVisibility::Private,
        } as i32,
        join_policy: match room.join_policy {
            JoinPolicy::Open => pb::JoinPolicy::Open,
            JoinPolicy::InviteOnly => pb::JoinPolicy::InviteOnly,
        } as i32,
        data: room.data.clone().into_iter().collect(),
        invited_user_ids: ids(&room.invited),
        created_at: Some(timestamp(room.created_at)),
        sequence: room.sequence,
    }
}

pub(crate) fn event(event: &RoomEvent) -> pb::RoomEvent {
    use pb::room_event::Kind;
    let kind = match &event.kind {
        RoomEventKind::MemberJoined(m) => Kind::MemberJoined(pb::MemberJoined {
            member: Some(member(m)),
        }),
        RoomEventKind::MemberLeft { user_id, reason } => Kind::MemberLeft(pb::MemberLeft {
            user_id: user_id.to_string(),
            reason: match reason {
                LeaveReason::Left => pb::LeaveReason::Left,
                LeaveReason::Kicked => pb::LeaveReason::Kicked,
                LeaveReason::Disconnected => pb::LeaveReason::Disconnected,
            } as i32,
        }),
        RoomEventKind::DataChanged {
            set,
            deleted,
            invited,
            uninvited,
        } => Kind::DataChanged(pb::DataChanged {
            set: set.clone().into_iter().collect(),
            deleted_keys: deleted.iter().cloned().collect(),
            invited_user_ids: ids(invited),
            uninvited_user_ids: ids(uninvited),
        }),
        RoomEventKind::OwnerChanged { previous, new } => Kind::OwnerChanged(pb::OwnerChanged {
            previous_owner_user_id: previous.to_string(),
            new_owner_user_id: new.to_string(),
        }),
        RoomEventKind::RoomClosed => Kind::RoomClosed(pb::RoomClosed {}),
    };
    pb::RoomEvent {
        sequence: event.sequence,
        occurred_at: Some(timestamp(event.occurred_at)),
        kind: Some(kind),
    }
}

/// A ListRooms page token: the last listed room's position and a hash of the filters, so a token
/// is refused with other filters than those of the first page.
#[derive(serde::Serialize, serde::Deserialize)]
struct PageToken {
    c: UnixMillis,
    i: Uuid,
    f: String,
}

fn filter_hash(data_equals: &BTreeMap<String, String>, min_free_seats: u32) -> String {
    let mut hasher = Sha256::new();
    for (k, v) in data_equals {
        hasher.update((k.len() as u64).to_le_bytes());
        hasher.update(k.as_bytes());
        hasher.update((v.len() as u64).to_le_bytes());
        hasher.update(v.as_bytes());
    }
    hasher.update(min_free_seats.to_le_bytes());
    URL_SAFE_NO_PAD.encode(&hasher.finalize()[..12])
}

pub(crate) fn page_token(
    cursor: RoomCursor,
    data_equals: &BTreeMap<String, String>,
    min_free_seats: u32,
) -> String {
    let token = PageToken {
        c: cursor.created_at,
        i: cursor.id,
        f: filter_hash(data_equals, min_free_seats),
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
}

pub(crate) fn parse_page_token(
    text: &str,
    data_equals: &BTreeMap<String, String>,
    min_free_seats: u32,
) -> Result<Option<RoomCursor>, RoomsError> {
    if text.is_empty() {
        return Ok(None);
    }
    let invalid = || RoomsError::invalid("page_token", "not a token from a previous page");
    if text.len() > 256 {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
    let token: PageToken = serde_json::from_slice(&bytes).map_err(|_| invalid())?;
    if token.f != filter_hash(data_equals, min_free_seats) {
        return Err(RoomsError::invalid(
            "page_token",
            "the filters differ from those of the first page",
        ));
    }
    Ok(Some(RoomCursor {
        created_at: token.c,
        id: token.i,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn page_tokens_round_trip_and_bind_their_filters() {
        let cursor = RoomCursor {
            created_at: 1234,
            id: Uuid::new_v4(),
        };
        let filters: BTreeMap<_, _> = [("mode".to_owned(), "ctf".to_owned())].into();
        let token = page_token(cursor, &filters, 1);
        assert_eq!(
            parse_page_token(&token, &filters, 1).expect("parse"),
            Some(cursor)
        );
        assert!(parse_page_token(&token, &filters, 2).is_err());
        assert!(parse_page_token(&token, &BTreeMap::new(), 1).is_err());
        assert_eq!(parse_page_token("", &filters, 1).expect("empty"), None);
    }

    proptest! {
        #[test]
        fn arbitrary_page_tokens_never_panic(s in "\\PC{0,300}") {
            let _ = parse_page_token(&s, &BTreeMap::new(), 0);
        }
    }
}
