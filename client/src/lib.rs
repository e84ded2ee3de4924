//! Rally's client SDK.
//!
//! The control plane, over gRPC to `rallyd`:
//! - [`Rally`] is a connection that signs in ([`Rally::register`], [`Rally::login`],
//!   [`Rally::device_login`]) and gives a [`Session`], whose access token refreshes itself.
//! - [`Session::rooms`] and [`Session::matchmaking`] give [`Rooms`] and [`Matchmaking`]: one
//!   method per RPC, and room and ticket watches that resume by themselves.
//! - [`BrokerLink`] is the attachment to the connection broker: presence, and the signals two
//!   peers exchange (connect, accept, their candidates, when to punch, relay grants) as
//!   [`BrokerEvent`]s. It re-attaches by itself when the stream is lost.
//!
//! The peer-to-peer data plane (QUIC between peers), built on these, is [`net`]. Every call
//! answers with the one [`Error`] type.
//!
//! ```
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (_dir, _server, url) = rally_client::doc_server!();
//! use rally_client::Rally;
//! let rally = Rally::connect(&url).await?; // e.g. "http://127.0.0.1:7370"
//! let session = rally.device_login("my-device-0123456789", "Ada").await?;
//! let room = session.rooms().current_room().await?;
//! println!("{} is in {:?}", session.display_name(), room.map(|r| r.room_id));
//! # Ok(()) }
//! ```
//!
//! The lower-level helpers [`connect`] and [`Bearer`] remain for programs that use the generated
//! gRPC clients directly.
//!
//! Tracing: every call carries the W3C trace context of the current `tracing` span (see
//! [`trace_context`]), so that with an OpenTelemetry layer in the game's subscriber, `rallyd`'s
//! spans join the game's traces. Without one, nothing is sent.

use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

pub mod broker;
#[doc(hidden)]
pub mod doc_support;
pub mod error;
pub mod net;
pub mod rooms;
pub mod session;
pub mod tls;
pub mod trace_context;

pub use broker::{Announcement, BrokerEvent, BrokerLink};
pub use error::{Error, Result};
/// The generated wire types of the contract (`rally.identity.v1`, `rally.rooms.v1`,
/// `rally.broker.v1`), which many SDK calls take and return.
pub use rally_proto as proto;
pub use rooms::{Matchmaking, Rooms};
pub use session::{Authorized, Rally, Session};
pub use tls::{RallyConfig, ServerTrust};
pub use trace_context::TraceContext;

/// How long connecting to `rallyd` may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How often an HTTP/2 connection with open streams is pinged, and how long the answer may take.
const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connects to a `rallyd` at `url`: `https://host:port` (TLS 1.3, a certificate from a public CA)
/// or, on loopback or a private network, `http://host:port`. See [`connect_with`] for a
/// self-hosted CA or a pinned certificate.
///
/// The channel reconnects by itself when the connection drops.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_dir, _server, url) = rally_client::doc_server!();
/// let channel = rally_client::connect(&url).await?; // e.g. "http://127.0.0.1:7370"
/// # drop(channel); Ok(()) }
/// ```
pub async fn connect(url: &str) -> Result<Channel> {
    connect_with(url, &RallyConfig::default()).await
}

/// Connects to a `rallyd` at `url` as `config` says: which certificates an `https://` server
/// may present ([`ServerTrust`]) and how long connecting may take.
///
/// Errors: [`Error::InvalidUrl`] for a URL that is not `http://` or `https://` (or is `http://`
/// with a CA or a pin: these need TLS), [`Error::Tls`] when the server's certificate is refused,
/// [`Error::Unreachable`] when nothing answers.
pub async fn connect_with(url: &str, config: &RallyConfig) -> Result<Channel> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| invalid(e.to_string()))?;
    let tls = match endpoint.uri().scheme_str() {
        Some("https") => Some(tls::client_config(&config.trust)?),
        Some("http") if config.trust != ServerTrust::PublicRoots => {
            return Err(invalid(
                "a CA or a pinned certificate is for TLS: use an https:// URL".into(),
            ));
        }
        Some("http") => None,
        _ => {
            return Err(invalid(
                "the URL must start with http:// or https://".into(),
            ));
        }
    };
    Ok(endpoint
        .connect_timeout(config.connect_timeout)
        // A connection that died silently fails its open streams (watches) instead of hanging.
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        // TCP (with TCP_NODELAY) and TLS are the connector's.
        .connect_with_connector(tls::Connector::new(tls))
        .await?)
}

/// Adds `authorization: Bearer <access token>` with a fixed token to every call, and the current
/// span's trace context ([`TraceContext`]).
///
/// A [`Session`]'s [`Authorized`] does the same with a token that refreshes itself; prefer it.
///
/// ```
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let (_dir, _server, url) = rally_client::doc_server!();
/// # let session = rally_client::Rally::connect(&url).await?.device_login("doc-bearer-0123456789", "Ada").await?;
/// # let access_token = &session.access_token();
/// use rally_client::proto::identity::v1::{identity_client::IdentityClient, GetAccountRequest};
/// let channel = rally_client::connect(&url).await?;
/// let mut identity = IdentityClient::with_interceptor(channel, rally_client::Bearer::new(access_token)?);
/// let account = identity.get_account(GetAccountRequest {}).await?;
/// # drop(account); Ok(()) }
/// ```
#[derive(Clone)]
pub struct Bearer {
    value: AsciiMetadataValue,
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bearer")
            .field("value", &"<redacted>")
            .finish()
    }
}

impl Bearer {
    /// An interceptor for `access_token`; [`Error::InvalidArgument`] if it cannot be gRPC
    /// metadata (it has control characters).
    pub fn new(access_token: &str) -> Result<Self> {
        Ok(Self {
            value: session::bearer_value(access_token)?,
        })
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.value.clone());
        trace_context::inject(request.metadata_mut());
        Ok(request)
    }
}
