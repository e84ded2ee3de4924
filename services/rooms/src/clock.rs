//! The wall clock, read in one place: stores take time as an argument, handlers pass this.
//! (The broker reads it here too.)

use std::time::{SystemTime, UNIX_EPOCH};

use rally_store::UnixMillis;

/// Milliseconds since the Unix epoch now.
pub fn now() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Unix milliseconds as a protobuf timestamp.
pub fn timestamp(millis: UnixMillis) -> prost_types::Timestamp {
    let nanos = i32::try_from(millis.rem_euclid(1000) * 1_000_000).unwrap_or(0);
    prost_types::Timestamp {
        seconds: millis.div_euclid(1000),
        nanos,
    }
}
