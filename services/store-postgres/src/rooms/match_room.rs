//! Creating the rooms of a round's matches: for each, what `create_room` by the match's first user
//! followed by `join_room` of each other user does, in the round's transaction and with the same
//! code, so a match's room gets the same events, hand-overs and closings as rooms made by hand.
//!
//! Each room is private and invite-only with every matched user invited, has no data, and holds
//! the users in the given order (the first owns it, the others join in turn).

use std::collections::{BTreeMap, BTreeSet};

use rally_store::rooms::{JoinPolicy, NewRoom, RoomChange, Visibility};
use sqlx::PgConnection;
use uuid::Uuid;

use super::changes::{self, Clock};
use super::codec::id_text;
use super::reads::corrupt;
use crate::retry::Abort;

/// A match's room to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewMatchRoom {
    /// The new room's id.
    pub(crate) id: Uuid,
    /// The matched users, oldest ticket first; distinct, and at most `capacity` of them.
    pub(crate) users: Vec<Uuid>,
    /// The room's capacity.
    pub(crate) capacity: u32,
}

/// Creates each room of `rooms` with its users joined, moving them out of their current rooms;
/// one [`RoomChange`] per room, with every event appended in every room touched. Its `left_room`
/// is `None`: a match may empty several rooms, whose `MemberLeft` events are among the events.
/// The users of different rooms must differ.
///
/// First locks every room a matched user is in, all at once and in id order as every room change
/// does, and checks under the locks that nobody moved meanwhile (else [`Abort::Moved`]: retry the
/// attempt); the per-user changes that follow then only take locks already held (and that of
/// their new room, which nobody else sees yet), so a round cannot deadlock with room changes or
/// with other rounds. A user in no room is arbitrated as in any change: a concurrent move into a
/// room meets this one at the unique key on `room_members.user_id`.
pub(crate) async fn create_match_rooms(
    conn: &mut PgConnection,
    rooms: &[NewMatchRoom],
    clock: Clock,
) -> Result<Vec<RoomChange>, Abort> {
    let users: Vec<String> = rooms
        .iter()
        .flat_map(|room| &room.users)
        .map(|user| id_text(*user))
        .collect();
    let users: Vec<&str> = users.iter().map(String::as_str).collect();
    changes::locked_current_rooms(conn, &users, None).await?;
    let mut created = Vec::with_capacity(rooms.len());
    for room in rooms {
        created.push(create_match_room(conn, room, clock).await?);
    }
    Ok(created)
}

async fn create_match_room(
    conn: &mut PgConnection,
    room: &NewMatchRoom,
    clock: Clock,
) -> Result<RoomChange, Abort> {
    let (&owner, guests) = room
        .users
        .split_first()
        .ok_or_else(|| corrupt("a match without users"))?;
    let spec = NewRoom {
        id: room.id,
        owner,
        capacity: room.capacity,
        visibility: Visibility::Private,
        join_policy: JoinPolicy::InviteOnly,
        data: BTreeMap::new(),
        invited: room.users.iter().copied().collect::<BTreeSet<_>>(),
    };
    let mut change = changes::create_room(conn, spec, clock).await?;
    for &guest in guests {
        let joined = changes::join_room(conn, room.id, guest, clock).await?;
        change.events.extend(joined.events);
        change.room = joined.room;
    }
    change.left_room = None;
    Ok(change)
}
