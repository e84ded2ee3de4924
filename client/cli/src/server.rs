//! How a `rally` command reaches `rallyd`: the URL and, for `https://`, which certificate to
//! trust.

use rally_client::{Rally, RallyConfig, ServerTrust};

/// The server options every command that talks to `rallyd` takes.
#[derive(Debug, clap::Args)]
pub(crate) struct ServerArgs {
    /// The server: `https://host:port` (TLS), or `http://host:port` on loopback.
    #[arg(long, default_value = "http://127.0.0.1:7370")]
    server: String,
    /// For `https://`: trust the CA certificates in this PEM file instead of the public roots.
    #[arg(long, conflicts_with = "pin_sha256")]
    ca_file: Option<std::path::PathBuf>,
    /// For `https://`: trust exactly the server certificate with this SHA-256 (hex; colons
    /// allowed, as `openssl x509 -noout -fingerprint -sha256` prints it).
    #[arg(long)]
    pin_sha256: Option<String>,
}

impl ServerArgs {
    /// Connects to the server as the options say.
    pub(crate) async fn connect(&self) -> rally_client::Result<Rally> {
        let trust = match (&self.ca_file, &self.pin_sha256) {
            (Some(path), _) => ServerTrust::ca_file(path)?,
            (None, Some(pin)) => ServerTrust::pinned_sha256_hex(pin)?,
            (None, None) => ServerTrust::PublicRoots,
        };
        Rally::connect_with(&self.server, &RallyConfig::with_trust(trust)).await
    }
}
