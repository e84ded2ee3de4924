//! Rally's C ABI (`librally`): the Meta Platform SDK's peer-to-peer calls with Rally's prefix,
//! so that games written in C, C++ or C# (Unity, Unreal, their native plugins) port to Rally
//! mechanically. `ovr_Net_SendPacket` is `rally_Net_SendPacket`, `ovr_PopMessage` is
//! `rally_PopMessage`, and so on; `docs/porting-from-meta.md` maps every call.
//!
//! It is a thin layer over the Rust SDK (`rally_client`) and holds no protocol logic. It is not
//! for Rust games: they use `rally_client` directly.
//!
//! The C header `include/rally.h` is generated from this crate by cbindgen (`cbindgen.toml`);
//! the `header` test fails when the committed header is not current
//! (`RALLY_FFI_BLESS=1 cargo test -p rally-ffi --test header` rewrites it).
//!
//! # The model
//!
//! - `rally_Init` once (it starts Rally's own runtime threads), `rally_Shutdown` at the end.
//! - Requests (`rally_User_Login*`, `rally_Room_*`, `rally_Matchmaking_*`, `rally_Net_Ping`)
//!   return a `rally_RequestID` at once; their result comes later as a message.
//! - Once a frame the game pops messages with `rally_PopMessage` until it returns `NULL`
//!   (request results and the notifications: connection state changes, connect requests, ping
//!   results, matches), and reads packets with `rally_Net_ReadPacket` until it returns `NULL`.
//! - The fire-and-forget calls of Meta (`rally_Net_Connect`, `Accept`, `Close`, `SendPacket`)
//!   never wait; `rally_Net_AcceptForCurrentRoom`, `CloseForCurrentRoom` and
//!   `SendPacketToCurrentRoom` answer `bool` like Meta's and so may wait for one answer of the
//!   broker (at most 5 s).
//!
//! # Safety rules, for every function
//!
//! - Every pointer argument is checked for `NULL`; text must be UTF-8 with a NUL within 16 KiB;
//!   sizes and counts are bounded before anything is read. Handles (messages, packets and what
//!   messages contain) are looked up in a registry of live handles before use, so a freed or
//!   foreign handle is refused with `RALLY_ERROR_INVALID_HANDLE` instead of being read.
//! - No panic crosses the boundary: it is caught and becomes the function's error value, with
//!   `RALLY_ERROR_PANIC` as the last error.
//! - A failing call answers a negative `rally_Result`, `false`, `0` or `NULL`, and
//!   `rally_GetLastError` says why (per thread).
//! - Ownership: arguments are borrowed for the call and copied when kept. What a function
//!   returns is the caller's only where the function says so (`rally_PopMessage`:
//!   `rally_FreeMessage`; `rally_Net_ReadPacket`: `rally_Packet_Free`); everything a getter
//!   returns belongs to its message or packet and lives until that is freed.
//! - Thread safety: every function may be called from any thread; `rally_Shutdown` waits for
//!   calls in progress. A function that waits must not be called from inside an async runtime.
#![allow(non_camel_case_types, non_snake_case, non_upper_case_globals)]

mod args;
mod guard;
mod handles;
mod id;
mod instance;
mod matchmaking;
mod message;
mod net;
mod rooms;
mod user;

pub use args::{RALLY_MAX_PAIRS, RALLY_MAX_TEXT, rally_KeyValuePair, rally_NumericAttribute};
pub use guard::*;
pub use id::*;
pub use instance::{rally_Init, rally_InitWithOptions, rally_Shutdown};
pub use matchmaking::*;
pub use message::*;
pub use net::*;
pub use rooms::*;
pub use user::*;
