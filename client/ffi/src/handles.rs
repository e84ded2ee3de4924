//! The registry of live handles: every pointer Rally gives to C (a message, a packet, or an
//! object inside a message) is recorded with its kind until it is freed, and every handle C
//! passes back is looked up before it is read. A freed, foreign or wrongly typed pointer is
//! refused with `RALLY_ERROR_INVALID_HANDLE` instead of being read; freeing twice is refused the
//! same way.

use std::collections::HashSet;
use std::sync::{LazyLock, Mutex, MutexGuard};

use crate::guard::{Failure, RALLY_ERROR_INVALID_HANDLE};

/// What a live pointer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Message,
    Packet,
    Error,
    NetworkingPeer,
    PingResult,
    User,
    Room,
    Ticket,
}

/// Live handles by address and kind: an object and the first field inside it share an address
/// (a message and its payload, say), so the address alone does not say what a handle is.
static LIVE: LazyLock<Mutex<HashSet<(usize, Kind)>>> = LazyLock::new(Default::default);

fn live() -> MutexGuard<'static, HashSet<(usize, Kind)>> {
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Gives `object` to C as a live `kind`, with the objects inside it that C may also be handed
/// (`inner`: their addresses and kinds), which stay valid as long as it does.
pub(crate) fn give<T>(
    object: Box<T>,
    kind: Kind,
    inner: impl FnOnce(&T) -> Vec<(usize, Kind)>,
) -> *mut T {
    let children = inner(&object);
    let ptr = Box::into_raw(object);
    let mut live = live();
    live.insert((ptr as usize, kind));
    live.extend(children);
    ptr
}

/// Takes back and drops an object [`give`] gave as `kind`, with the objects inside it (`inner`,
/// as given); `false` when `ptr` is not a live `kind` (freed already, or foreign), and then
/// nothing is touched.
pub(crate) fn free<T>(
    ptr: *mut T,
    kind: Kind,
    inner: impl FnOnce(&T) -> Vec<(usize, Kind)>,
) -> bool {
    let mut live = live();
    if !live.contains(&(ptr as usize, kind)) {
        return false;
    }
    // SAFETY: `ptr` is recorded as a live `kind`, and only `give` records top-level kinds, with
    // a pointer from `Box::into_raw`; removing it below under the same lock means it is taken
    // back exactly once.
    let object = unsafe { Box::from_raw(ptr) };
    for child in inner(&object) {
        live.remove(&child);
    }
    live.remove(&(ptr as usize, kind));
    drop(live);
    drop(object);
    true
}

/// Gives the registry's memory back when no handle is live (at `rally_Shutdown`), so that a
/// leak checker sees nothing of it at exit.
pub(crate) fn trim() {
    let mut live = live();
    if live.is_empty() {
        live.shrink_to_fit();
    }
}

/// Reads the live `kind` at `ptr` with `read`, under the registry's lock (so it cannot be freed
/// meanwhile); a `NULL`, freed or foreign pointer is an error naming `what`.
pub(crate) fn with<T, R>(
    ptr: *const T,
    kind: Kind,
    what: &str,
    read: impl FnOnce(&T) -> R,
) -> Result<R, Failure> {
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    let live = live();
    if !live.contains(&(ptr as usize, kind)) {
        return Err(Failure::new(
            RALLY_ERROR_INVALID_HANDLE,
            format!("{what} is not a live {kind:?} (freed already, or not from Rally)"),
        ));
    }
    // SAFETY: `ptr` was registered as a live `kind`, which only ever records pointers to valid
    // objects of the matching type, and it stays valid while the lock is held (it is freed only
    // through `forget`/`forget_all`, which take the lock).
    let object = unsafe { &*ptr };
    Ok(read(object))
}
