//! The one place where presence rows and pairs become stored columns, and back: the column lists
//! both schemas share, the stored words of a pair's state, which user of a pair is stored as its
//! low one, and how many users one presence read may name.
//!
//! Ids are canonical hyphenated lowercase text, as everywhere ([`id_text`](super::room_codec::id_text)).
//! Rows are read as plain tuples ([`PresenceColumns`], [`PairColumns`]), which every driver can
//! decode, and turned into the trait's types here, so both backends decode them alike.

use uuid::Uuid;

use crate::StoreError;
use crate::backend::BoxError;
use crate::backend::room_codec::parse_id;
use crate::broker::{Pair, PairState, Presence, RelayAllocation};

/// The stored word of [`PairState::Pending`], which queries name literally (the schemas' checks
/// name it too).
pub const PENDING: &str = "pending";
/// The stored word of [`PairState::Agreed`].
pub const AGREED: &str = "agreed";

/// Most users one [`BrokerStore::presence`](crate::BrokerStore::presence) call may name.
pub const MAX_PRESENCE_USERS: usize = 1024;

/// The columns of a `broker_presence` row, in [`PresenceColumns`] order, for `SELECT` and
/// `RETURNING`.
pub const PRESENCE_COLUMNS: &str =
    "user_id, attachment_id, replica_id, announcement, attached_at, detached_at";

/// A `broker_presence` row: user, attachment, replica, announcement, attached at, detached at.
pub type PresenceColumns = (String, String, String, Vec<u8>, i64, Option<i64>);

/// The columns of a `broker_pairs` row, in [`PairColumns`] order, for `SELECT` and `RETURNING`.
pub const PAIR_COLUMNS: &str =
    "user_low, user_high, state, requester, relay_allocation, relay_expires_at, created_at";

/// A `broker_pairs` row: low user, high user, state word, requester, relay allocation, relay
/// expiry, created at.
pub type PairColumns = (
    String,
    String,
    String,
    Option<String>,
    Option<Vec<u8>>,
    Option<i64>,
    i64,
);

/// The two users of a pair as it is stored: the one whose id sorts first (by [`Uuid`]'s order,
/// which is byte order, which is also the order of the ids' canonical lowercase text), then the
/// other. That is [`Pair::low`] and [`Pair::high`].
pub fn ordered(a: Uuid, b: Uuid) -> (Uuid, Uuid) {
    if a <= b { (a, b) } else { (b, a) }
}

/// Refuses a presence read naming more than [`MAX_PRESENCE_USERS`] users.
pub fn check_presence_users(users: &[Uuid]) -> Result<(), StoreError> {
    if users.len() > MAX_PRESENCE_USERS {
        return Err(StoreError::Backend(
            format!(
                "presence of {} users asked for; at most {MAX_PRESENCE_USERS} per call",
                users.len()
            )
            .into(),
        ));
    }
    Ok(())
}

/// Refuses a connection request from a user to itself.
pub fn check_distinct(from: Uuid, to: Uuid) -> Result<(), StoreError> {
    if from == to {
        return Err(StoreError::Backend(
            format!("user {from} cannot connect to itself").into(),
        ));
    }
    Ok(())
}

/// The presence a stored row describes.
pub fn decode_presence(columns: PresenceColumns) -> Result<Presence, BoxError> {
    let (user, attachment_id, replica_id, announcement, attached_at, detached_at) = columns;
    Ok(Presence {
        user: parse_id(&user)?,
        attachment_id: parse_id(&attachment_id)?,
        replica_id: parse_id(&replica_id)?,
        announcement,
        attached_at,
        detached_at,
    })
}

/// The pair a stored row describes.
pub fn decode_pair(columns: PairColumns) -> Result<Pair, BoxError> {
    let (low, high, state, requester, relay_allocation, relay_expires_at, created_at) = columns;
    let state = match (state.as_str(), requester) {
        (PENDING, Some(requester)) => PairState::Pending {
            requester: parse_id(&requester)?,
        },
        (AGREED, None) => PairState::Agreed,
        (state, requester) => {
            return Err(format!("a pair {state:?} with requester {requester:?}").into());
        }
    };
    let relay = match (relay_allocation, relay_expires_at) {
        (Some(id), Some(expires_at)) => Some(RelayAllocation {
            id: <[u8; 16]>::try_from(id.as_slice())
                .map_err(|_| format!("a relay allocation of {} bytes", id.len()))?,
            expires_at,
        }),
        (None, None) => None,
        _ => return Err("a relay allocation without its expiry, or the reverse".into()),
    };
    Ok(Pair {
        low: parse_id(&low)?,
        high: parse_id(&high)?,
        state,
        relay,
        created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::room_codec::id_text;

    fn pair_columns(state: &str, requester: Option<Uuid>) -> PairColumns {
        let (low, high) = ordered(Uuid::new_v4(), Uuid::new_v4());
        (
            id_text(low),
            id_text(high),
            state.to_owned(),
            requester.map(id_text),
            None,
            None,
            7,
        )
    }

    #[test]
    fn the_low_user_sorts_first_as_uuid_and_as_stored_text() {
        let mut ids: Vec<Uuid> = (0..2000).map(|_| Uuid::new_v4()).collect();
        ids.extend([
            Uuid::nil(),
            Uuid::max(),
            Uuid::from_u128(0x0900_0000_0000_0000_0000_0000_0000_0000),
            Uuid::from_u128(0x0a00_0000_0000_0000_0000_0000_0000_0000),
            Uuid::from_u128(0x0000_0000_0000_0000_0000_0000_0000_0009),
            Uuid::from_u128(0x0000_0000_0000_0000_0000_0000_0000_000a),
        ]);
        for window in ids.windows(2) {
            let (low, high) = ordered(window[0], window[1]);
            assert_eq!(ordered(window[1], window[0]), (low, high));
            assert!(low <= high);
            assert!(low.as_bytes() <= high.as_bytes());
            assert!(
                id_text(low) <= id_text(high),
                "{low} sorts after {high} as text"
            );
        }
    }

    #[test]
    fn pairs_decode_their_state_and_relay() {
        let requester = Uuid::new_v4();
        let pending = decode_pair(pair_columns(PENDING, Some(requester))).expect("decodes");
        assert_eq!(pending.state, PairState::Pending { requester });
        assert!(pending.low < pending.high);
        assert_eq!((pending.relay, pending.created_at), (None, 7));

        let mut agreed = pair_columns(AGREED, None);
        agreed.4 = Some(vec![3; 16]);
        agreed.5 = Some(99);
        let agreed = decode_pair(agreed).expect("decodes");
        assert_eq!(agreed.state, PairState::Agreed);
        assert_eq!(
            agreed.relay,
            Some(RelayAllocation {
                id: [3; 16],
                expires_at: 99
            })
        );
    }

    #[test]
    fn inconsistent_pairs_are_errors() {
        assert!(decode_pair(pair_columns(PENDING, None)).is_err());
        assert!(decode_pair(pair_columns(AGREED, Some(Uuid::new_v4()))).is_err());
        assert!(decode_pair(pair_columns("accepted", None)).is_err());
        let mut short = pair_columns(AGREED, None);
        short.4 = Some(vec![3; 15]);
        short.5 = Some(99);
        assert!(decode_pair(short).is_err());
        let mut no_expiry = pair_columns(AGREED, None);
        no_expiry.4 = Some(vec![3; 16]);
        assert!(decode_pair(no_expiry).is_err());
    }

    #[test]
    fn presence_round_trips_and_bad_ids_are_errors() {
        let presence = Presence {
            user: Uuid::new_v4(),
            attachment_id: Uuid::new_v4(),
            replica_id: Uuid::new_v4(),
            announcement: vec![1, 2, 3],
            attached_at: 5,
            detached_at: Some(6),
        };
        let columns = (
            id_text(presence.user),
            id_text(presence.attachment_id),
            id_text(presence.replica_id),
            presence.announcement.clone(),
            presence.attached_at,
            presence.detached_at,
        );
        assert_eq!(decode_presence(columns).expect("decodes"), presence);
        let broken = (
            "x".to_owned(),
            String::new(),
            String::new(),
            Vec::new(),
            0,
            None,
        );
        assert!(decode_presence(broken).is_err());
    }

    #[test]
    fn presence_reads_are_bounded_and_self_connections_refused() {
        let users = vec![Uuid::nil(); MAX_PRESENCE_USERS];
        assert!(check_presence_users(&users).is_ok());
        let too_many = vec![Uuid::nil(); MAX_PRESENCE_USERS + 1];
        assert!(matches!(
            check_presence_users(&too_many),
            Err(StoreError::Backend(_))
        ));
        let user = Uuid::new_v4();
        assert!(check_distinct(user, user).is_err());
        assert!(check_distinct(user, Uuid::new_v4()).is_ok());
    }
}
