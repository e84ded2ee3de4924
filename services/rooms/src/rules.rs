//! What valid room input is: capacities, ids, data keys and values, invitation lists, pages.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::RangeInclusive;

use rally_store::rooms::{MAX_DATA_KEYS, MAX_INVITED};
use uuid::Uuid;

use crate::RoomsError;

/// Allowed room capacity.
pub const CAPACITY: RangeInclusive<u32> = 2..=256;
/// Allowed data key length in bytes.
pub const KEY_BYTES: RangeInclusive<usize> = 1..=64;
/// Longest data value in bytes.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Most `data_equals` filters in one ListRooms.
pub const MAX_FILTERS: usize = 16;
/// ListRooms page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest ListRooms page.
pub const MAX_PAGE_SIZE: u32 = 100;

/// Parses a UUID field.
pub fn parse_id(field: &'static str, text: &str) -> Result<Uuid, RoomsError> {
    Uuid::parse_str(text).map_err(|_| RoomsError::invalid(field, "must be a UUID"))
}

/// Checks a capacity.
pub fn capacity(value: u32) -> Result<u32, RoomsError> {
    if CAPACITY.contains(&value) {
        Ok(value)
    } else {
        Err(RoomsError::invalid("capacity", "must be 2 to 256"))
    }
}

/// Checks one data key.
pub fn key(field: &'static str, key: &str) -> Result<(), RoomsError> {
    if !KEY_BYTES.contains(&key.len()) {
        return Err(RoomsError::invalid(
            field,
            format!("key {key:.64?} must be 1 to 64 bytes"),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(RoomsError::invalid(
            field,
            format!("key {key:?} has control characters"),
        ));
    }
    Ok(())
}

/// Checks key/value pairs (data to set, or filters) and returns them sorted.
pub fn data(
    field: &'static str,
    pairs: HashMap<String, String>,
    max_entries: usize,
) -> Result<BTreeMap<String, String>, RoomsError> {
    if pairs.len() > max_entries {
        return Err(RoomsError::invalid(
            field,
            format!("at most {max_entries} entries, got {}", pairs.len()),
        ));
    }
    for (k, v) in &pairs {
        key(field, k)?;
        if v.len() > MAX_VALUE_BYTES {
            return Err(RoomsError::invalid(
                field,
                format!("value of {k:?} is {} bytes; at most 4096", v.len()),
            ));
        }
    }
    Ok(pairs.into_iter().collect())
}

/// Checks a list of keys to delete.
pub fn keys(field: &'static str, list: Vec<String>) -> Result<BTreeSet<String>, RoomsError> {
    if list.len() > MAX_DATA_KEYS {
        return Err(RoomsError::invalid(field, "at most 64 entries"));
    }
    for k in &list {
        key(field, k)?;
    }
    Ok(list.into_iter().collect())
}

/// Parses a list of user ids (duplicates ignored).
pub fn users(field: &'static str, list: &[String]) -> Result<BTreeSet<Uuid>, RoomsError> {
    if list.len() > MAX_INVITED {
        return Err(RoomsError::invalid(field, "at most 256 entries"));
    }
    list.iter().map(|id| parse_id(field, id)).collect()
}

/// The page size to use for a requested one.
pub fn page_size(requested: u32) -> u32 {
    match requested {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn capacity_is_two_to_two_hundred_fifty_six() {
        assert!(capacity(1).is_err());
        assert!(capacity(2).is_ok());
        assert!(capacity(256).is_ok());
        assert!(capacity(257).is_err());
        assert!(capacity(0).is_err());
    }

    #[test]
    fn data_bounds_hold_in_bytes() {
        let ok: HashMap<_, _> = [("k".repeat(64), "v".repeat(4096))].into();
        assert!(data("data", ok, 64).is_ok());
        let long_key: HashMap<_, _> = [("k".repeat(65), String::new())].into();
        assert!(data("data", long_key, 64).is_err());
        let long_value: HashMap<_, _> = [("k".into(), "é".repeat(2049))].into();
        assert!(data("data", long_value, 64).is_err());
        let empty_key: HashMap<_, _> = [(String::new(), "v".into())].into();
        assert!(data("data", empty_key, 64).is_err());
        let control: HashMap<_, _> = [("a\nb".into(), "v".into())].into();
        assert!(data("data", control, 64).is_err());
        let many: HashMap<_, _> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(data("data", many, 64).is_err());
    }

    #[test]
    fn page_sizes_default_and_clamp() {
        assert_eq!(page_size(0), 20);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(1000), 100);
    }

    proptest! {
        #[test]
        fn arbitrary_keys_never_panic(s in "\\PC{0,100}") {
            let _ = key("data", &s);
            let _ = parse_id("room_id", &s);
        }
    }
}
