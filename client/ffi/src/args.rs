//! Arguments from C, checked: pointers for `NULL`, text for UTF-8 and length, buffers and
//! arrays for size, before anything else reads them.

use std::ffi::{c_char, c_void};

use crate::guard::{Failure, RALLY_ERROR_PACKET_TOO_LARGE};

/// The longest text argument read, in bytes (a C string with no NUL within this is refused
/// rather than read on).
pub const RALLY_MAX_TEXT: usize = 16 * 1024;
/// The most entries of a key/value or attribute array.
pub const RALLY_MAX_PAIRS: usize = 256;

/// A key and its value, both NUL-terminated UTF-8 (the Meta `ovrKeyValuePair`, text only).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rally_KeyValuePair {
    /// The key.
    pub key: *const c_char,
    /// Its value.
    pub value: *const c_char,
}

/// A named number, for matchmaking attributes such as `"skill"`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rally_NumericAttribute {
    /// The attribute's name, NUL-terminated UTF-8.
    pub name: *const c_char,
    /// Its value (finite).
    pub value: f64,
}

/// The UTF-8 text at `ptr`, up to its NUL.
///
/// # Safety
/// `ptr` is `NULL` or points to readable memory holding a NUL within [`RALLY_MAX_TEXT`] bytes,
/// or at least that many readable bytes.
pub(crate) unsafe fn text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    let mut len = 0;
    // SAFETY: the caller promises readable bytes up to the NUL or RALLY_MAX_TEXT, and the loop
    // stops at whichever comes first.
    while len < RALLY_MAX_TEXT && unsafe { *ptr.add(len) } != 0 {
        len += 1;
    }
    if len == RALLY_MAX_TEXT {
        return Err(Failure::invalid(format!(
            "{what} has no NUL within {RALLY_MAX_TEXT} bytes"
        )));
    }
    // SAFETY: the `len` bytes before the NUL were just read, so they are readable.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    std::str::from_utf8(bytes).map_err(|_| Failure::invalid(format!("{what} is not UTF-8")))
}

/// The `len` bytes at `ptr`, at most `max`. `NULL` is accepted only for `len == 0`.
///
/// # Safety
/// When `len` is at most `max` and `ptr` is not `NULL`, `ptr` points to `len` readable bytes
/// that nothing writes during the call.
pub(crate) unsafe fn bytes<'a>(
    ptr: *const c_void,
    len: usize,
    max: usize,
    what: &str,
) -> Result<&'a [u8], Failure> {
    if len > max {
        return Err(Failure::new(
            RALLY_ERROR_PACKET_TOO_LARGE,
            format!("{what} of {len} bytes is larger than the maximum of {max}"),
        ));
    }
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: non-null, and the caller promises `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

/// The `count` items at `ptr`, at most [`RALLY_MAX_PAIRS`]; `NULL` only for `count == 0`.
///
/// # Safety
/// When `count` is in bounds and `ptr` is not `NULL`, `ptr` points to `count` initialised items.
pub(crate) unsafe fn array<'a, T>(
    ptr: *const T,
    count: usize,
    what: &str,
) -> Result<&'a [T], Failure> {
    if count > RALLY_MAX_PAIRS {
        return Err(Failure::invalid(format!(
            "{what} has {count} entries, more than {RALLY_MAX_PAIRS}"
        )));
    }
    if count == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: non-null, and the caller promises `count` initialised items.
    Ok(unsafe { std::slice::from_raw_parts(ptr, count) })
}

/// Key/value pairs as owned text.
///
/// # Safety
/// As [`array`], and each pair's pointers as [`text`].
pub(crate) unsafe fn key_values(
    ptr: *const rally_KeyValuePair,
    count: usize,
    what: &str,
) -> Result<Vec<(String, String)>, Failure> {
    // SAFETY: forwarded from the caller.
    let pairs = unsafe { array(ptr, count, what)? };
    pairs
        .iter()
        .map(|pair| {
            // SAFETY: forwarded from the caller.
            let key = unsafe { text(pair.key, "a key")? };
            // SAFETY: forwarded from the caller.
            let value = unsafe { text(pair.value, "a value")? };
            Ok((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// Numeric attributes as owned pairs.
///
/// # Safety
/// As [`array`], and each name as [`text`].
pub(crate) unsafe fn numeric_attributes(
    ptr: *const rally_NumericAttribute,
    count: usize,
) -> Result<Vec<(String, f64)>, Failure> {
    // SAFETY: forwarded from the caller.
    let attributes = unsafe { array(ptr, count, "numeric_attributes")? };
    attributes
        .iter()
        .map(|attribute| {
            // SAFETY: forwarded from the caller.
            let name = unsafe { text(attribute.name, "an attribute name")? };
            Ok((name.to_owned(), attribute.value))
        })
        .collect()
}

/// The place an answer goes.
///
/// # Safety
/// `ptr` is `NULL` or valid for writing a `T`.
pub(crate) unsafe fn out<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: the caller promises a NULL or writable pointer; NULL is refused.
    unsafe { ptr.as_mut() }.ok_or_else(|| Failure::null(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_checked_for_null_utf8_and_length() {
        // SAFETY: NULL is allowed.
        assert!(unsafe { text(std::ptr::null(), "x") }.is_err());
        let bad = [0xffu8, 0];
        // SAFETY: a NUL-terminated buffer.
        assert!(unsafe { text(bad.as_ptr().cast(), "x") }.is_err());
        let long = vec![b'a'; RALLY_MAX_TEXT + 1];
        // SAFETY: RALLY_MAX_TEXT readable bytes, no NUL: refused, not read past.
        assert!(unsafe { text(long.as_ptr().cast(), "x") }.is_err());
        // SAFETY: a C string literal.
        assert_eq!(unsafe { text(c"héllo".as_ptr(), "x") }, Ok("héllo"));
    }

    #[test]
    fn buffers_are_bounded_and_null_only_when_empty() {
        // SAFETY: NULL with length 0 is allowed; a too-large length is refused before reading.
        unsafe {
            assert_eq!(bytes(std::ptr::null(), 0, 10, "p"), Ok(&[][..]));
            assert!(bytes(std::ptr::null(), 1, 10, "p").is_err());
            let data = [1u8; 4];
            assert_eq!(
                bytes(data.as_ptr().cast(), 11, 10, "p").map_err(|f| f.code),
                Err(RALLY_ERROR_PACKET_TOO_LARGE)
            );
        }
    }
}
