//! Rally's v1 wire contract, generated from the `.proto` files beside this crate.
//!
//! This crate holds generated code only: the prost message types, the tonic clients and the tonic
//! server traits of `rally.identity.v1`, `rally.rooms.v1` and `rally.broker.v1`, and the encoded
//! file descriptor set that gRPC server reflection serves. Behaviour lives in the service crates
//! (`services/`) and the SDK (`client/`), never here.
//!
//! Server traits are generated with default method bodies that answer `UNIMPLEMENTED`, so a
//! service can be mounted before every call is written.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod codec;

/// `rally.identity.v1`: accounts, sign-in and tokens.
pub mod identity {
    /// Version 1 of the identity contract.
    pub mod v1 {
        tonic::include_proto!("rally.identity.v1");
    }
}

/// `rally.rooms.v1`: rooms and matchmaking.
pub mod rooms {
    /// Version 1 of the rooms and matchmaking contract.
    pub mod v1 {
        tonic::include_proto!("rally.rooms.v1");
    }
}

/// `rally.broker.v1`: the connection broker's attach stream.
pub mod broker {
    /// Version 1 of the broker contract.
    pub mod v1 {
        tonic::include_proto!("rally.broker.v1");
    }
}

/// The encoded `FileDescriptorSet` of every Rally proto file (with the well-known types they
/// import), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("rally_descriptor");

/// The fully qualified names of Rally's gRPC services, as health checking and reflection list them.
pub const SERVICE_NAMES: [&str; 4] = [
    "rally.identity.v1.Identity",
    "rally.rooms.v1.Rooms",
    "rally.rooms.v1.Matchmaking",
    "rally.broker.v1.Broker",
];
