//! Fuzzes the relay's wire codec (`rally_relay::wire`) with arbitrary bytes.
//!
//! Checks what the codec documents: decoding any bytes returns a message or a `WireError`, never
//! a panic; and decoding accepts exactly the encoded forms, so a decoded message re-encodes to
//! the very bytes it came from and decodes again to the same message.
//!
//! Run every target (stable toolchain, cargo-fuzz installed on demand):
//! `bash services/relay/fuzz/run.sh`; this one alone for a minute:
//! `RALLY_FUZZ_SECONDS=60 bash services/relay/fuzz/run.sh wire_decode`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rally_relay::wire::{self, BINDING_REQUEST_BYTES, Message};

fuzz_target!(|bytes: &[u8]| {
    let Ok(message) = wire::decode(bytes) else {
        return;
    };
    let mut again = Vec::with_capacity(bytes.len());
    wire::encode(&message, &mut again);
    assert_eq!(
        again, bytes,
        "decode accepted a form encode does not produce: {message:?}"
    );
    assert_eq!(wire::decode(&again).as_ref(), Ok(&message));
    if let Message::BindingRequest { .. } = message {
        assert_eq!(bytes.len(), BINDING_REQUEST_BYTES);
    }
});
