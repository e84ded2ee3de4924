//! The codec of every generated client and server: prost encoding, with smaller buffers than
//! tonic's default.
//!
//! tonic allocates an encode and a decode buffer per call, 8 KiB each by default, and keeps them
//! for the call's life. A broker attachment is a stream that lives as long as the client, mostly
//! idle, with messages of a few hundred bytes: two 8 KiB buffers were about 16 of the 40 KiB an
//! attached client cost `rallyd` (`docs/performance.md`). These start at 1 KiB and grow when a
//! message needs more.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

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
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
