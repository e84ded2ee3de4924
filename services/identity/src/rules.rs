//! What a valid username, password, display name and device id are.

use std::ops::RangeInclusive;

use crate::IdentityError;

/// Allowed username length in bytes.
pub const USERNAME_BYTES: RangeInclusive<usize> = 3..=32;
/// Allowed password length in bytes.
pub const PASSWORD_BYTES: RangeInclusive<usize> = 8..=1024;
/// Allowed display name length in characters.
pub const DISPLAY_NAME_CHARS: RangeInclusive<usize> = 1..=64;
/// Allowed device id length in bytes.
pub const DEVICE_ID_BYTES: RangeInclusive<usize> = 16..=128;

/// Checks a username: 3 to 32 bytes of ASCII letters, digits, `_`, `-` and `.`, starting with a
/// letter or a digit.
///
/// ```
/// use rally_identity::validate_username;
/// assert!(validate_username("alice_01").is_ok());
/// assert!(validate_username("_alice").is_err());
/// assert!(validate_username("al").is_err());
/// ```
pub fn validate_username(username: &str) -> Result<(), IdentityError> {
    let invalid = |reason: &str| IdentityError::invalid("username", reason);
    if !USERNAME_BYTES.contains(&username.len()) {
        return Err(invalid("must be 3 to 32 bytes long"));
    }
    if !username.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(invalid("must start with a letter or a digit"));
    }
    if !username
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return Err(invalid(
            "may contain only ASCII letters, digits, '_', '-' and '.'",
        ));
    }
    Ok(())
}

/// Checks a password's length (8 to 1024 bytes); its content is the user's business.
pub fn validate_password(password: &str) -> Result<(), IdentityError> {
    if PASSWORD_BYTES.contains(&password.len()) {
        Ok(())
    } else {
        Err(IdentityError::invalid(
            "password",
            "must be 8 to 1024 bytes long",
        ))
    }
}

/// Checks a display name: 1 to 64 characters, none of them a control character, not only
/// white space.
pub fn validate_display_name(name: &str) -> Result<(), IdentityError> {
    let invalid = |reason: &str| IdentityError::invalid("display_name", reason);
    let chars = name.chars().count();
    if !DISPLAY_NAME_CHARS.contains(&chars) {
        return Err(invalid("must be 1 to 64 characters long"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters"));
    }
    if name.trim().is_empty() {
        return Err(invalid("must not be only white space"));
    }
    Ok(())
}

/// Checks a device id: 16 to 128 bytes of printable ASCII without spaces.
pub fn validate_device_id(device_id: &str) -> Result<(), IdentityError> {
    let invalid = |reason: &str| IdentityError::invalid("device_id", reason);
    if !DEVICE_ID_BYTES.contains(&device_id.len()) {
        return Err(invalid("must be 16 to 128 bytes long"));
    }
    if !device_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("must be printable ASCII without spaces"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn usernames_follow_the_documented_rule() {
        for ok in ["abc", "Alice", "a.b-c_d", "0day", &"x".repeat(32)] {
            assert!(validate_username(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ab",
            &"x".repeat(33),
            "-abc",
            ".abc",
            "a b",
            "ünï",
            "abc\n",
            "a/b",
        ] {
            assert!(validate_username(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_are_bounded_in_bytes() {
        assert!(validate_password("1234567").is_err());
        assert!(validate_password("12345678").is_ok());
        assert!(validate_password(&"p".repeat(1024)).is_ok());
        assert!(validate_password(&"p".repeat(1025)).is_err());
        // Bytes, not characters: 300 four-byte characters are 1200 bytes.
        assert!(validate_password(&"😀".repeat(300)).is_err());
    }

    #[test]
    fn display_names_are_bounded_in_characters() {
        assert!(validate_display_name("Zoë").is_ok());
        assert!(validate_display_name(&"é".repeat(64)).is_ok());
        assert!(validate_display_name(&"é".repeat(65)).is_err());
        assert!(validate_display_name("").is_err());
        assert!(validate_display_name("   ").is_err());
        assert!(validate_display_name("a\u{7}b").is_err());
    }

    #[test]
    fn device_ids_are_printable_ascii_of_bounded_length() {
        assert!(validate_device_id("0123456789abcdef").is_ok());
        assert!(validate_device_id("0123456789abcde").is_err());
        assert!(validate_device_id(&"d".repeat(129)).is_err());
        assert!(validate_device_id("0123456789 abcdef").is_err());
    }

    proptest! {
        #[test]
        fn username_check_never_panics_and_accepts_only_the_alphabet(s in "\\PC{0,40}") {
            if validate_username(&s).is_ok() {
                prop_assert!(USERNAME_BYTES.contains(&s.len()));
                prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)));
            }
        }
    }
}
