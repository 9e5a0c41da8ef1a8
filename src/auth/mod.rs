//! Authentication. `route` tries a route's methods (`auth.any`: API keys, JWT, basic)
//! against `consumers`; the rest of this module is JWT verification.
//!
//! JWT verification. A `Verifier` is built once per named `jwt` section and shared by the
//! routes that name it. `verify` reads `Authorization: Bearer <token>` and either returns
//! the verified claims or an `AuthError` whose `reason` labels the metric.
//!
//! The order of checks is deliberate: size first (before any parsing), then shape, then
//! the header's `alg` against the configured list (the token never chooses the
//! algorithm; `none` is never in the list), `crit`, the key (by `kid`, of the algorithm's
//! family only), the signature, and only then the claims. jsonwebtoken's `Validation` is
//! set field by field from the config; its defaults are not ours.
//!
//! With a `jwks_url` the keys live in `jwks::Jwks`, refreshed by a task owned by the
//! verifier; `authenticate` adds the one async step: on an unknown `kid` it asks for a
//! (rate-limited) refetch and tries once more.

pub mod basic;
pub mod consumers;
pub mod jwks;
pub mod keys;
pub mod route;
mod verified;

use std::borrow::Cow;
use std::sync::Arc;

use base64::Engine;
use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::JwtConfig;
use crate::wire::headers::owned;
use keys::{KeySet, StoredKey};

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// HMAC secrets shorter than this are refused (RFC 7518 §3.2: at least the hash size).
pub const MIN_SECRET_BYTES: usize = 32;
const DEFAULT_LEEWAY_SECS: u64 = 30;
const MAX_LEEWAY_SECS: u64 = 300;

/// The verified claims of a token.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Claims(pub Map<String, Value>);

impl Claims {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }

    /// The claim `name` as text (`claim_text`).
    pub fn text(&self, name: &str) -> Option<Cow<'_, str>> {
        claim_text(self.0.get(name)?)
    }

    /// The `sub` claim, for the access log.
    pub fn subject(&self) -> Option<&str> {
        self.0.get("sub").and_then(Value::as_str)
    }
}

/// A claim as text, the one rule for every use (forwarded claim headers, `claim:` rate
/// limit and split keys, `${claim.X}` templates): strings as they are, numbers and
/// booleans printed, arrays of those joined with commas (the HTTP list form). Objects,
/// null and arrays holding either have no text: the header is not set, the template
/// does not render, the key is anonymous.
pub fn claim_text(value: &Value) -> Option<Cow<'_, str>> {
    fn scalar(v: &Value) -> Option<Cow<'_, str>> {
        match v {
            Value::String(s) => Some(Cow::Borrowed(s.as_str())),
            Value::Number(n) => Some(Cow::Owned(n.to_string())),
            Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            _ => None,
        }
    }
    match value {
        Value::Array(items) => {
            let parts: Option<Vec<Cow<'_, str>>> = items.iter().map(scalar).collect();
            Some(Cow::Owned(parts?.join(",")))
        }
        v => scalar(v),
    }
}

/// Why a request was not authenticated. The messages never contain the token.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("token too large")]
    TooLarge,
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm not allowed")]
    Algorithm,
    #[error("token has critical header parameters")]
    Crit,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("invalid signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("missing required claim")]
    MissingClaim,
    #[error("signing keys are not available yet")]
    KeysUnavailable,
}

impl AuthError {
    pub const ALL: [AuthError; 13] = [
        AuthError::Missing,
        AuthError::TooLarge,
        AuthError::Malformed,
        AuthError::Algorithm,
        AuthError::Crit,
        AuthError::UnknownKey,
        AuthError::Signature,
        AuthError::Expired,
        AuthError::NotYetValid,
        AuthError::Issuer,
        AuthError::Audience,
        AuthError::MissingClaim,
        AuthError::KeysUnavailable,
    ];

    /// The `reason` label of `portico_jwt_rejected_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::TooLarge => "too_large",
            AuthError::Malformed => "malformed",
            AuthError::Algorithm => "algorithm",
            AuthError::Crit => "crit",
            AuthError::UnknownKey => "unknown_kid",
            AuthError::Signature => "signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::Issuer => "issuer",
            AuthError::Audience => "audience",
            AuthError::MissingClaim => "missing_claim",
            AuthError::KeysUnavailable => "keys_unavailable",
        }
    }

    pub fn index(&self) -> usize {
        AuthError::ALL.iter().position(|e| e == self).unwrap_or(0)
    }

    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The `WWW-Authenticate` challenge (RFC 6750 §3): no error code when no token was
    /// sent, `invalid_token` with a fixed description otherwise.
    pub fn challenge(&self) -> Option<HeaderValue> {
        match self {
            AuthError::Missing => Some(HeaderValue::from_static("Bearer")),
            AuthError::KeysUnavailable => None,
            other => HeaderValue::from_str(&format!(
                "Bearer error=\"invalid_token\", error_description=\"{other}\""
            ))
            .ok(),
        }
    }
}

enum VerifyingKeys {
    Secret(Arc<KeySet>),
    Static(Arc<KeySet>),
    Jwks(jwks::Jwks),
}

/// A `jwt` section checked and compiled, without anything running yet.
struct Settings {
    algorithms: Vec<Algorithm>,
    validations: Vec<(Algorithm, Validation)>,
    required: Vec<String>,
    forward: Vec<(String, HeaderName)>,
    keys: Keys,
}

enum Keys {
    Secret(Vec<u8>),
    Static(StoredKey),
    /// The URL, and the TLS setup of an `https` one with a `ca_file`.
    Jwks(http::Uri, Option<crate::wire::tls::ClientTls>),
}

/// Checks a `jwt` section; returns (field, message) problems. Reads `public_key` files.
pub fn check(config: &JwtConfig) -> Vec<(&'static str, String)> {
    match Settings::parse(config) {
        Ok(_) => Vec::new(),
        Err(problems) => problems,
    }
}

/// Every header name that any verifier fills from claims: removed from every incoming
/// request, on every route, so a client can never forge one.
pub fn forwarded_headers<'a>(configs: impl Iterator<Item = &'a JwtConfig>) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = configs
        .flat_map(|c| c.forward_claims.values())
        .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

/// Removes the claim headers a client may have sent.
pub fn strip_forwarded(headers: &mut HeaderMap, names: &[HeaderName]) {
    for name in names {
        headers.remove(name);
    }
}

impl Settings {
    fn parse(config: &JwtConfig) -> Result<Settings, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let mut algorithms = Vec::new();
        if config.algorithms.is_empty() {
            problems.push(("algorithms", "list at least one algorithm".to_string()));
        }
        for name in &config.algorithms {
            if name.eq_ignore_ascii_case("none") {
                problems.push(("algorithms", "\"none\" is never allowed".to_string()));
                continue;
            }
            match name.parse::<Algorithm>() {
                Ok(a) if !algorithms.contains(&a) => algorithms.push(a),
                Ok(_) => {}
                Err(_) => problems.push((
                    "algorithms",
                    format!("unknown algorithm {name:?} (expected HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA)"),
                )),
            }
        }
        let hmac = algorithms
            .iter()
            .filter(|a| a.family() == AlgorithmFamily::Hmac)
            .count();
        let sources = [
            config.secret.is_some(),
            config.public_key.is_some(),
            config.jwks_url.is_some(),
        ];
        let mut keys = None;
        match sources.iter().filter(|s| **s).count() {
            1 => {}
            0 => problems.push((
                "secret",
                "give one key source: secret, public_key or jwks_url".into(),
            )),
            _ => problems.push((
                "secret",
                "give only one of secret, public_key, jwks_url".into(),
            )),
        }
        if let Some(secret) = &config.secret {
            if hmac != algorithms.len() {
                problems.push((
                    "algorithms",
                    "a secret verifies HS256/HS384/HS512 only".into(),
                ));
            }
            if secret.len() < MIN_SECRET_BYTES {
                problems.push((
                    "secret",
                    format!("must be at least {MIN_SECRET_BYTES} bytes"),
                ));
            }
            keys = Some(Keys::Secret(secret.as_bytes().to_vec()));
        } else if hmac > 0 {
            problems.push((
                "algorithms",
                "HS algorithms need a secret (never a public key or JWKS)".into(),
            ));
        }
        if let Some(path) = &config.public_key {
            match std::fs::read(path) {
                Ok(pem) => match StoredKey::from_pem(&pem, &algorithms) {
                    Ok(k) => keys = Some(Keys::Static(k)),
                    Err(e) => problems.push(("public_key", format!("{path}: {e}"))),
                },
                Err(e) => problems.push(("public_key", format!("cannot read {path}: {e}"))),
            }
        }
        if let Some(url) = &config.jwks_url {
            match jwks::parse_url(url) {
                Ok(uri) => match jwks::tls_for(&uri, config.ca_file.as_deref()) {
                    Ok(tls) => keys = Some(Keys::Jwks(uri, tls)),
                    Err(e) => problems.push(("ca_file", e)),
                },
                Err(e) => problems.push(("jwks_url", e)),
            }
        } else if config.ca_file.is_some() {
            problems.push(("ca_file", "needs an https jwks_url".into()));
        }
        let leeway = config.leeway.map_or(DEFAULT_LEEWAY_SECS, |l| l.0.as_secs());
        if leeway > MAX_LEEWAY_SECS {
            problems.push(("leeway", format!("at most {MAX_LEEWAY_SECS}s")));
        }
        if config.issuer.as_deref().is_some_and(str::is_empty) {
            problems.push(("issuer", "must not be empty".into()));
        }
        if config.audience.iter().any(String::is_empty) {
            problems.push(("audience", "must not contain an empty value".into()));
        }
        if config.required_claims.iter().any(|c| c.trim().is_empty()) {
            problems.push(("required_claims", "must not contain an empty name".into()));
        }
        let mut forward = Vec::new();
        for (claim, name) in &config.forward_claims {
            match HeaderName::from_bytes(name.as_bytes()) {
                // Every header the gateway owns, whatever the reason.
                Ok(h) if owned(&h).is_some() => problems.push((
                    "forward_claims",
                    format!("claim {claim:?} cannot be forwarded in {name:?}"),
                )),
                Ok(h) => forward.push((claim.clone(), h)),
                Err(_) => problems.push((
                    "forward_claims",
                    format!("invalid header name {name:?} for claim {claim:?}"),
                )),
            }
        }
        let (Some(keys), true) = (keys, problems.is_empty()) else {
            return Err(problems);
        };
        let mut spec: Vec<&str> = vec!["exp"];
        if config.issuer.is_some() {
            spec.push("iss");
        }
        if !config.audience.is_empty() {
            spec.push("aud");
        }
        let validations = algorithms
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.leeway = leeway;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.reject_tokens_expiring_in_less_than = 0;
                v.sub = None;
                v.validate_aud = !config.audience.is_empty();
                v.aud = None;
                if !config.audience.is_empty() {
                    v.set_audience(&config.audience);
                }
                v.iss = None;
                if let Some(iss) = &config.issuer {
                    v.set_issuer(&[iss]);
                }
                v.set_required_spec_claims(&spec);
                (*alg, v)
            })
            .collect();
        Ok(Settings {
            algorithms,
            validations,
            required: config.required_claims.clone(),
            forward,
            keys,
        })
    }
}

pub struct Verifier {
    pub name: String,
    pub config: JwtConfig,
    algorithms: Vec<Algorithm>,
    validations: Vec<(Algorithm, Validation)>,
    required: Vec<String>,
    forward: Vec<(String, HeaderName)>,
    keys: VerifyingKeys,
    verified: verified::VerifiedTokens,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifier({})", self.name)
    }
}

#[derive(serde::Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

impl Verifier {
    /// Builds a verifier. With a `jwks_url` this starts the key fetch (it needs a Tokio
    /// runtime); the verifier answers `KeysUnavailable` until the first keys arrive.
    pub fn build(
        name: &str,
        config: &JwtConfig,
        client: Option<crate::wire::client::HttpClient>,
    ) -> Result<Verifier, String> {
        let settings = Settings::parse(config).map_err(|problems| {
            problems
                .into_iter()
                .map(|(f, m)| format!("{f}: {m}"))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let keys = match settings.keys {
            Keys::Secret(secret) => VerifyingKeys::Secret(Arc::new(KeySet {
                keys: vec![StoredKey {
                    kid: None,
                    alg: None,
                    family: AlgorithmFamily::Hmac,
                    curve: None,
                    key: DecodingKey::from_secret(&secret),
                }],
            })),
            Keys::Static(key) => VerifyingKeys::Static(Arc::new(KeySet { keys: vec![key] })),
            Keys::Jwks(uri, tls) => {
                let client = match client {
                    Some(client) => client,
                    None => crate::wire::client::build_client(jwks::FETCH_TIMEOUT, tls.as_ref())
                        .map_err(|e| format!("jwks_url: {e}"))?,
                };
                VerifyingKeys::Jwks(jwks::Jwks::start(
                    name,
                    uri,
                    settings.algorithms.clone(),
                    client,
                )?)
            }
        };
        let leeway = config.leeway.map_or(DEFAULT_LEEWAY_SECS, |l| l.0.as_secs());
        Ok(Verifier {
            verified: verified::VerifiedTokens::new(leeway),
            name: name.to_string(),
            config: config.clone(),
            algorithms: settings.algorithms,
            validations: settings.validations,
            required: settings.required,
            forward: settings.forward,
            keys,
        })
    }

    /// Whether this verifier can be carried over to a new config unchanged: same
    /// definition, and no key file that may have changed on disk.
    pub fn reusable_for(&self, config: &JwtConfig) -> bool {
        &self.config == config && config.public_key.is_none()
    }

    pub fn jwks(&self) -> Option<&jwks::Jwks> {
        match &self.keys {
            VerifyingKeys::Jwks(j) => Some(j),
            _ => None,
        }
    }

    /// Verifies the bearer token of a request.
    pub fn verify(&self, headers: &HeaderMap) -> Result<Claims, AuthError> {
        let token = bearer_token(headers)?;
        self.verify_token(token)
    }

    /// Like `verify`, and on an unknown `kid` (or keys not loaded yet) asks the JWKS for a
    /// refetch (at most one per few seconds) and tries once more. A token verified before
    /// with the current keys is answered from the verified-token cache.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Claims>, AuthError> {
        let token = bearer_token(headers)?;
        let keys = self.current_keys();
        if let Some(keys) = &keys {
            if let Some(claims) = self.verified.get(token, keys) {
                return Ok(claims);
            }
        }
        let claims = match self.verify_token(token) {
            Err(e @ (AuthError::UnknownKey | AuthError::KeysUnavailable)) => match &self.keys {
                VerifyingKeys::Jwks(jwks) if jwks.refetch().await => {
                    return self.verify_token(token).map(Arc::new)
                }
                _ => return Err(e),
            },
            other => Arc::new(other?),
        };
        if let Some(keys) = keys {
            self.verified.insert(token, keys, claims.clone());
        }
        Ok(claims)
    }

    fn current_keys(&self) -> Option<Arc<KeySet>> {
        match &self.keys {
            VerifyingKeys::Secret(k) | VerifyingKeys::Static(k) => Some(k.clone()),
            VerifyingKeys::Jwks(j) => j.keys(),
        }
    }

    pub fn verify_token(&self, token: &str) -> Result<Claims, AuthError> {
        let (header, alg) = self.header(token)?;
        let keys = match &self.keys {
            VerifyingKeys::Secret(k) | VerifyingKeys::Static(k) => k.clone(),
            VerifyingKeys::Jwks(j) => j.keys().ok_or(AuthError::KeysUnavailable)?,
        };
        let validation = self
            .validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
            .ok_or(AuthError::Algorithm)?;
        let kid = header.kid.as_deref();
        let mut tried = false;
        for key in keys.candidates(kid, alg) {
            tried = true;
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation) {
                Ok(data) => return self.check_claims(Claims(data.claims)),
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => continue,
                Err(e) => return Err(map_error(e.kind())),
            }
        }
        match (tried, kid) {
            (false, Some(_)) => Err(AuthError::UnknownKey),
            _ => Err(AuthError::Signature),
        }
    }

    /// Decodes the token's header (after checking its shape) and checks `alg` and `crit`.
    fn header(&self, token: &str) -> Result<(RawHeader, Algorithm), AuthError> {
        let mut parts = token.split('.');
        let (Some(head), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        if head.is_empty() || payload.is_empty() || signature.is_empty() {
            return Err(AuthError::Malformed);
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(head)
            .map_err(|_| AuthError::Malformed)?;
        let header: RawHeader = serde_json::from_slice(&bytes).map_err(|_| AuthError::Malformed)?;
        let alg = header
            .alg
            .parse::<Algorithm>()
            .ok()
            .filter(|a| self.algorithms.contains(a))
            .ok_or(AuthError::Algorithm)?;
        // RFC 7515 §4.1.11: extensions we do not understand must make the token invalid.
        if header.crit.is_some() {
            return Err(AuthError::Crit);
        }
        Ok((header, alg))
    }

    fn check_claims(&self, claims: Claims) -> Result<Claims, AuthError> {
        for name in &self.required {
            if matches!(claims.get(name), None | Some(Value::Null)) {
                return Err(AuthError::MissingClaim);
            }
        }
        Ok(claims)
    }

    /// Sets the `forward_claims` headers for the upstream request. A claim that is
    /// absent, an object, or not a valid header value sets nothing (its header was
    /// already removed from what the client sent).
    pub fn forward(&self, claims: &Claims, headers: &mut HeaderMap) {
        for (claim, name) in &self.forward {
            if let Some(value) = claims
                .text(claim)
                .and_then(|t| HeaderValue::from_str(&t).ok())
            {
                headers.insert(name.clone(), value);
            }
        }
    }
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::Missing)?;
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }
    let bytes = value.as_bytes();
    if bytes.len() > MAX_TOKEN_BYTES + 16 {
        return Err(AuthError::TooLarge);
    }
    let text = value.to_str().map_err(|_| AuthError::Malformed)?;
    let (scheme, rest) = text.split_once(' ').ok_or(AuthError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Missing);
    }
    let token = rest.trim_matches(' ');
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge);
    }
    if token.is_empty()
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

fn map_error(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::Signature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::Issuer,
        ErrorKind::InvalidAudience => AuthError::Audience,
        ErrorKind::MissingRequiredClaim(_) => AuthError::MissingClaim,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => AuthError::Algorithm,
        ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidKeyFormat => AuthError::Signature,
        _ => AuthError::Malformed,
    }
}

#[cfg(test)]
mod tests;
