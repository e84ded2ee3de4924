//! `rally_ID`: user, room and ticket ids. Rally's ids are UUIDs, where Meta's `ovrID` was a
//! `uint64_t`; a 16-byte struct passed by value keeps calls as cheap and as simple.

use std::ffi::c_char;

use uuid::Uuid;

use crate::args;
use crate::guard::{Failure, call};

/// The bytes `rally_ID_ToString` writes, its NUL included (36 characters and the NUL).
pub const RALLY_ID_STRING_SIZE: usize = 37;

/// An id (a UUID, big-endian bytes as RFC 9562 writes them). All zeros is the nil id: "none".
/// Compare two with `rally_ID_Equals` (or `memcmp`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct rally_ID {
    /// The UUID's 16 bytes.
    pub bytes: [u8; 16],
}

impl From<Uuid> for rally_ID {
    fn from(id: Uuid) -> Self {
        Self {
            bytes: *id.as_bytes(),
        }
    }
}

impl From<rally_ID> for Uuid {
    fn from(id: rally_ID) -> Self {
        Uuid::from_bytes(id.bytes)
    }
}

impl rally_ID {
    /// The id of a server string (nil when it is not a UUID).
    pub(crate) fn parse(text: &str) -> Self {
        Uuid::try_parse(text).map(Self::from).unwrap_or_default()
    }

    /// A non-nil id, or an error naming `what`.
    pub(crate) fn require(self, what: &str) -> Result<Uuid, Failure> {
        let id = Uuid::from(self);
        if id.is_nil() {
            return Err(Failure::invalid(format!("{what} is the nil id")));
        }
        Ok(id)
    }
}

/// Writes `id` as text (`"6f9619ff-8b86-d011-b42d-00cf4fc964ff"`, lower case, NUL-terminated)
/// into `buffer` of `buffer_size` bytes, which must be at least `RALLY_ID_STRING_SIZE`. Returns
/// the characters written (36), or 0 when `buffer` is `NULL` or too small.
///
/// # Safety
/// `buffer` is `NULL` or valid for writing `buffer_size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_ID_ToString(
    id: rally_ID,
    buffer: *mut c_char,
    buffer_size: usize,
) -> usize {
    call(|| {
        if buffer.is_null() {
            return Err(Failure::null("buffer"));
        }
        if buffer_size < RALLY_ID_STRING_SIZE {
            return Err(Failure::invalid(format!(
                "buffer_size {buffer_size} is smaller than RALLY_ID_STRING_SIZE"
            )));
        }
        let text = Uuid::from(id).hyphenated().to_string();
        // SAFETY: `buffer` is non-null and writable for `buffer_size` >= 37 bytes; the text is
        // 36 ASCII bytes, then the NUL.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), buffer.cast::<u8>(), text.len());
            *buffer.add(text.len()) = 0;
        }
        Ok(text.len())
    })
    .unwrap_or(0)
}

/// Reads an id from text (a UUID in any of its usual forms) into `*out`. Returns `false` (and
/// leaves `*out` alone) when either pointer is `NULL` or the text is not a UUID.
///
/// # Safety
/// `text` is `NULL` or a NUL-terminated string; `out` is `NULL` or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rally_ID_FromString(text: *const c_char, out: *mut rally_ID) -> bool {
    call(|| {
        // SAFETY: forwarded from the caller.
        let text = unsafe { args::text(text, "text")? };
        // SAFETY: forwarded from the caller.
        let out = unsafe { args::out(out, "out")? };
        let id = Uuid::try_parse(text)
            .map_err(|_| Failure::invalid(format!("{text:?} is not a UUID")))?;
        *out = id.into();
        Ok(true)
    })
    .unwrap_or(false)
}

/// Whether `id` is the nil id (all zeros: "no id").
#[unsafe(no_mangle)]
pub extern "C" fn rally_ID_IsNil(id: rally_ID) -> bool {
    id.bytes == [0; 16]
}

/// Whether two ids are the same.
#[unsafe(no_mangle)]
pub extern "C" fn rally_ID_Equals(a: rally_ID, b: rally_ID) -> bool {
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text() {
        let id = rally_ID::from(Uuid::new_v4());
        let mut buffer = [0 as c_char; RALLY_ID_STRING_SIZE];
        // SAFETY: a buffer of RALLY_ID_STRING_SIZE bytes; a C string literal and a local `out`.
        unsafe {
            assert_eq!(rally_ID_ToString(id, buffer.as_mut_ptr(), buffer.len()), 36);
            let mut back = rally_ID::default();
            assert!(rally_ID_FromString(buffer.as_ptr(), &mut back));
            assert!(rally_ID_Equals(id, back));
            assert_eq!(rally_ID_ToString(id, buffer.as_mut_ptr(), 36), 0);
            assert!(!rally_ID_FromString(c"not a uuid".as_ptr(), &mut back));
            assert!(!rally_ID_FromString(
                c"not a uuid".as_ptr(),
                std::ptr::null_mut()
            ));
        }
        assert!(rally_ID_IsNil(rally_ID::default()));
        assert!(!rally_ID_IsNil(id));
    }
}
