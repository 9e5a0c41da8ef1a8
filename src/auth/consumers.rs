//! The `consumers` section compiled once per Runtime: who each caller is (name, groups) and
//! the maps that find a caller from a credential without scanning the list.
//!
//! - API keys are held as SHA-256 digests (a plain key is digested here, a `sha256:<hex>`
//!   entry is one already). A presented key is digested and looked up in a map whose
//!   equality is a constant-time comparison, so neither a scan over consumers nor a
//!   byte-by-byte compare tells a caller how close a guess was.
//! - Basic-auth credentials are verified against argon2id or bcrypt hashes, which is slow by
//!   design (milliseconds): the work runs on the blocking pool, a few at a time, and a
//!   verified credential is remembered under a keyed hash of it (never the password) so a
//!   repeat request costs a hash and a lookup. The map lives as long as the Runtime: a
//!   reload that changes a password starts from nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest;
use http::HeaderValue;

use crate::config::ConsumerConfig;

use super::basic::{self, PasswordHash};

/// Verified basic-auth credentials remembered at most (each about 100 bytes).
const VERIFIED_CAPACITY: u64 = 10_000;
/// A remembered credential is verified again after this long.
const VERIFIED_TTL: Duration = Duration::from_secs(300);
/// Password verifications running at once; more wait their turn, so a flood of wrong
/// passwords costs the blocking pool this many threads, never all of them.
const CONCURRENT_VERIFICATIONS: usize = 4;

/// A caller, as `allow`, rate-limit keys, transforms and the access log see it.
#[derive(Debug)]
pub struct Consumer {
    pub name: Arc<str>,
    pub groups: Vec<Arc<str>>,
    /// `X-Consumer` and `X-Consumer-Groups` as sent upstream, made once.
    pub header: Option<HeaderValue>,
    pub groups_header: Option<HeaderValue>,
}

impl Consumer {
    pub fn new(name: &str, groups: &[String]) -> Consumer {
        Consumer {
            name: Arc::from(name),
            groups: groups.iter().map(|g| Arc::from(g.as_str())).collect(),
            header: HeaderValue::from_str(name).ok(),
            groups_header: (!groups.is_empty())
                .then(|| HeaderValue::from_str(&groups.join(",")).ok())
                .flatten(),
        }
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| &**g == group)
    }
}

/// A SHA-256 digest whose equality takes the same time whatever the bytes.
#[derive(Clone, Copy, Eq)]
struct KeyDigest([u8; 32]);

impl std::hash::Hash for KeyDigest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl PartialEq for KeyDigest {
    fn eq(&self, other: &KeyDigest) -> bool {
        let mut diff = 0u8;
        for (a, b) in self.0.iter().zip(other.0.iter()) {
            diff |= a ^ b;
        }
        diff == 0
    }
}

impl KeyDigest {
    fn of(key: &[u8]) -> KeyDigest {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, key).as_ref());
        KeyDigest(out)
    }

    fn parse(text: &str) -> Result<KeyDigest, String> {
        let hex = text.trim();
        if hex.len() != 64 {
            return Err("a sha256: key needs 64 hex digits".into());
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| "not hex".to_string())?;
            out[i] = u8::from_str_radix(text, 16)
                .map_err(|_| "a sha256: key needs 64 hex digits".to_string())?;
        }
        Ok(KeyDigest(out))
    }
}

struct BasicEntry {
    consumer: Arc<Consumer>,
    hash: PasswordHash,
}

pub struct Consumers {
    by_name: HashMap<Arc<str>, Arc<Consumer>>,
    api_keys: HashMap<KeyDigest, Arc<Consumer>>,
    basic: HashMap<String, BasicEntry>,
    subjects: HashMap<String, Arc<Consumer>>,
    verified: moka::sync::Cache<[u8; 32], Arc<Consumer>>,
    /// SHA-256 with a random 64-byte block already absorbed.
    credential_key: digest::Context,
    verifying: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Consumers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Consumers({})", self.by_name.len())
    }
}

/// Why a basic-auth credential was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BasicError {
    #[error("unknown user or wrong password")]
    Invalid,
    #[error("password check failed")]
    Unavailable,
}

/// The secret block comes from the thread's `rand` generator (seeded from the OS): aws-lc's
/// own random source seeds a FIPS entropy pool on first use in each thread, which cost
/// about 420 million instructions per config build when it was used here.
fn secret_context() -> Result<digest::Context, &'static str> {
    let mut block = [0u8; 64];
    rand::fill(&mut block);
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(&block);
    Ok(context)
}

impl Consumers {
    /// Compiles the section; every problem is (path below `consumers.`, message).
    pub fn build(
        configs: &std::collections::BTreeMap<String, ConsumerConfig>,
    ) -> Result<Consumers, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut consumers = Consumers {
            by_name: HashMap::new(),
            api_keys: HashMap::new(),
            basic: HashMap::new(),
            subjects: HashMap::new(),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CAPACITY)
                .time_to_live(VERIFIED_TTL)
                .build(),
            credential_key: secret_context().map_err(|e| vec![(String::new(), e.to_string())])?,
            verifying: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_VERIFICATIONS)),
        };
        for (name, cfg) in configs {
            if name.trim().is_empty() {
                problems.push((name.clone(), "a consumer needs a name".into()));
            }
            let consumer = Arc::new(Consumer::new(name, &cfg.groups));
            if consumer.header.is_none() {
                problems.push((name.clone(), "the name must be a valid header value".into()));
            }
            for (i, group) in cfg.groups.iter().enumerate() {
                if group.is_empty() || group.contains(',') {
                    problems.push((
                        format!("{name}.groups[{i}]"),
                        "a group is a non-empty name without commas".into(),
                    ));
                }
            }
            for (i, key) in cfg.api_keys.iter().enumerate() {
                let path = format!("{name}.api_keys[{i}]");
                let digest = match key.strip_prefix("sha256:") {
                    Some(hex) => KeyDigest::parse(hex),
                    None if key.len() < 16 => {
                        Err("an API key needs at least 16 characters".to_string())
                    }
                    None => Ok(KeyDigest::of(key.as_bytes())),
                };
                match digest {
                    Ok(d) => {
                        if consumers.api_keys.insert(d, consumer.clone()).is_some() {
                            problems.push((path, "this key is already another entry's".into()));
                        }
                    }
                    // The message never repeats the key.
                    Err(e) => problems.push((path, e)),
                }
            }
            if let Some(b) = &cfg.basic_auth {
                match PasswordHash::parse(&b.password_hash) {
                    Ok(hash) => {
                        let entry = BasicEntry {
                            consumer: consumer.clone(),
                            hash,
                        };
                        if b.username.is_empty() || b.username.contains(':') {
                            problems.push((
                                format!("{name}.basic_auth.username"),
                                "a username is non-empty and has no ':'".into(),
                            ));
                        } else if consumers.basic.insert(b.username.clone(), entry).is_some() {
                            problems.push((
                                format!("{name}.basic_auth.username"),
                                format!("username {:?} belongs to two consumers", b.username),
                            ));
                        }
                    }
                    Err(e) => problems.push((format!("{name}.basic_auth.password_hash"), e)),
                }
            }
            for (i, subject) in cfg.jwt_subjects.iter().enumerate() {
                if consumers
                    .subjects
                    .insert(subject.clone(), consumer.clone())
                    .is_some()
                {
                    problems.push((
                        format!("{name}.jwt_subjects[{i}]"),
                        format!("subject {subject:?} belongs to two consumers"),
                    ));
                }
            }
            consumers.by_name.insert(consumer.name.clone(), consumer);
        }
        if problems.is_empty() {
            Ok(consumers)
        } else {
            Err(problems)
        }
    }

    /// Every group some consumer has.
    pub fn has_group(&self, group: &str) -> bool {
        self.by_name.values().any(|c| c.in_group(group))
    }

    pub fn has_api_keys(&self) -> bool {
        !self.api_keys.is_empty()
    }

    pub fn has_basic(&self) -> bool {
        !self.basic.is_empty()
    }

    /// Names and groups, sorted by name, for `GET /consumers`.
    pub fn listing(&self) -> Vec<(&str, &[Arc<str>])> {
        let mut all: Vec<_> = self
            .by_name
            .values()
            .map(|c| (&*c.name, c.groups.as_slice()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(b.0));
        all
    }

    /// The consumer holding `key`, if any.
    pub fn by_api_key(&self, key: &[u8]) -> Option<&Arc<Consumer>> {
        self.api_keys.get(&KeyDigest::of(key))
    }

    /// The consumer a JWT subject maps to.
    pub fn by_subject(&self, subject: &str) -> Option<&Arc<Consumer>> {
        self.subjects.get(subject)
    }

    /// A token's consumer: the one its subject maps to, or one named after the subject
    /// (without groups).
    pub fn token_consumer(&self, claims: &super::Claims) -> Arc<Consumer> {
        let subject = claims.subject().unwrap_or("");
        match self.by_subject(subject) {
            Some(c) => c.clone(),
            None => Arc::new(Consumer::new(subject, &[])),
        }
    }

    /// The consumer a `user:password` credential (decoded from `Authorization: Basic`)
    /// belongs to, when a remembered verification vouches for it.
    pub fn remembered(&self, credential: &[u8]) -> Option<Arc<Consumer>> {
        self.verified.get(&self.credential_tag(credential))
    }

    /// Verifies a `user:password` credential against the user's hash, remembering it
    /// when it is right.
    pub async fn verify_basic(&self, credential: &[u8]) -> Result<Arc<Consumer>, BasicError> {
        let tag = self.credential_tag(credential);
        if let Some(consumer) = self.verified.get(&tag) {
            return Ok(consumer);
        }
        let (user, password) = basic::split(credential).ok_or(BasicError::Invalid)?;
        let entry = self.basic.get(user).ok_or(BasicError::Invalid)?;
        let _turn = self
            .verifying
            .acquire()
            .await
            .map_err(|_| BasicError::Unavailable)?;
        let hash = entry.hash.clone();
        let password = password.to_vec();
        let right = tokio::task::spawn_blocking(move || hash.verify(&password))
            .await
            .map_err(|_| BasicError::Unavailable)?;
        if !right {
            return Err(BasicError::Invalid);
        }
        self.verified.insert(tag, entry.consumer.clone());
        Ok(entry.consumer.clone())
    }

    fn credential_tag(&self, credential: &[u8]) -> [u8; 32] {
        // SHA-256 over a secret 64-byte block and the credential: the block is absorbed
        // once at build time, so a tag costs one or two compressions. Tags are never
        // shown to anyone, so the length extension that rules this out as a MAC does
        // not apply; what matters is that nobody can aim a credential at a tag.
        let mut context = self.credential_key.clone();
        context.update(credential);
        let mut out = [0u8; 32];
        out.copy_from_slice(context.finish().as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn config(yaml: &str) -> BTreeMap<String, ConsumerConfig> {
        serde_yaml_ng::from_str(yaml).expect("consumers yaml")
    }

    #[test]
    fn plain_and_hashed_keys_find_their_consumer() {
        let hashed = hex(&KeyDigest::of(b"partner-key-0123456789").0);
        let consumers = Consumers::build(&config(&format!(
            "app: {{ api_keys: [mobile-key-0123456789], groups: [apps] }}\npartner: {{ api_keys: [\"sha256:{hashed}\"] }}"
        )))
        .expect("builds");
        let app = consumers
            .by_api_key(b"mobile-key-0123456789")
            .expect("plain");
        assert_eq!(&*app.name, "app");
        assert!(app.in_group("apps"));
        let partner = consumers
            .by_api_key(b"partner-key-0123456789")
            .expect("hashed");
        assert_eq!(&*partner.name, "partner");
        assert!(consumers.by_api_key(b"partner-key-012345678").is_none());
        assert!(consumers.by_api_key(b"").is_none());
    }

    #[test]
    fn bad_entries_are_named_without_the_secret() {
        let problems = Consumers::build(&config(
            "a: { api_keys: [short, \"sha256:abc\"], basic_auth: { username: ops, password_hash: \"nope\" } }",
        ))
        .expect_err("refused");
        let paths: Vec<&str> = problems.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "a.api_keys[0]",
                "a.api_keys[1]",
                "a.basic_auth.password_hash"
            ]
        );
        assert!(problems.iter().all(|(_, m)| !m.contains("short")));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}
