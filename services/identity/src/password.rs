//! Password hashing with argon2id, off the async threads and bounded in concurrency.
//!
//! Parameters default to OWASP's argon2id recommendation (19 MiB of memory, 2 passes, 1 lane):
//! about 20 ms per hash on one core of a current server. Each hash in flight holds its memory, so
//! at most `max_concurrent` run at once; further sign-ins wait for a slot. Stored hashes are PHC
//! strings that carry their own parameters, so raising the parameters later keeps old hashes valid.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::IdentityError;

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordParams {
    /// Memory per hash in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism (lanes).
    pub parallelism: u32,
    /// How many hashes may run at once (each holds `memory_kib`).
    pub max_concurrent: usize,
}

impl Default for PasswordParams {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
            max_concurrent: 4,
        }
    }
}

/// Hashes and verifies passwords.
#[derive(Clone)]
pub(crate) struct Passwords {
    argon2: Argon2<'static>,
    slots: Arc<Semaphore>,
    /// A hash of a random password, verified against when the user does not exist so that an
    /// unknown username costs the same time as a wrong password.
    decoy: Arc<String>,
}

impl Passwords {
    pub(crate) fn new(params: PasswordParams) -> Result<Self, IdentityError> {
        let argon_params = Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            None,
        )
        .map_err(|e| IdentityError::Internal(format!("argon2 parameters: {e}")))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params);
        let decoy_password = random_salt()?;
        let decoy = hash_blocking(&argon2, decoy_password.as_str())?;
        Ok(Self {
            argon2,
            slots: Arc::new(Semaphore::new(params.max_concurrent.max(1))),
            decoy: Arc::new(decoy),
        })
    }

    /// The PHC string of `password`.
    pub(crate) async fn hash(&self, password: String) -> Result<String, IdentityError> {
        let _slot = self.slot().await?;
        let argon2 = self.argon2.clone();
        tokio::task::spawn_blocking(move || hash_blocking(&argon2, &password))
            .await
            .map_err(|e| IdentityError::Internal(format!("hashing task: {e}")))?
    }

    /// Whether `password` matches `hash`; with no hash, spends the same time and says no.
    pub(crate) async fn verify(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, IdentityError> {
        let _slot = self.slot().await?;
        let argon2 = self.argon2.clone();
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.decoy.as_ref().clone());
        let matches = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|parsed| argon2.verify_password(password.as_bytes(), &parsed).is_ok())
                .map_err(|e| IdentityError::Internal(format!("stored password hash: {e}")))
        })
        .await
        .map_err(|e| IdentityError::Internal(format!("hashing task: {e}")))??;
        Ok(known && matches)
    }

    async fn slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, IdentityError> {
        self.slots
            .acquire()
            .await
            .map_err(|_| IdentityError::Internal("password hashing is shut down".into()))
    }
}

fn random_salt() -> Result<SaltString, IdentityError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| IdentityError::Internal(format!("random: {e}")))?;
    SaltString::encode_b64(&bytes).map_err(|e| IdentityError::Internal(format!("salt: {e}")))
}

fn hash_blocking(argon2: &Argon2<'_>, password: &str) -> Result<String, IdentityError> {
    let salt = random_salt()?;
    argon2
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| IdentityError::Internal(format!("hashing: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PasswordParams {
        PasswordParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            max_concurrent: 2,
        }
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let passwords = Passwords::new(cheap()).expect("params");
        let hash = passwords.hash("correct horse".into()).await.expect("hash");
        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{hash}");
        assert!(
            passwords
                .verify("correct horse".into(), Some(hash.clone()))
                .await
                .expect("verify")
        );
        assert!(
            !passwords
                .verify("wrong horse".into(), Some(hash))
                .await
                .expect("verify")
        );
    }

    #[tokio::test]
    async fn without_a_stored_hash_nothing_verifies() {
        let passwords = Passwords::new(cheap()).expect("params");
        assert!(
            !passwords
                .verify("anything".into(), None)
                .await
                .expect("verify")
        );
    }

    #[tokio::test]
    async fn default_parameters_are_owasp_argon2id() {
        let passwords = Passwords::new(PasswordParams::default()).expect("params");
        let hash = passwords.hash("correct horse".into()).await.expect("hash");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
    }

    #[tokio::test]
    async fn a_corrupt_stored_hash_is_an_internal_error_not_a_match() {
        let passwords = Passwords::new(cheap()).expect("params");
        let result = passwords
            .verify("x".into(), Some("not a phc string".into()))
            .await;
        assert!(matches!(result, Err(IdentityError::Internal(_))));
    }
}
