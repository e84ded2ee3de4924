//! Who a transport is: a fresh self-signed certificate and its SHA-256 fingerprint.
//!
//! There is no certificate authority: peers learn each other's fingerprint through the broker's
//! authenticated signals and pin it. Not for: verifying peers (see `tls.rs`).

use std::fmt;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use crate::error::TransportError;

/// The SHA-256 of a DER certificate: how a peer is known and pinned.
pub type Fingerprint = [u8; 32];

/// The name in our certificates and in every handshake. Pinning makes it irrelevant to trust,
/// but s2n-quic's client needs a server name.
pub(crate) const SERVER_NAME: &str = "rally";

/// The fingerprint of a DER certificate.
pub fn fingerprint(certificate_der: &[u8]) -> Fingerprint {
    Sha256::digest(certificate_der).into()
}

/// A certificate and its private key.
pub(crate) struct Identity {
    certificate: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    fingerprint: Fingerprint,
}

impl Identity {
    /// A new self-signed certificate (ECDSA P-256).
    pub(crate) fn generate() -> Result<Self, TransportError> {
        let generated = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
            .map_err(|e| TransportError::Tls(format!("certificate generation: {e}")))?;
        let certificate = generated.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der());
        Ok(Self {
            fingerprint: fingerprint(&certificate),
            certificate,
            key,
        })
    }

    /// The certificate chain presented in handshakes.
    pub(crate) fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.certificate.clone()]
    }

    /// The private key.
    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// The certificate's fingerprint.
    pub(crate) fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &Hex(&self.fingerprint))
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Shows bytes as lowercase hex.
pub(crate) struct Hex<'a>(pub &'a [u8]);

impl fmt::Debug for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_identity_is_new_and_its_fingerprint_is_the_hash_of_its_certificate() {
        let (Ok(a), Ok(b)) = (Identity::generate(), Identity::generate()) else {
            panic!("certificate generation failed");
        };
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), fingerprint(&a.chain()[0]));
    }

    #[test]
    fn debug_hides_the_key() {
        let Ok(identity) = Identity::generate() else {
            panic!("certificate generation failed");
        };
        let shown = format!("{identity:?}");
        assert!(shown.contains("redacted"));
    }
}
