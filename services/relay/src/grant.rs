//! Relay grants: what the broker signs to let two peers use one relay allocation.
//!
//! A grant names the allocation, the two users, the side it is for (each user gets its own grant,
//! for its own side), its expiry and its limits, and carries an HMAC-SHA256 over all of that with
//! a secret the broker and the relay share, chosen by key id so the secret can rotate. The relay
//! checks the MAC and the expiry; nothing else in a grant is trusted before that.
//!
//! A release ([`sign_release`]) is the broker's word that an allocation's pair ended: the relay
//! frees the allocation and refuses its grants from then on. It is signed with the same secret,
//! under its own domain string, and is only accepted fresh.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Encoded size of a grant, MAC included.
pub const GRANT_BYTES: usize = 4 + 16 + 16 + 16 + 1 + 8 + 8 + 4 + 32;
const SIGNED_BYTES: usize = GRANT_BYTES - 32;
/// Encoded size of a release, MAC included: key id, allocation, issue time, MAC.
pub const RELEASE_BYTES: usize = 4 + 16 + 8 + 32;
/// How far a release's issue time may be from the relay's clock, either way (milliseconds).
pub const RELEASE_FRESHNESS_MS: u64 = 60_000;
/// What a release's MAC covers before its fields, so that no grant can pass for one.
const RELEASE_DOMAIN: &[u8] = b"rally relay release v1";

/// The signed content of a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Which shared secret signed it.
    pub key_id: u32,
    /// The allocation (random, chosen by the broker).
    pub allocation: [u8; 16],
    /// One peer's user id (UUID bytes).
    pub user_a: [u8; 16],
    /// The other peer's user id.
    pub user_b: [u8; 16],
    /// The side this grant is for: 0 for `user_a`, 1 for `user_b`. The relay binds it only to
    /// that side.
    pub side: u8,
    /// Not valid at or after this time (milliseconds since the Unix epoch).
    pub expires_at_ms: u64,
    /// Most bytes the allocation may forward, both ways together.
    pub byte_cap: u64,
    /// Most bytes per second it may forward.
    pub rate_bytes_per_sec: u32,
}

/// Why a grant was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// Not the size of a grant.
    #[error("a grant is {GRANT_BYTES} bytes")]
    Length,
    /// Signed with a key the relay does not have.
    #[error("grant signed with an unknown key")]
    UnknownKey,
    /// The MAC does not match.
    #[error("grant signature is invalid")]
    BadSignature,
    /// Past its expiry.
    #[error("grant expired")]
    Expired,
}

/// A shared secret with its id.
#[derive(Clone)]
pub struct GrantKey {
    /// The key id written into grants.
    pub id: u32,
    secret: Vec<u8>,
}

impl std::fmt::Debug for GrantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantKey")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl GrantKey {
    /// A key from its id and secret (at least 32 bytes of randomness are expected).
    pub fn new(id: u32, secret: impl Into<Vec<u8>>) -> Self {
        Self {
            id,
            secret: secret.into(),
        }
    }

    fn mac(&self, signed: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(signed);
        mac
    }
}

impl Grant {
    fn signed_bytes(&self) -> [u8; SIGNED_BYTES] {
        let mut out = [0u8; SIGNED_BYTES];
        let mut at = 0;
        for part in [
            &self.key_id.to_be_bytes()[..],
            &self.allocation,
            &self.user_a,
            &self.user_b,
            &[self.side],
            &self.expires_at_ms.to_be_bytes(),
            &self.byte_cap.to_be_bytes(),
            &self.rate_bytes_per_sec.to_be_bytes(),
        ] {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        out
    }

    /// The grant signed with `key` (whose id it takes), as sent to the peers.
    pub fn sign(mut self, key: &GrantKey) -> [u8; GRANT_BYTES] {
        self.key_id = key.id;
        let signed = self.signed_bytes();
        let tag = key.mac(&signed).finalize().into_bytes();
        let mut out = [0u8; GRANT_BYTES];
        out[..SIGNED_BYTES].copy_from_slice(&signed);
        out[SIGNED_BYTES..].copy_from_slice(&tag);
        out
    }

    /// Checks a signed grant against `keys` at time `now_ms` and returns its content.
    ///
    /// ```
    /// use rally_relay::grant::{Grant, GrantKey, GrantError};
    /// let key = GrantKey::new(7, *b"a shared secret of enough length");
    /// let grant = Grant { key_id: 0, allocation: [1; 16], user_a: [2; 16], user_b: [3; 16],
    ///     side: 0, expires_at_ms: 2_000, byte_cap: 1 << 20, rate_bytes_per_sec: 1 << 16 };
    /// let bytes = grant.sign(&key);
    /// assert_eq!(Grant::verify(&bytes, &[key.clone()], 1_000).map(|g| g.allocation), Ok([1; 16]));
    /// assert_eq!(Grant::verify(&bytes, &[key], 2_000), Err(GrantError::Expired));
    /// ```
    pub fn verify(bytes: &[u8], keys: &[GrantKey], now_ms: u64) -> Result<Grant, GrantError> {
        let bytes: &[u8; GRANT_BYTES] = bytes.try_into().map_err(|_| GrantError::Length)?;
        let (signed, tag) = bytes.split_at(SIGNED_BYTES);
        let field = |at: usize, len: usize| &signed[at..at + len];
        let array16 = |at: usize| {
            let mut out = [0u8; 16];
            out.copy_from_slice(field(at, 16));
            out
        };
        let u64_at = |at: usize| {
            let mut out = [0u8; 8];
            out.copy_from_slice(field(at, 8));
            u64::from_be_bytes(out)
        };
        let u32_at = |at: usize| {
            let mut out = [0u8; 4];
            out.copy_from_slice(field(at, 4));
            u32::from_be_bytes(out)
        };
        let key_id = u32_at(0);
        let key = keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or(GrantError::UnknownKey)?;
        key.mac(signed)
            .verify_slice(tag)
            .map_err(|_| GrantError::BadSignature)?;
        let grant = Grant {
            key_id,
            allocation: array16(4),
            user_a: array16(20),
            user_b: array16(36),
            side: field(52, 1)[0],
            expires_at_ms: u64_at(53),
            byte_cap: u64_at(61),
            rate_bytes_per_sec: u32_at(69),
        };
        if now_ms >= grant.expires_at_ms {
            return Err(GrantError::Expired);
        }
        Ok(grant)
    }
}

/// A release of `allocation`, issued at `issued_at_ms`, signed with `key`.
pub fn sign_release(
    key: &GrantKey,
    allocation: [u8; 16],
    issued_at_ms: u64,
) -> [u8; RELEASE_BYTES] {
    let mut out = [0u8; RELEASE_BYTES];
    out[..4].copy_from_slice(&key.id.to_be_bytes());
    out[4..20].copy_from_slice(&allocation);
    out[20..28].copy_from_slice(&issued_at_ms.to_be_bytes());
    let tag = release_mac(key, &out[..28]).finalize().into_bytes();
    out[28..].copy_from_slice(&tag);
    out
}

/// Checks a release against `keys` at `now_ms`: the allocation it releases.
pub fn verify_release(
    bytes: &[u8; RELEASE_BYTES],
    keys: &[GrantKey],
    now_ms: u64,
) -> Result<[u8; 16], GrantError> {
    let (signed, tag) = bytes.split_at(28);
    let key_id = u32::from_be_bytes([signed[0], signed[1], signed[2], signed[3]]);
    let key = keys
        .iter()
        .find(|k| k.id == key_id)
        .ok_or(GrantError::UnknownKey)?;
    release_mac(key, signed)
        .verify_slice(tag)
        .map_err(|_| GrantError::BadSignature)?;
    let mut issued = [0u8; 8];
    issued.copy_from_slice(&signed[20..28]);
    if u64::from_be_bytes(issued).abs_diff(now_ms) > RELEASE_FRESHNESS_MS {
        return Err(GrantError::Expired);
    }
    let mut allocation = [0u8; 16];
    allocation.copy_from_slice(&signed[4..20]);
    Ok(allocation)
}

fn release_mac(key: &GrantKey, signed: &[u8]) -> Hmac<Sha256> {
    let mut mac = key.mac(RELEASE_DOMAIN);
    mac.update(signed);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(id: u32) -> GrantKey {
        GrantKey::new(id, format!("secret number {id} of thirty-two bytes!"))
    }

    fn grant() -> Grant {
        Grant {
            key_id: 0,
            allocation: [9; 16],
            user_a: [1; 16],
            user_b: [2; 16],
            side: 1,
            expires_at_ms: 10_000,
            byte_cap: 1 << 30,
            rate_bytes_per_sec: 1 << 20,
        }
    }

    #[test]
    fn a_signed_grant_verifies_with_its_key_only() {
        let bytes = grant().sign(&key(1));
        let back = Grant::verify(&bytes, &[key(1)], 0).expect("valid");
        assert_eq!(
            back,
            Grant {
                key_id: 1,
                ..grant()
            }
        );
        assert_eq!(
            Grant::verify(&bytes, &[key(2)], 0),
            Err(GrantError::UnknownKey)
        );
        let impostor = GrantKey::new(1, "another secret with the same id!!");
        assert_eq!(
            Grant::verify(&bytes, &[impostor], 0),
            Err(GrantError::BadSignature)
        );
    }

    #[test]
    fn rotation_accepts_grants_of_the_old_and_the_new_key() {
        let keys = [key(1), key(2)];
        for signer in &keys {
            assert!(Grant::verify(&grant().sign(signer), &keys, 0).is_ok());
        }
    }

    #[test]
    fn a_release_verifies_fresh_with_its_key_only() {
        let release = sign_release(&key(1), [5; 16], 100_000);
        assert_eq!(verify_release(&release, &[key(1)], 100_000), Ok([5; 16]));
        assert_eq!(
            verify_release(&release, &[key(1)], 100_000 + RELEASE_FRESHNESS_MS),
            Ok([5; 16])
        );
        assert_eq!(
            verify_release(&release, &[key(1)], 100_001 + RELEASE_FRESHNESS_MS),
            Err(GrantError::Expired),
            "a stale release"
        );
        assert_eq!(
            verify_release(&release, &[key(2)], 100_000),
            Err(GrantError::UnknownKey)
        );
        let mut forged = release;
        forged[10] ^= 1;
        assert_eq!(
            verify_release(&forged, &[key(1)], 100_000),
            Err(GrantError::BadSignature)
        );
    }

    proptest! {
        #[test]
        fn flipping_any_bit_breaks_the_grant(byte in 0usize..GRANT_BYTES, bit in 0u8..8) {
            let mut bytes = grant().sign(&key(1));
            bytes[byte] ^= 1 << bit;
            prop_assert!(Grant::verify(&bytes, &[key(1)], 0).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_verify_and_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert!(Grant::verify(&bytes, &[key(1)], 0).is_err());
        }
    }
}
