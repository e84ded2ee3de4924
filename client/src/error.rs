//! The SDK's one error type, [`Error`], and its [`Result`].
//!
//! Every fallible call of the SDK, control plane (sign-in, rooms, matchmaking, the broker link)
//! and data plane alike, answers with this enum, so a game matches on one type. It is not the
//! place for the server's errors: those are `tonic::Status` codes and broker
//! [`ErrorCode`]s, carried here unchanged.

use rally_proto::broker::v1::ErrorCode;

/// What can go wrong in the SDK.
///
/// It is `Clone` and comparable, so a test or a game can match on it and pass it on.
///
/// ```
/// use rally_client::Error;
///
/// fn retry_later(error: &Error) -> bool {
///     matches!(
///         error,
///         Error::Unreachable(_) | Error::BrokerUnavailable | Error::SendBufferFull
///     ) || matches!(error, Error::Rpc { code: tonic::Code::Unavailable, .. })
/// }
/// assert!(retry_later(&Error::BrokerUnavailable));
/// assert!(!retry_later(&Error::SessionEnded));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server URL is not a valid endpoint.
    #[error("invalid server URL {url}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why it is invalid.
        reason: String,
    },
    /// `rallyd` could not be reached (connection refused or lost, TLS, HTTP/2): nothing was
    /// refused, the call did not get through. Worth retrying later.
    #[error("cannot reach rallyd: {0}")]
    Unreachable(String),
    /// The TLS handshake with `rallyd` failed: its certificate was refused (unknown issuer,
    /// expired, issued for another name, not the pinned one) or it does not speak TLS. Not
    /// worth retrying until the configuration or the server's certificate changes.
    #[error("TLS with rallyd failed: {0}")]
    Tls(String),
    /// `rallyd` refused a call with a gRPC status (see the `.proto` files for what each RPC
    /// answers).
    #[error("rallyd refused the call ({code:?}): {message}")]
    Rpc {
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message, for people.
        message: String,
    },
    /// The broker answered a request on the Attach stream with an Error.
    #[error("the broker refused the request ({code:?}): {message}")]
    Broker {
        /// What went wrong, for programs.
        code: ErrorCode,
        /// What went wrong, for people.
        message: String,
    },
    /// The broker link is not attached right now (the stream ended, or the request got no answer
    /// in time). The link re-attaches by itself; the request is not retried: send it again after
    /// the next `Attached` event.
    #[error("not attached to the broker right now; the link re-attaches by itself")]
    BrokerUnavailable,
    /// A newer broker attachment of the same user replaced this one; this link is over.
    #[error("another attachment of this user replaced this one")]
    Superseded,
    /// The session is over: logged out, or its refresh token was refused for good. Sign in
    /// again.
    #[error("the session has ended; sign in again")]
    SessionEnded,
    /// An argument is outside what the SDK or the contract accepts.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The call needs the user to be in a room.
    #[error("not in a room")]
    NotInRoom,
    /// A packet is larger than the largest one the data plane carries.
    #[error("a packet of {size} bytes is larger than the maximum of {max}")]
    PacketTooLarge {
        /// The packet's size in bytes.
        size: usize,
        /// The largest size allowed.
        max: usize,
    },
    /// The send buffer toward a peer is full; send again later.
    #[error("the send buffer is full")]
    SendBufferFull,
    /// There is no open connection to that peer.
    #[error("not connected to that peer")]
    NotConnected,
    /// The peer-to-peer transport failed.
    #[error("transport error: {0}")]
    Transport(String),
    /// The object was shut down or closed; nothing more can be done with it.
    #[error("closed")]
    Closed,
    /// `rallyd` answered with something this SDK cannot use (a missing or malformed field).
    #[error("rallyd sent an answer this SDK cannot use: {0}")]
    Protocol(String),
}

/// The SDK's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The error for a malformed answer: `what` says which field.
    pub(crate) fn protocol(what: impl Into<String>) -> Self {
        Self::Protocol(what.into())
    }
}

impl From<tonic::Status> for Error {
    /// A status the server sent becomes [`Error::Rpc`]; one tonic made up locally because the
    /// call did not get through (it carries the transport error as its source) becomes
    /// [`Error::Unreachable`].
    fn from(status: tonic::Status) -> Self {
        if std::error::Error::source(&status).is_some() {
            Self::Unreachable(status.message().to_owned())
        } else {
            Self::Rpc {
                code: status.code(),
                message: status.message().to_owned(),
            }
        }
    }
}

impl From<tonic::transport::Error> for Error {
    fn from(error: tonic::transport::Error) -> Self {
        // The transport error's own text is generic ("transport error"); its source says why.
        let mut text = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            if let Some(crate::tls::ConnectFailure::Tls(tls)) =
                cause.downcast_ref::<crate::tls::ConnectFailure>()
            {
                return Self::Tls(tls.to_string());
            }
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::Unreachable(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_from_the_server_is_a_refused_call() {
        let error = Error::from(tonic::Status::not_found("no such room"));
        assert_eq!(
            error,
            Error::Rpc {
                code: tonic::Code::NotFound,
                message: "no such room".into()
            }
        );
    }

    #[test]
    fn a_status_made_from_a_local_failure_is_unreachable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let status = tonic::Status::from_error(Box::new(io));
        assert!(matches!(Error::from(status), Error::Unreachable(_)));
    }
}
