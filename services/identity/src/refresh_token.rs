//! Refresh tokens: 32 random bytes, given to the client in base64url and stored as their SHA-256.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rally_store::TokenHash;
use sha2::{Digest, Sha256};

use crate::IdentityError;

/// A new refresh token: what the client gets, and what the store keeps.
pub(crate) struct NewRefreshToken {
    pub(crate) text: String,
    pub(crate) hash: TokenHash,
}

pub(crate) fn generate() -> Result<NewRefreshToken, IdentityError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| IdentityError::Internal(format!("random: {e}")))?;
    Ok(NewRefreshToken {
        text: URL_SAFE_NO_PAD.encode(bytes),
        hash: Sha256::digest(bytes).into(),
    })
}

/// The stored hash of a token the client presents, or `None` when it cannot be one of ours.
pub(crate) fn parse(text: &str) -> Option<TokenHash> {
    if text.len() != 43 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
    let bytes: [u8; 32] = bytes.try_into().ok()?;
    Some(Sha256::digest(bytes).into())
}

/// The stored hash of a device id.
pub(crate) fn hash_device_id(device_id: &str) -> TokenHash {
    Sha256::digest(device_id.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_generated_token_parses_to_its_hash() {
        let token = generate().expect("random");
        assert_eq!(parse(&token.text), Some(token.hash));
        assert_ne!(generate().expect("random").text, token.text);
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,100}") {
            let _ = parse(&s);
        }
    }
}
