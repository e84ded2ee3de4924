//! Pinned mutual TLS: each side proves it holds the certificate the other pinned.
//!
//! One verifier type checks both directions: the end-entity certificate's SHA-256 must be the
//! pinned fingerprint (a dialer pins exactly one; an acceptor pins the set it allows), and the
//! handshake signature is checked against that certificate. Client authentication is
//! mandatory, both sides offer the same ALPN, only TLS 1.3, and no session resumption (so a
//! fingerprint disallowed later cannot come back on a resumed session).
//!
//! Not for: identity creation (see `identity.rs`) or anything after the handshake.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, aws_lc_rs, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, PeerIncompatible,
    SignatureScheme,
};

use crate::error::TransportError;
use crate::identity::{Fingerprint, Hex, Identity, fingerprint};

/// The one application protocol both sides speak.
pub(crate) const ALPN: &[u8] = b"rally/1";

/// The fingerprints an acceptor lets in.
#[derive(Debug, Default)]
pub(crate) struct AllowList(RwLock<HashSet<Fingerprint>>);

impl AllowList {
    pub(crate) fn allow(&self, peer: Fingerprint) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(peer);
    }

    pub(crate) fn disallow(&self, peer: &Fingerprint) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(peer);
    }

    fn contains(&self, peer: &Fingerprint) -> bool {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(peer)
    }
}

/// Which certificates a verifier accepts.
#[derive(Debug)]
enum Pin {
    /// A dialer expects exactly this peer.
    One(Fingerprint),
    /// An acceptor lets in whoever is allowed at handshake time.
    Allowed(Arc<AllowList>),
}

/// Checks the peer's certificate against the pin and its handshake signature against the
/// certificate.
#[derive(Debug)]
pub(crate) struct PinnedVerifier {
    pin: Pin,
    provider: Arc<CryptoProvider>,
    /// Set when a presented certificate did not match: lets a dialer say why it failed.
    mismatch: AtomicBool,
}

impl PinnedVerifier {
    fn new(pin: Pin, provider: Arc<CryptoProvider>) -> Self {
        Self {
            pin,
            provider,
            mismatch: AtomicBool::new(false),
        }
    }

    /// Whether a certificate other than the pinned one was presented.
    pub(crate) fn saw_mismatch(&self) -> bool {
        self.mismatch.load(Ordering::Relaxed)
    }

    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), Error> {
        let presented = fingerprint(end_entity);
        let pinned = match &self.pin {
            Pin::One(expected) => *expected == presented,
            Pin::Allowed(allowed) => allowed.contains(&presented),
        };
        if pinned {
            return Ok(());
        }
        self.mismatch.store(true, Ordering::Relaxed);
        tracing::debug!(presented = ?Hex(&presented), "refused a certificate that is not pinned");
        Err(Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(
            PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for PinnedVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(
            PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

/// aws-lc-rs with the TLS 1.3 cipher suites QUIC can use (the ones s2n-quic uses).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
            aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
            aws_lc_rs::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ],
        ..aws_lc_rs::default_provider()
    })
}

fn tls_error(e: Error) -> TransportError {
    TransportError::Tls(e.to_string())
}

/// The acceptor's TLS: our certificate; clients must present an allowed one.
pub(crate) fn server(
    identity: &Identity,
    allowed: Arc<AllowList>,
) -> Result<s2n_quic::provider::tls::rustls::Server, TransportError> {
    let provider = provider();
    let verifier = Arc::new(PinnedVerifier::new(Pin::Allowed(allowed), provider.clone()));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain(), identity.key())
        .map_err(tls_error)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_fragment_size = None;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config.into())
}

/// A dialer's TLS: our certificate; the server must present exactly `peer`. The verifier is
/// returned too, so the dialer can tell a pin mismatch from other failures.
pub(crate) fn client(
    identity: &Identity,
    peer: Fingerprint,
) -> Result<(s2n_quic::provider::tls::rustls::Client, Arc<PinnedVerifier>), TransportError> {
    let provider = provider();
    let verifier = Arc::new(PinnedVerifier::new(Pin::One(peer), provider.clone()));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_client_auth_cert(identity.chain(), identity.key())
        .map_err(tls_error)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.max_fragment_size = None;
    config.resumption = rustls::client::Resumption::disabled();
    Ok((config.into(), verifier))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        match Identity::generate() {
            Ok(identity) => identity,
            Err(e) => panic!("certificate generation failed: {e}"),
        }
    }

    #[test]
    fn a_dialer_accepts_only_the_pinned_certificate() {
        let (pinned, other) = (identity(), identity());
        let verifier = PinnedVerifier::new(Pin::One(pinned.fingerprint()), provider());
        assert!(verifier.check(&pinned.chain()[0]).is_ok());
        assert!(!verifier.saw_mismatch());
        assert!(verifier.check(&other.chain()[0]).is_err());
        assert!(verifier.saw_mismatch());
    }

    #[test]
    fn an_acceptor_follows_its_allow_list() {
        let peer = identity();
        let allowed = Arc::new(AllowList::default());
        let verifier = PinnedVerifier::new(Pin::Allowed(allowed.clone()), provider());
        assert!(verifier.check(&peer.chain()[0]).is_err());
        allowed.allow(peer.fingerprint());
        assert!(verifier.check(&peer.chain()[0]).is_ok());
        allowed.disallow(&peer.fingerprint());
        assert!(verifier.check(&peer.chain()[0]).is_err());
    }

    #[test]
    fn tls_configurations_build() {
        let me = identity();
        assert!(server(&me, Arc::new(AllowList::default())).is_ok());
        assert!(client(&me, [0; 32]).is_ok());
    }
}
