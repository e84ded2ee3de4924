//! How the SDK reaches `rallyd`: [`RallyConfig`] and [`ServerTrust`], and the connector that
//! opens the TCP connection (`TCP_NODELAY`) and, for `https://` URLs, TLS 1.3 over it.
//!
//! The broker link carries the certificate fingerprints that peers pin, so a link anyone could
//! rewrite would void the data plane's end-to-end encryption: use `https://` beyond loopback.
//! Trust is one of three: the public web PKI (Mozilla's root program, compiled in through
//! `webpki-roots`, so it is the same on a Quest, a phone, a console or a server, and needs no
//! platform store the SDK would have to find), a self-hosted CA, or one pinned server
//! certificate.
//!
//! Not here: signing in, or anything above the connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls13_signature};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use crate::{Error, Result};

/// Largest CA file read.
const MAX_CA_FILE_BYTES: u64 = 1 << 20;

/// Which server certificates an `https://` connection to `rallyd` accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerTrust {
    /// A certificate for the URL's host from a public CA (Mozilla's root program): what a
    /// server with a Let's Encrypt or other public certificate has.
    #[default]
    PublicRoots,
    /// A certificate for the URL's host issued by one of these CAs (a self-hosted CA), and no
    /// other.
    Ca(Vec<CertificateDer<'static>>),
    /// Exactly the certificate whose SHA-256 (of its DER) this is, whatever its issuer, name
    /// or dates: for a self-signed server certificate. Renewing it means shipping a new pin.
    PinnedSha256([u8; 32]),
}

impl ServerTrust {
    /// Trust the CA certificates in `pem` (one or more `CERTIFICATE` blocks).
    ///
    /// ```
    /// use rally_client::ServerTrust;
    /// assert!(ServerTrust::ca_pem(b"not a certificate").is_err());
    /// ```
    pub fn ca_pem(pem: &[u8]) -> Result<ServerTrust> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::InvalidArgument(format!("the CA is not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(Error::InvalidArgument(
                "the CA PEM holds no CERTIFICATE block".into(),
            ));
        }
        let mut roots = RootCertStore::empty();
        let (_, refused) = roots.add_parsable_certificates(certs.iter().cloned());
        if refused > 0 {
            return Err(Error::InvalidArgument(format!(
                "{refused} of the CA certificates cannot be used as trust anchors"
            )));
        }
        Ok(ServerTrust::Ca(certs))
    }

    /// Trust the CA certificates in the PEM file at `path`.
    pub fn ca_file(path: impl AsRef<std::path::Path>) -> Result<ServerTrust> {
        use std::io::Read as _;
        let path = path.as_ref();
        let unreadable =
            |e: std::io::Error| Error::InvalidArgument(format!("CA file {}: {e}", path.display()));
        let mut pem = Vec::new();
        std::fs::File::open(path)
            .map_err(unreadable)?
            .take(MAX_CA_FILE_BYTES)
            .read_to_end(&mut pem)
            .map_err(unreadable)?;
        Self::ca_pem(&pem)
    }

    /// Trust exactly the certificate with this SHA-256, given as 64 hex digits (colons and
    /// spaces between bytes are allowed, as `openssl x509 -fingerprint -sha256` prints them).
    ///
    /// ```
    /// use rally_client::ServerTrust;
    /// let pin = "AB:".repeat(31) + "AB";
    /// assert!(ServerTrust::pinned_sha256_hex(&pin).is_ok());
    /// assert!(ServerTrust::pinned_sha256_hex("abcd").is_err());
    /// ```
    pub fn pinned_sha256_hex(text: &str) -> Result<ServerTrust> {
        let digits: String = text.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
        let bytes = hex_decode(&digits).ok_or_else(|| {
            Error::InvalidArgument("a certificate pin is 64 hex digits (SHA-256)".into())
        })?;
        let pin: [u8; 32] = bytes.try_into().map_err(|_| {
            Error::InvalidArgument("a certificate pin is 64 hex digits (SHA-256)".into())
        })?;
        Ok(ServerTrust::PinnedSha256(pin))
    }
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// How the SDK connects to `rallyd`.
///
/// ```no_run
/// use rally_client::{RallyConfig, ServerTrust};
/// let mut config = RallyConfig::with_trust(ServerTrust::ca_file("studio-ca.pem")?);
/// config.connect_timeout = std::time::Duration::from_secs(5);
/// # let _ = config; Ok::<(), rally_client::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RallyConfig {
    /// Which certificates an `https://` server may present (ignored for `http://`).
    pub trust: ServerTrust,
    /// How long connecting (TCP and TLS) may take.
    pub connect_timeout: Duration,
}

impl Default for RallyConfig {
    fn default() -> Self {
        Self {
            trust: ServerTrust::default(),
            connect_timeout: crate::CONNECT_TIMEOUT,
        }
    }
}

impl RallyConfig {
    /// The default configuration with this trust.
    pub fn with_trust(trust: ServerTrust) -> Self {
        Self {
            trust,
            ..Self::default()
        }
    }
}

/// Why the connector could not open a connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectFailure {
    /// The URL has no host.
    #[error("the URL has no host")]
    NoHost,
    /// TCP failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake failed, most often because the server's certificate was refused.
    #[error("{0}")]
    Tls(rustls::Error),
}

/// The TLS client configuration for `trust`: TLS 1.3, ALPN `h2`.
pub(crate) fn client_config(trust: &ServerTrust) -> Result<Arc<rustls::ClientConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Transport(format!("TLS 1.3 is not available: {e}")))?;
    let mut config = match trust {
        ServerTrust::PublicRoots => {
            let roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        ServerTrust::Ca(certs) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(certs.iter().cloned());
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        ServerTrust::PinnedSha256(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedServer {
                pin: *pin,
                provider,
            }))
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts exactly one certificate, by its SHA-256, and checks the handshake's signature with it.
#[derive(Debug)]
struct PinnedServer {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match Sha256::digest(end_entity.as_ref()).as_slice() == self.pin {
            true => Ok(ServerCertVerified::assertion()),
            false => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A connection to `rallyd`: plain TCP, or TLS over it.
pub(crate) type ClientIo = Either<TcpStream, Box<TlsStream<TcpStream>>>;

/// Opens connections for a tonic channel: TCP with `TCP_NODELAY`, then TLS for `https://`.
#[derive(Clone)]
pub(crate) struct Connector {
    /// Present for `https://` URLs.
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Connector {
    pub(crate) fn new(tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        Self {
            tls: tls.map(tokio_rustls::TlsConnector::from),
        }
    }
}

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<ClientIo>;
    type Error = ConnectFailure;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectFailure>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectFailure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        Box::pin(async move {
            let host = uri.host().ok_or(ConnectFailure::NoHost)?;
            // An IPv6 literal keeps its brackets in a URI's host.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(match tls {
                Some(_) => 443,
                None => 80,
            });
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let Some(tls) = tls else {
                return Ok(TokioIo::new(Either::Left(tcp)));
            };
            let name = ServerName::try_from(host).map_err(|e| {
                ConnectFailure::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            })?;
            let stream = tls.connect(name, tcp).await.map_err(|error| {
                match error
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                {
                    Some(tls) => ConnectFailure::Tls(tls.clone()),
                    None => ConnectFailure::Io(error),
                }
            })?;
            Ok(TokioIo::new(Either::Right(Box::new(stream))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_connector_turns_nagle_off() {
        use tower::Service as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let uri: http::Uri = format!("http://{}", listener.local_addr().expect("address"))
            .parse()
            .expect("a URI");
        let io = Connector::new(None).call(uri).await.expect("connect");
        let Either::Left(tcp) = io.into_inner() else {
            panic!("plaintext without TLS");
        };
        assert!(tcp.nodelay().expect("read TCP_NODELAY"), "Nagle is on");
    }

    #[test]
    fn pins_parse_with_or_without_separators() {
        let pin = [0xabu8; 32];
        for text in [
            "ab".repeat(32),
            "AB:".repeat(31) + "AB",
            "ab ".repeat(31) + "ab",
        ] {
            assert_eq!(
                ServerTrust::pinned_sha256_hex(&text).expect("a pin"),
                ServerTrust::PinnedSha256(pin)
            );
        }
        for bad in ["", "ab", &"zz".repeat(32), &"ab".repeat(33), "é"] {
            assert!(ServerTrust::pinned_sha256_hex(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_ca_must_hold_a_usable_certificate() {
        assert!(ServerTrust::ca_pem(b"").is_err());
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).expect("CA");
        assert!(matches!(
            ServerTrust::ca_pem(ca.pem().as_bytes()),
            Ok(ServerTrust::Ca(certs)) if certs.len() == 1
        ));
    }
}
