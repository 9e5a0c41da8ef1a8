//! Verification keys: from a PEM file, from a JWKS document, and which of them may verify
//! a token signed with a given algorithm. A key only ever verifies algorithms of its own
//! family (an RSA or EC key never verifies an HS token: no "algorithm confusion").

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

/// At most this many keys are taken from one JWKS document.
pub const MAX_JWKS_KEYS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    Ed25519,
}

pub struct StoredKey {
    pub kid: Option<String>,
    /// The JWK's `alg`, when it names one: then only that algorithm.
    pub alg: Option<Algorithm>,
    pub family: AlgorithmFamily,
    pub curve: Option<Curve>,
    pub key: DecodingKey,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredKey({:?}, {:?})", self.kid, self.family)
    }
}

impl StoredKey {
    pub fn fits(&self, alg: Algorithm) -> bool {
        if self.family != alg.family() || self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        match (alg, self.curve) {
            (Algorithm::ES256, Some(c)) => c == Curve::P256,
            (Algorithm::ES384, Some(c)) => c == Curve::P384,
            (Algorithm::EdDSA, Some(c)) => c == Curve::Ed25519,
            _ => true,
        }
    }

    /// A JWK usable with one of `algorithms`, or why not. Symmetric (`oct`) keys are never
    /// taken from a JWKS: a published secret is no secret.
    pub fn from_jwk(jwk: &Jwk, algorithms: &[Algorithm]) -> Result<StoredKey, String> {
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            return Err("key is not for signatures".into());
        }
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(ka) => Some(key_algorithm(ka).ok_or("unsupported alg")?),
        };
        let (family, curve) = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, None),
            AlgorithmParameters::EllipticCurve(p) => match p.curve {
                EllipticCurve::P256 => (AlgorithmFamily::Ec, Some(Curve::P256)),
                EllipticCurve::P384 => (AlgorithmFamily::Ec, Some(Curve::P384)),
                _ => return Err("unsupported curve".into()),
            },
            AlgorithmParameters::OctetKeyPair(p) => match p.curve {
                EllipticCurve::Ed25519 => (AlgorithmFamily::Ed, Some(Curve::Ed25519)),
                _ => return Err("unsupported curve".into()),
            },
            _ => return Err("unsupported key type".into()),
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("invalid key: {e}"))?;
        let stored = StoredKey {
            kid: jwk.common.key_id.clone(),
            alg,
            family,
            curve,
            key,
        };
        if !algorithms.iter().any(|a| stored.fits(*a)) {
            return Err("key fits none of the verifier's algorithms".into());
        }
        Ok(stored)
    }

    /// A public key in a PEM file: RSA, EC (P-256/P-384) or Ed25519. The file's key type
    /// must fit every algorithm of the verifier.
    pub fn from_pem(pem: &[u8], algorithms: &[Algorithm]) -> Result<StoredKey, String> {
        let (family, key) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
            (AlgorithmFamily::Rsa, k)
        } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
            (AlgorithmFamily::Ec, k)
        } else if let Ok(k) = DecodingKey::from_ed_pem(pem) {
            (AlgorithmFamily::Ed, k)
        } else {
            return Err(
                "not a PEM public key (expected an RSA, EC P-256/P-384 or Ed25519 public key)"
                    .into(),
            );
        };
        if let Some(a) = algorithms.iter().find(|a| a.family() != family) {
            return Err(format!(
                "the key is {} but the algorithms include {a:?}",
                family_name(family)
            ));
        }
        Ok(StoredKey {
            kid: None,
            alg: None,
            family,
            curve: None,
            key,
        })
    }
}

pub fn family_name(family: AlgorithmFamily) -> &'static str {
    match family {
        AlgorithmFamily::Hmac => "an HMAC secret",
        AlgorithmFamily::Rsa => "an RSA key",
        AlgorithmFamily::Ec => "an EC key",
        AlgorithmFamily::Ed => "an Ed25519 key",
    }
}

fn key_algorithm(ka: KeyAlgorithm) -> Option<Algorithm> {
    ka.to_string().parse().ok()
}

/// A set of keys, looked up by `kid` and algorithm.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<StoredKey>,
}

impl KeySet {
    /// The keys that may verify a token with this `kid` and `alg`. With a `kid`, the keys
    /// with that kid and those that have none (a `public_key` file, a `secret`); without
    /// one, every key that fits the algorithm.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a StoredKey> + 'a {
        self.keys.iter().filter(move |k| {
            k.fits(alg)
                && match kid {
                    Some(kid) => k.kid.as_deref().is_none_or(|k| k == kid),
                    None => true,
                }
        })
    }

    /// Parses a JWKS document, skipping keys that are unusable here (and saying why in
    /// the debug log). Fails when no key is usable, so a broken document never replaces
    /// good keys.
    pub fn from_jwks(body: &[u8], algorithms: &[Algorithm]) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let doc: Document =
            serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for (i, value) in doc.keys.into_iter().enumerate() {
            if keys.len() == MAX_JWKS_KEYS {
                tracing::warn!("JWKS has more than {MAX_JWKS_KEYS} keys; the rest are ignored");
                break;
            }
            let parsed = serde_json::from_value::<Jwk>(value)
                .map_err(|e| e.to_string())
                .and_then(|jwk| StoredKey::from_jwk(&jwk, algorithms));
            match parsed {
                Ok(k) => keys.push(k),
                Err(e) => tracing::debug!(index = i, "JWKS key skipped: {e}"),
            }
        }
        if keys.is_empty() {
            return Err("the JWKS has no key usable with the verifier's algorithms".into());
        }
        Ok(KeySet { keys })
    }
}
