//! What a data update really changes in a room: the `DataChanged` event's content, checked
//! against the bounds on the resulting room. Pure: no database.

use std::collections::{BTreeMap, BTreeSet};

use crate::rooms::{DataUpdate, MAX_DATA_KEYS, MAX_INVITED, Room, RoomError, RoomEventKind};
use uuid::Uuid;

/// What an update really changes: `DataChanged`'s fields.
#[derive(Debug, PartialEq, Eq)]
pub struct DataChanges {
    /// Keys set to a new value.
    pub set: BTreeMap<String, String>,
    /// Keys that existed and are deleted.
    pub deleted: BTreeSet<String>,
    /// Users newly invited.
    pub invited: BTreeSet<Uuid>,
    /// Users no longer invited.
    pub uninvited: BTreeSet<Uuid>,
}

impl DataChanges {
    /// The `DataChanged` event of these changes.
    pub fn into_event(self) -> RoomEventKind {
        RoomEventKind::DataChanged {
            set: self.set,
            deleted: self.deleted,
            invited: self.invited,
            uninvited: self.uninvited,
        }
    }
}

/// What `update` really changes in `room`, or `None` when it changes nothing; refused when the
/// resulting room would exceed the bounds.
pub fn data_change(room: &Room, update: &DataUpdate) -> Result<Option<DataChanges>, RoomError> {
    let mut data = room.data.clone();
    data.extend(update.set.clone());
    data.retain(|key, _| !update.delete.contains(key));
    if data.len() > MAX_DATA_KEYS {
        return Err(RoomError::TooManyKeys(data.len()));
    }
    let mut invited = room.invited.clone();
    invited.extend(&update.invite);
    invited.retain(|user| !update.uninvite.contains(user));
    if invited.len() > MAX_INVITED {
        return Err(RoomError::TooManyInvited(invited.len()));
    }

    let changes = DataChanges {
        set: data
            .iter()
            .filter(|(key, value)| room.data.get(*key) != Some(*value))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        deleted: room
            .data
            .keys()
            .filter(|key| !data.contains_key(*key))
            .cloned()
            .collect(),
        invited: invited.difference(&room.invited).copied().collect(),
        uninvited: room.invited.difference(&invited).copied().collect(),
    };
    let nothing = changes.set.is_empty()
        && changes.deleted.is_empty()
        && changes.invited.is_empty()
        && changes.uninvited.is_empty();
    Ok((!nothing).then_some(changes))
}

#[cfg(test)]
mod tests {
    use crate::rooms::{JoinPolicy, Visibility};

    use super::*;

    fn room(data: &[(&str, &str)], invited: &[Uuid]) -> Room {
        Room {
            id: Uuid::new_v4(),
            owner: Uuid::new_v4(),
            members: Vec::new(),
            capacity: 8,
            visibility: Visibility::Public,
            join_policy: JoinPolicy::Open,
            data: data
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
            invited: invited.iter().copied().collect(),
            created_at: 0,
            sequence: 0,
            closed_at: None,
        }
    }

    #[test]
    fn only_real_changes_are_listed() {
        let (kept, gone, new) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let before = room(&[("a", "1"), ("b", "2"), ("c", "3")], &[kept, gone]);
        let update = DataUpdate {
            set: [("a", "1"), ("b", "20"), ("d", "4")]
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .into(),
            delete: ["c".to_owned(), "absent".to_owned()].into(),
            invite: [kept, new].into(),
            uninvite: [gone, Uuid::new_v4()].into(),
        };
        let change = data_change(&before, &update).expect("within bounds");
        let expected = DataChanges {
            set: [("b", "20"), ("d", "4")]
                .map(|(key, value)| (key.to_owned(), value.to_owned()))
                .into(),
            deleted: ["c".to_owned()].into(),
            invited: [new].into(),
            uninvited: [gone].into(),
        };
        assert_eq!(change, Some(expected));
    }

    #[test]
    fn an_update_changing_nothing_has_no_event() {
        let kept = Uuid::new_v4();
        let before = room(&[("a", "1")], &[kept]);
        let update = DataUpdate {
            set: [("a".to_owned(), "1".to_owned())].into(),
            delete: ["absent".to_owned()].into(),
            invite: [kept].into(),
            uninvite: [Uuid::new_v4()].into(),
        };
        assert_eq!(data_change(&before, &update).expect("within bounds"), None);
    }

    #[test]
    fn bounds_are_checked_on_the_result() {
        let full: Vec<(String, String)> = (0..MAX_DATA_KEYS)
            .map(|key| (key.to_string(), String::new()))
            .collect();
        let mut before = room(&[], &[]);
        before.data = full.into_iter().collect();
        let swap = DataUpdate {
            set: [("new".to_owned(), String::new())].into(),
            delete: ["0".to_owned()].into(),
            ..DataUpdate::default()
        };
        assert!(
            data_change(&before, &swap).is_ok(),
            "64 keys after the change"
        );
        let grow = DataUpdate {
            set: [("new".to_owned(), String::new())].into(),
            ..DataUpdate::default()
        };
        assert!(matches!(
            data_change(&before, &grow),
            Err(RoomError::TooManyKeys(65))
        ));
        let invite = DataUpdate {
            invite: (0..=MAX_INVITED).map(|_| Uuid::new_v4()).collect(),
            ..DataUpdate::default()
        };
        assert!(matches!(
            data_change(&room(&[], &[]), &invite),
            Err(RoomError::TooManyInvited(257))
        ));
    }
}
