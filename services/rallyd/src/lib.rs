//! `rallyd`: Rally's backend in one process.
//!
//! This crate composes the service crates into one gRPC server: it reads the [`Config`], opens
//! the database (SQLite under the data directory by default, Postgres with `--database-url`),
//! loads or creates the token-signing key, puts the telemetry layer ([`rpc_telemetry`]: a span
//! and a duration per call) and the authentication layer in front of every service, adds gRPC
//! health checking and server reflection, and shuts down gracefully. [`telemetry`] sets up
//! logging and the OpenTelemetry exporters. It holds
//! no service logic of its own; each service crate could run alone behind the same frame, which is
//! what `--services` does (one Kubernetes Deployment per service).
//!
//! Tests start it in-process with [`start`] on `127.0.0.1:0`.

mod body_timeout;
mod config;
mod database;
mod error;
mod listener;
mod relay_metrics;
mod relay_secret;
pub mod rpc_telemetry;
mod server;
mod session_ends;
pub mod telemetry;
mod tls;

pub use config::{Config, LogFormat, ServiceKind};
pub use database::Database;
pub use error::RallydError;
pub use server::{Running, start};
pub use tls::{TlsFiles, TlsReloader};
