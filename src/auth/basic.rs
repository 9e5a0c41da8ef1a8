//! HTTP Basic authentication (RFC 7617): the header's credential and the password hashes
//! it is checked against. Only argon2id and bcrypt hashes are accepted: both are slow on
//! purpose, so a leaked config does not hand out passwords.

use base64::Engine;
use http::{header, HeaderMap};

/// Credentials longer than this (decoded) are refused before any work.
pub const MAX_CREDENTIAL_BYTES: usize = 1024;

/// A password hash checked at config time, ready to verify against.
#[derive(Clone, Debug)]
pub enum PasswordHash {
    Argon2id(String),
    Bcrypt(String),
}

impl PasswordHash {
    /// Parses a PHC `$argon2id$...` string or a `$2a$`/`$2b$`/`$2y$` bcrypt hash. The
    /// message never repeats the hash.
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let text = text.trim();
        if text.starts_with("$argon2id$") {
            return match argon2::PasswordHash::new(text) {
                Ok(_) => Ok(PasswordHash::Argon2id(text.to_string())),
                Err(e) => Err(format!("not a valid argon2id hash ({e})")),
            };
        }
        if text.starts_with("$argon2") {
            return Err("only argon2id is accepted among the argon2 variants".into());
        }
        let bcrypt_prefix = ["$2a$", "$2b$", "$2y$"].iter().any(|p| text.starts_with(p));
        if bcrypt_prefix {
            return match text.parse::<bcrypt::HashParts>() {
                Ok(_) => Ok(PasswordHash::Bcrypt(text.to_string())),
                Err(_) => Err("not a valid bcrypt hash".into()),
            };
        }
        Err("expected an argon2id ($argon2id$...) or bcrypt ($2b$...) hash; `portico hash-password` makes one".into())
    }

    /// Whether `password` is the one hashed. Slow (milliseconds): run off the runtime.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Argon2id(text) => {
                use argon2::PasswordVerifier;
                argon2::Argon2::default()
                    .verify_password(password, text.as_str())
                    .is_ok()
            }
            PasswordHash::Bcrypt(text) => bcrypt::verify(password, text).unwrap_or(false),
        }
    }
}

/// An argon2id hash of `password` with a random salt and the crate's default cost, for
/// `portico hash-password`.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::PasswordHasher;
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// What `Authorization: Basic` carried.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    Absent,
    Malformed,
    /// The decoded `user:password`, in the caller's buffer.
    Credential(&'a [u8]),
}

/// The decoded `user:password` of the request's one `Authorization: Basic` field,
/// decoded into `buffer` (no allocation per request).
pub fn credential<'a>(
    headers: &HeaderMap,
    buffer: &'a mut [u8; MAX_CREDENTIAL_BYTES],
) -> Presented<'a> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Presented::Absent;
    };
    let bytes = value.as_bytes();
    let Some(rest) = bytes
        .get(..6)
        .filter(|s| s.eq_ignore_ascii_case(b"basic "))
        .map(|_| &bytes[6..])
    else {
        return Presented::Absent;
    };
    if values.next().is_some() {
        return Presented::Malformed;
    }
    match base64::engine::general_purpose::STANDARD.decode_slice(rest.trim_ascii(), buffer) {
        Ok(n) if split(&buffer[..n]).is_some() => Presented::Credential(&buffer[..n]),
        _ => Presented::Malformed,
    }
}

/// `user:password` split at the first colon (RFC 7617 §2: a user-id has none).
pub fn split(credential: &[u8]) -> Option<(&str, &[u8])> {
    let colon = credential.iter().position(|b| *b == b':')?;
    let user = std::str::from_utf8(&credential[..colon]).ok()?;
    Some((user, &credential[colon + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn reads_the_credential() {
        // "ops:s3cret:with:colons"
        let b64 = base64::engine::general_purpose::STANDARD.encode("ops:s3cret:with:colons");
        let mut buf = [0u8; MAX_CREDENTIAL_BYTES];
        let Presented::Credential(c) = credential(&with(&format!("Basic {b64}")), &mut buf) else {
            panic!("a credential");
        };
        assert_eq!(split(c), Some(("ops", &b"s3cret:with:colons"[..])));
        assert_eq!(credential(&with("Bearer abc"), &mut buf), Presented::Absent);
        assert_eq!(credential(&HeaderMap::new(), &mut buf), Presented::Absent);
        assert_eq!(
            credential(&with("Basic !!!"), &mut buf),
            Presented::Malformed
        );
        let no_colon = base64::engine::general_purpose::STANDARD.encode("nocolon");
        assert_eq!(
            credential(&with(&format!("basic {no_colon}")), &mut buf),
            Presented::Malformed
        );
        let long =
            base64::engine::general_purpose::STANDARD.encode(format!("u:{}", "x".repeat(2000)));
        assert_eq!(
            credential(&with(&format!("Basic {long}")), &mut buf),
            Presented::Malformed
        );
    }

    #[test]
    fn argon2id_and_bcrypt_hashes_verify() {
        let argon = PasswordHash::parse(&hash_password("s3cret").unwrap()).unwrap();
        assert!(argon.verify(b"s3cret"));
        assert!(!argon.verify(b"s3cret2"));
        let bc = PasswordHash::parse(&bcrypt::hash("s3cret", 4).unwrap()).unwrap();
        assert!(bc.verify(b"s3cret"));
        assert!(!bc.verify(b"wrong"));
        assert!(PasswordHash::parse("plaintext").is_err());
        assert!(PasswordHash::parse("$argon2i$v=19$m=16,t=2,p=1$c29tZXNhbHQ$abc").is_err());
        assert!(PasswordHash::parse("$2b$04$short").is_err());
    }
}
