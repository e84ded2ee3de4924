//! The codec of every generated client and server: prost encoding, with smaller buffers than
//! tonic's default, and malformed messages answered as bad input.
//!
//! A message that does not decode (a string field that is not UTF-8, which a C++ client can
//! send; a truncated field) is the sender's fault: `INVALID_ARGUMENT`, not prost's `INTERNAL`.
//! On the broker's Attach stream a malformed message must not end the stream (tonic's stream
//! ends at the first decode error), so an [`AttachRequest`] that does not decode becomes one
//! with its `request_id` and no body, which the broker answers with an Error, as `broker.proto`
//! promises for malformed signals.
//!
//! tonic allocates an encode and a decode buffer per call, 8 KiB each by default, and keeps them
//! for the call's life. A broker attachment is a stream that lives as long as the client, mostly
//! idle, with messages of a few hundred bytes: two 8 KiB buffers were about 16 of the 40 KiB an
//! attached client cost `rallyd` (`docs/performance.md`). These start at 1 KiB and grow when a
//! message needs more.

use std::any::{Any, TypeId};
use std::marker::PhantomData;

use prost::Message;
use prost::bytes::Buf;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

use crate::broker::v1::AttachRequest;

/// The initial size of a call's encode and decode buffers.
pub const BUFFER_BYTES: usize = 1024;
/// How much an encoding stream buffers before it yields (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Prost encoding with [`BUFFER_BYTES`] buffers; what the generated code uses.
#[derive(Debug, Clone, Copy)]
pub struct RallyCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for RallyCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
}

impl<T, U> Codec for RallyCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = RallyDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        RallyDecoder { _type: PhantomData }
    }
}

/// Decodes prost messages; see the module docs for what a malformed one becomes.
#[derive(Debug)]
pub struct RallyDecoder<U> {
    _type: PhantomData<U>,
}

/// The one field of an [`AttachRequest`] read from a message that does not decode whole.
#[derive(Clone, PartialEq, Message)]
struct RequestIdOnly {
    #[prost(uint64, tag = "1")]
    request_id: u64,
}

/// An [`AttachRequest`] from its bytes; one that does not decode becomes its `request_id` (0
/// when even that is unreadable) with no body.
fn decode_attach(bytes: prost::bytes::Bytes) -> AttachRequest {
    AttachRequest::decode(bytes.clone()).unwrap_or_else(|_| AttachRequest {
        request_id: RequestIdOnly::decode(bytes)
            .map(|only| only.request_id)
            .unwrap_or(0),
        body: None,
    })
}

fn malformed(error: &prost::DecodeError) -> Status {
    Status::invalid_argument(format!("the message is malformed: {error}"))
}

impl<U: Message + Default + 'static> Decoder for RallyDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        if TypeId::of::<U>() != TypeId::of::<AttachRequest>() {
            return U::decode(buf).map(Some).map_err(|error| malformed(&error));
        }
        let decoded: Box<dyn Any> = Box::new(decode_attach(buf.copy_to_bytes(buf.remaining())));
        decoded
            .downcast::<U>()
            .map(|message| Some(*message))
            .map_err(|_| Status::internal("the Attach decoder was used for another type"))
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::bytes::Bytes;

    use super::*;
    use crate::broker::v1::attach_request::Body;
    use crate::broker::v1::{Connect, Ping};

    #[test]
    fn a_signal_with_a_string_that_is_not_utf8_keeps_its_request_id_and_loses_its_body() {
        let good = AttachRequest {
            request_id: 42,
            body: Some(Body::Connect(Connect {
                user_id: "abcdefgh".into(),
            })),
        };
        let mut bytes = good.encode_to_vec();
        assert_eq!(decode_attach(Bytes::from(bytes.clone())), good);
        // Corrupt the user id's first byte into a lone UTF-8 continuation byte.
        let at = bytes.len() - 8;
        bytes[at] = 0x80;
        assert_eq!(
            decode_attach(Bytes::from(bytes)),
            AttachRequest {
                request_id: 42,
                body: None
            }
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_valid_messages_decode_unchanged(
            garbage in proptest::collection::vec(any::<u8>(), 0..512),
            request_id in any::<u64>(),
            nonce in any::<u64>(),
        ) {
            let _ = decode_attach(Bytes::from(garbage));
            let ping = AttachRequest { request_id, body: Some(Body::Ping(Ping { nonce })) };
            prop_assert_eq!(decode_attach(Bytes::from(ping.encode_to_vec())), ping);
        }
    }
}
