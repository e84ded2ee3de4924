//! The secret that signs relay grants: read from a file, or generated into it on first start.

use std::path::Path;

use rally_auth::write_private;
use rally_relay::grant::GrantKey;
use sha2::{Digest, Sha256};

use crate::RallydError;

/// Bytes of a generated secret.
const SECRET_BYTES: usize = 32;

/// The grant key in `path` (hex text), which must exist: an older secret still accepted by the
/// relay while grants signed with it expire (key rotation).
pub(crate) fn load(path: &Path) -> Result<GrantKey, RallydError> {
    if !path.is_file() {
        return Err(RallydError::Config(format!(
            "relay secret {} does not exist",
            path.display()
        )));
    }
    load_or_generate(path)
}

/// The grant key in `path` (hex text), generating a random one there when the file is missing.
/// Its id is the first four bytes of the secret's SHA-256, so replicas sharing the file agree.
pub(crate) fn load_or_generate(path: &Path) -> Result<GrantKey, RallydError> {
    let io = |what: &str, source| RallydError::Io {
        what: format!("{what} relay secret {}", path.display()),
        source,
    };
    rally_auth::check_private_file(path)?;
    let secret = match std::fs::read_to_string(path) {
        Ok(text) => hex::decode(text.trim())
            .map_err(|e| RallydError::Config(format!("{} is not hex: {e}", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = vec![0u8; SECRET_BYTES];
            getrandom::fill(&mut secret).map_err(|e| {
                RallydError::Config(format!("no randomness for the relay secret: {e}"))
            })?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| io("creating the folder of the", e))?;
            }
            write_private(path, hex::encode(&secret).as_bytes())
                .map_err(|e| io("writing the", e))?;
            tracing::info!(path = %path.display(), "generated a relay grant secret");
            secret
        }
        Err(e) => return Err(io("reading the", e)),
    };
    if secret.len() < 16 {
        return Err(RallydError::Config(format!(
            "{} holds {} bytes; a relay secret needs at least 16",
            path.display(),
            secret.len()
        )));
    }
    let digest = Sha256::digest(&secret);
    let id = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    Ok(GrantKey::new(id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_secret_is_reused_with_the_same_key_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay-grant-secret");
        let first = load_or_generate(&path).expect("generate");
        let second = load_or_generate(&path).expect("load");
        assert_eq!(first.id, second.id);
    }

    #[test]
    fn an_older_secret_must_exist_and_keeps_its_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old-secret");
        assert!(load(&path).is_err(), "never generated");
        let generated = load_or_generate(&path).expect("generate");
        assert_eq!(load(&path).expect("load").id, generated.id);
    }

    #[test]
    fn a_short_or_garbled_secret_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        write_private(&path, b"zz").expect("write");
        let err = load_or_generate(&path).expect_err("not hex").to_string();
        assert!(err.contains("is not hex"), "{err}");
        std::fs::remove_file(&path).expect("remove");
        write_private(&path, b"0011").expect("write");
        let err = load_or_generate(&path).expect_err("short").to_string();
        assert!(err.contains("needs at least 16"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_readable_by_other_users_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secret");
        load_or_generate(&path).expect("generate");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load_or_generate(&path).expect_err("too open").to_string();
        assert!(err.contains("open to other users (mode 0644)"), "{err}");
    }
}
