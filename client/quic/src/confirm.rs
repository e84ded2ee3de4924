//! The acceptance confirmation: how a dialer learns that the acceptor took its certificate.
//!
//! In TLS 1.3 the client finishes its handshake before the server has checked the client's
//! certificate, so `connect()` succeeds even when the acceptor refuses us. The acceptor
//! therefore opens a unidirectional stream right after its handshake and writes [`ACCEPTED`];
//! the dialer hands out the connection only once it has read exactly that. The application
//! never sees this stream.
//!
//! Not for: authentication (TLS did that); the confirmation only reports its outcome.

use bytes::{Bytes, BytesMut};
use s2n_quic::connection::Handle;

use crate::error::TransportError;

/// What the acceptor writes.
pub(crate) const ACCEPTED: &[u8] = b"rally/1 accepted";
/// What the dialer writes on the connection it keeps.
pub(crate) const NOMINATED: &[u8] = b"rally/1 nominated";

/// The dialer's side of nomination: write [`NOMINATED`] on a new unidirectional stream.
pub(crate) async fn nominate(handle: &mut Handle) -> Result<(), TransportError> {
    let mut stream = handle.open_send_stream().await?;
    stream.send(Bytes::from_static(NOMINATED)).await?;
    stream.finish()?;
    Ok(())
}

/// The acceptor's side: wait for the dialer's unidirectional stream and check it says
/// [`NOMINATED`]. Reads at most one byte more than that.
pub(crate) async fn await_nomination(
    streams: &mut s2n_quic::connection::ReceiveStreamAcceptor,
) -> Result<(), TransportError> {
    let malformed = || TransportError::Endpoint("no nomination from the dialer".into());
    let Some(mut stream) = streams.accept_receive_stream().await? else {
        return Err(malformed());
    };
    let mut received = BytesMut::with_capacity(NOMINATED.len());
    while let Some(chunk) = stream.receive().await? {
        if received.len() + chunk.len() > NOMINATED.len() {
            return Err(malformed());
        }
        received.extend_from_slice(&chunk);
    }
    if received.as_ref() == NOMINATED {
        Ok(())
    } else {
        Err(malformed())
    }
}

/// The acceptor's side: write the confirmation on a new unidirectional stream.
pub(crate) async fn send_acceptance(handle: &mut Handle) -> Result<(), TransportError> {
    let mut stream = handle.open_send_stream().await?;
    stream.send(Bytes::from_static(ACCEPTED)).await?;
    stream.finish()?;
    Ok(())
}

/// Why the dialer did not get a confirmation.
#[derive(Debug)]
pub(crate) enum NotAccepted {
    /// The connection failed (typically: the acceptor refused our certificate).
    Connection(s2n_quic::connection::Error),
    /// The connection ended, or the stream held something else.
    Malformed,
}

impl From<s2n_quic::connection::Error> for NotAccepted {
    fn from(error: s2n_quic::connection::Error) -> Self {
        Self::Connection(error)
    }
}

impl From<s2n_quic::stream::Error> for NotAccepted {
    fn from(error: s2n_quic::stream::Error) -> Self {
        match error {
            s2n_quic::stream::Error::ConnectionError { error, .. } => Self::Connection(error),
            _ => Self::Malformed,
        }
    }
}

/// The dialer's side: wait for the first unidirectional stream and check it says [`ACCEPTED`].
/// Reads at most one byte more than that.
pub(crate) async fn await_acceptance(
    connection: &mut s2n_quic::Connection,
) -> Result<(), NotAccepted> {
    let Some(mut stream) = connection.accept_receive_stream().await? else {
        return Err(NotAccepted::Malformed);
    };
    let mut received = BytesMut::with_capacity(ACCEPTED.len());
    while let Some(chunk) = stream.receive().await? {
        if received.len() + chunk.len() > ACCEPTED.len() {
            return Err(NotAccepted::Malformed);
        }
        received.extend_from_slice(&chunk);
    }
    if received.as_ref() == ACCEPTED {
        Ok(())
    } else {
        Err(NotAccepted::Malformed)
    }
}
