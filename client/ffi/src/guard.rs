//! Errors at the boundary: result codes, the calling thread's last error, and panics caught
//! before they reach C.
//!
//! Every `extern "C"` function runs its body through [`call`]: a failure or a panic becomes the
//! function's error value (a negative [`rally_Result`], `false`, `0` or `NULL`) and is kept as
//! the thread's last error for [`rally_GetLastError`]. No panic crosses the boundary.

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// A result code: `RALLY_OK` (0) or one of the negative `RALLY_ERROR_*` codes.
pub type rally_Result = i32;

/// Success.
pub const RALLY_OK: rally_Result = 0;
/// A pointer argument was `NULL`.
pub const RALLY_ERROR_NULL_POINTER: rally_Result = -1;
/// An argument is outside what the call accepts (bad text, unknown option, nil or own user id,
/// a value out of range); the last error says which.
pub const RALLY_ERROR_INVALID_ARGUMENT: rally_Result = -2;
/// `rally_Init` has not been called (or `rally_Shutdown` has).
pub const RALLY_ERROR_NOT_INITIALIZED: rally_Result = -3;
/// `rally_Init` was called twice without `rally_Shutdown` in between.
pub const RALLY_ERROR_ALREADY_INITIALIZED: rally_Result = -4;
/// The call needs a signed-in user (a successful `rally_User_Login*` first).
pub const RALLY_ERROR_NOT_LOGGED_IN: rally_Result = -5;
/// The library panicked; the call did nothing (a bug in Rally: please report it).
pub const RALLY_ERROR_PANIC: rally_Result = -6;
/// A packet is larger than its send policy allows (`RALLY_MAX_UNRELIABLE_PACKET`,
/// `RALLY_MAX_RELIABLE_PACKET`).
pub const RALLY_ERROR_PACKET_TOO_LARGE: rally_Result = -7;
/// The reliable send buffer toward that peer is full; send again later.
pub const RALLY_ERROR_SEND_BUFFER_FULL: rally_Result = -8;
/// There is no open connection to that peer.
pub const RALLY_ERROR_NOT_CONNECTED: rally_Result = -9;
/// The call needs the user to be in a room.
pub const RALLY_ERROR_NOT_IN_ROOM: rally_Result = -10;
/// `rallyd` refused the call; `rally_Error_GetRpcStatus` gives the gRPC status code.
pub const RALLY_ERROR_SERVER_REFUSED: rally_Result = -11;
/// `rallyd` could not be reached; worth retrying later.
pub const RALLY_ERROR_UNREACHABLE: rally_Result = -12;
/// The connection broker refused the request or is not attached right now.
pub const RALLY_ERROR_BROKER: rally_Result = -13;
/// The session ended (logged out, or its refresh token was refused); sign in again.
pub const RALLY_ERROR_SESSION_ENDED: rally_Result = -14;
/// The call did not complete in time.
pub const RALLY_ERROR_TIMEOUT: rally_Result = -15;
/// The object was shut down or closed.
pub const RALLY_ERROR_CLOSED: rally_Result = -16;
/// Anything else (transport failures, malformed answers); the last error says what.
pub const RALLY_ERROR_INTERNAL: rally_Result = -17;
/// A user is already signed in (or signing in); call `rally_User_Logout` first.
pub const RALLY_ERROR_ALREADY_LOGGED_IN: rally_Result = -18;
/// A handle is not a live object of the expected kind (already freed, or not from Rally).
pub const RALLY_ERROR_INVALID_HANDLE: rally_Result = -19;
/// A connection attempt failed (in a `rally_MessageType_Notification_Networking_ConnectionFailed`
/// message); the error message says why.
pub const RALLY_ERROR_CONNECT_FAILED: rally_Result = -20;

/// What went wrong in a call: a code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) code: rally_Result,
    /// The gRPC status code when `rallyd` refused the call, else 0.
    pub(crate) rpc_status: i32,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: rally_Result, message: impl Into<String>) -> Self {
        Self {
            code,
            rpc_status: 0,
            message: message.into(),
        }
    }

    pub(crate) fn null(what: &str) -> Self {
        Self::new(RALLY_ERROR_NULL_POINTER, format!("{what} is NULL"))
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(RALLY_ERROR_INVALID_ARGUMENT, message)
    }

    fn panic(payload: &(dyn std::any::Any + Send)) -> Self {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        Self::new(RALLY_ERROR_PANIC, format!("rally panicked: {what}"))
    }
}

impl From<rally_client::Error> for Failure {
    fn from(error: rally_client::Error) -> Self {
        use rally_client::Error as E;
        let message = error.to_string();
        let code = match &error {
            E::InvalidUrl { .. } | E::InvalidArgument(_) => RALLY_ERROR_INVALID_ARGUMENT,
            E::Unreachable(_) => RALLY_ERROR_UNREACHABLE,
            E::Rpc { code, .. } => {
                return Self {
                    code: RALLY_ERROR_SERVER_REFUSED,
                    rpc_status: *code as i32,
                    message,
                };
            }
            E::Broker { .. } | E::BrokerUnavailable | E::Superseded => RALLY_ERROR_BROKER,
            E::SessionEnded => RALLY_ERROR_SESSION_ENDED,
            E::NotInRoom => RALLY_ERROR_NOT_IN_ROOM,
            E::PacketTooLarge { .. } => RALLY_ERROR_PACKET_TOO_LARGE,
            E::SendBufferFull => RALLY_ERROR_SEND_BUFFER_FULL,
            E::NotConnected => RALLY_ERROR_NOT_CONNECTED,
            E::Closed => RALLY_ERROR_CLOSED,
            _ => RALLY_ERROR_INTERNAL,
        };
        Self::new(code, message)
    }
}

thread_local! {
    static LAST_ERROR: RefCell<Option<(rally_Result, CString)>> = const { RefCell::new(None) };
}

/// Text for C: the string up to its first NUL (C strings cannot hold one).
pub(crate) fn c_text(text: &str) -> CString {
    let end = text.find('\0').unwrap_or(text.len());
    CString::new(&text[..end]).unwrap_or_default()
}

fn set_last_error(failure: &Failure) {
    let text = c_text(&format!("{} ({})", failure.message, failure.code));
    LAST_ERROR.with(|last| *last.borrow_mut() = Some((failure.code, text)));
}

/// Runs one C call's body: clears the thread's last error, catches a panic, and keeps a failure
/// (or the panic) as the thread's last error. `Err` carries the failure's code.
pub(crate) fn call<T>(body: impl FnOnce() -> Result<T, Failure>) -> Result<T, rally_Result> {
    LAST_ERROR.with(|last| last.borrow_mut().take());
    let failure = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(value)) => return Ok(value),
        Ok(Err(failure)) => failure,
        Err(payload) => Failure::panic(payload.as_ref()),
    };
    set_last_error(&failure);
    Err(failure.code)
}

/// [`call`] for functions that answer a [`rally_Result`].
pub(crate) fn call_result(body: impl FnOnce() -> Result<(), Failure>) -> rally_Result {
    call(body).map_or_else(|code| code, |()| RALLY_OK)
}

/// The last error of a `rally_*` call made on this thread, for people (with its code in
/// parentheses); an empty string when that call succeeded.
///
/// Ownership: the string belongs to Rally and stays valid until the next `rally_*` call on this
/// thread; copy it to keep it. Thread safety: each thread has its own last error.
#[unsafe(no_mangle)]
pub extern "C" fn rally_GetLastError() -> *const c_char {
    LAST_ERROR.with(|last| match last.borrow().as_ref() {
        Some((_, text)) => text.as_ptr(),
        None => c"".as_ptr(),
    })
}

/// The code of the last error of a `rally_*` call made on this thread (a negative
/// `RALLY_ERROR_*`), or `RALLY_OK` when that call succeeded: why a call that answers `false`,
/// `0` or `NULL` failed. Thread safety: each thread has its own last error.
#[unsafe(no_mangle)]
pub extern "C" fn rally_GetLastErrorCode() -> rally_Result {
    LAST_ERROR.with(|last| last.borrow().as_ref().map_or(RALLY_OK, |(code, _)| *code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_code_and_the_last_error() {
        let answer: Result<(), _> = call(|| panic!("boom"));
        assert_eq!(answer, Err(RALLY_ERROR_PANIC));
        // SAFETY: rally_GetLastError returns a NUL-terminated string valid until the next call.
        let text = unsafe { std::ffi::CStr::from_ptr(rally_GetLastError()) };
        assert!(text.to_string_lossy().contains("boom"));
        assert_eq!(call_result(|| Ok(())), RALLY_OK);
        // SAFETY: as above.
        let text = unsafe { std::ffi::CStr::from_ptr(rally_GetLastError()) };
        assert!(text.is_empty());
    }

    #[test]
    fn client_errors_keep_their_meaning() {
        let refused = Failure::from(rally_client::Error::Rpc {
            code: tonic::Code::NotFound,
            message: "no such room".into(),
        });
        assert_eq!(refused.code, RALLY_ERROR_SERVER_REFUSED);
        assert_eq!(refused.rpc_status, 5);
        assert_eq!(
            Failure::from(rally_client::Error::SendBufferFull).code,
            RALLY_ERROR_SEND_BUFFER_FULL
        );
    }

    #[test]
    fn text_for_c_stops_at_a_nul() {
        assert_eq!(c_text("ab\0cd").as_bytes(), b"ab");
    }
}
