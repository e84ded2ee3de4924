//! The wall clock, read in one place: stores take time as an argument, handlers pass this.

use std::time::{SystemTime, UNIX_EPOCH};

use rally_store::UnixMillis;

/// Milliseconds since the Unix epoch now.
pub(crate) fn now() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
