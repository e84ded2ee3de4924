//! Rally's client SDK.
//!
//! Today it holds what every client needs to talk to the control plane: a connection to
//! `rallyd` ([`connect`]) and the interceptor that puts the access token on every call
//! ([`Bearer`]). The game-facing API (the Meta `ovr_Net_*` surface over peer-to-peer QUIC) is
//! built on these.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use rally_proto::identity::v1::{identity_client::IdentityClient, DeviceLoginRequest, GetAccountRequest};
//! let channel = rally_client::connect("http://127.0.0.1:7370").await?;
//! let mut identity = IdentityClient::new(channel.clone());
//! let session = identity
//!     .device_login(DeviceLoginRequest { device_id: "my-device-0123456789".into(), display_name: String::new() })
//!     .await?
//!     .into_inner()
//!     .session
//!     .ok_or("no session")?;
//! let bearer = rally_client::Bearer::new(&session.access_token)?;
//! let mut me = IdentityClient::with_interceptor(channel, bearer);
//! let account = me.get_account(GetAccountRequest {}).await?.into_inner();
//! println!("signed in as {:?}", account.user);
//! # Ok(()) }
//! ```

use tonic::metadata::{AsciiMetadataValue, errors::InvalidMetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

/// What can go wrong in the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server URL is not a valid endpoint.
    #[error("invalid server URL {url}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The server could not be reached.
    #[error("cannot reach the server: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The access token has characters that cannot go into gRPC metadata.
    #[error("the access token is not valid metadata: {0}")]
    BadToken(#[from] InvalidMetadataValue),
}

/// Connects to a `rallyd` at `url` (`http://host:port`).
pub async fn connect(url: &str) -> Result<Channel, ClientError> {
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| ClientError::InvalidUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(endpoint.tcp_nodelay(true).connect().await?)
}

/// Adds `authorization: Bearer <access token>` to every call.
#[derive(Debug, Clone)]
pub struct Bearer {
    value: AsciiMetadataValue,
}

impl Bearer {
    /// An interceptor for `access_token`.
    pub fn new(access_token: &str) -> Result<Self, ClientError> {
        Ok(Self {
            value: format!("Bearer {access_token}").parse()?,
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
        Ok(request)
    }
}
