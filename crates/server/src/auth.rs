//! Document tokens: who may read or write which documents.
//!
//! A token is a JWT (HS256 with `--auth-secret`, or RS256/ES256 verified with
//! `--auth-public-key`) whose claims name a document (or a prefix pattern
//! ending in `*`), a mode (`read` or `write`), an expiry and optionally a
//! subject. Any backend holding the secret or the private key can mint them;
//! weft mints HS256 tokens itself at `POST /auth/token`. With neither a
//! secret nor a key configured, weft runs open: every request may write.
//!
//! What a valid token is, beyond its signature: `exp` in the future and `nbf`
//! (if any) not (no leeway: keep clocks in sync); every time claim whole
//! seconds no later than the year 9999, so that it always converts to a
//! `SystemTime` (see [`Timestamp`]); and no `crit` header parameter, since
//! weft understands no JWS extension (RFC 7515 §4.1.11).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use weft_storage::DocName;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Read,
    Write,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Read => "read",
            Mode::Write => "write",
        }
    }
}

/// A JWT time claim (NumericDate) weft accepts: whole seconds since the Unix
/// epoch, no later than 9999-12-31T23:59:59Z. Larger values (2^64 − 1, say)
/// do not fit a `SystemTime`; refusing them while the claims are read makes
/// such a token malformed rather than a panic later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// 9999-12-31T23:59:59Z: a `SystemTime` on every platform Rust supports.
    pub const LATEST: u64 = 253_402_300_799;

    pub fn from_secs(secs: u64) -> Option<Timestamp> {
        (secs <= Self::LATEST).then_some(Timestamp(secs))
    }

    pub fn secs(self) -> u64 {
        self.0
    }

    pub fn system_time(self) -> SystemTime {
        // In range by construction (at most LATEST), so this cannot overflow.
        UNIX_EPOCH + Duration::from_secs(self.0)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let secs = u64::deserialize(d)?;
        Timestamp::from_secs(secs).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "time claim {secs} is out of range: at most {} (the year 9999)",
                Timestamp::LATEST
            ))
        })
    }
}

/// The claims weft reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// A document name, or a prefix pattern ending in `*` (`team-a.*`).
    pub doc: String,
    pub mode: Mode,
    /// Expiry, seconds since the Unix epoch.
    pub exp: Timestamp,
    /// Not valid before, if present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<Timestamp>,
    /// Issued at, if present: only checked to be in range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

/// What a request was granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub mode: Mode,
    pub sub: Option<String>,
    /// When the token stops being valid (`None` in open mode).
    pub expires_at: Option<SystemTime>,
}

impl Grant {
    /// Who a change made with this grant is recorded as made by (its
    /// subject; `anonymous` for a request without one), and how it came
    /// (`via`).
    pub fn provenance(&self, via: &str) -> weft_storage::Provenance {
        let author = self.sub.clone().unwrap_or_else(|| "anonymous".to_owned());
        weft_storage::Provenance::new(Some(author), via)
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("a token is required: pass ?token=, an Authorization: Bearer header, or a weft_token cookie")]
    Missing,
    #[error("the token is malformed: {0}")]
    Malformed(String),
    #[error("the token has expired; get a new one")]
    Expired,
    #[error("the token is not valid yet (its nbf is in the future); check the clocks")]
    NotYetValid,
    #[error("the token's signature does not verify: it was not issued for this server")]
    BadSignature,
    #[error("the token is for {allowed:?}, not for document {doc:?}")]
    WrongDocument { allowed: String, doc: String },
    #[error("the token only allows reading; writing needs a write token")]
    ReadOnly,
}

impl AuthError {
    /// 401: no usable identity. 403: a valid token that does not cover this.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::WrongDocument { .. } | AuthError::ReadOnly => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Malformed(_) => "token_malformed",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::BadSignature => "token_bad_signature",
            AuthError::WrongDocument { .. } => "token_wrong_document",
            AuthError::ReadOnly => "token_read_only",
        }
    }

    /// The WebSocket close code carrying the same meaning.
    pub fn close_code(&self) -> u16 {
        if self.status() == StatusCode::FORBIDDEN {
            crate::close_code::FORBIDDEN
        } else {
            crate::close_code::UNAUTHORIZED
        }
    }
}

/// Verifies (and, with a secret, mints) document tokens.
pub struct Authenticator {
    verifiers: Vec<(Algorithm, DecodingKey)>,
    signer: Option<EncodingKey>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algs: Vec<_> = self.verifiers.iter().map(|(a, _)| a).collect();
        f.debug_struct("Authenticator")
            .field("algorithms", &algs)
            .field("can_mint", &self.signer.is_some())
            .finish()
    }
}

impl Authenticator {
    /// From the configured secret and/or public key file. `None`: open mode.
    pub fn new(secret: Option<&str>, public_key: Option<&Path>) -> anyhow::Result<Option<Self>> {
        use anyhow::Context;
        let mut verifiers = Vec::new();
        let mut signer = None;
        if let Some(secret) = secret {
            anyhow::ensure!(
                secret.len() >= 32,
                "the auth secret is {} bytes; use at least 32 random bytes",
                secret.len()
            );
            verifiers.push((
                Algorithm::HS256,
                DecodingKey::from_secret(secret.as_bytes()),
            ));
            signer = Some(EncodingKey::from_secret(secret.as_bytes()));
        }
        if let Some(path) = public_key {
            let pem = std::fs::read(path)
                .with_context(|| format!("could not read the public key {}", path.display()))?;
            let key = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                (Algorithm::RS256, k)
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                (Algorithm::ES256, k)
            } else {
                anyhow::bail!(
                    "{} is not a PEM RSA or EC (P-256) public key",
                    path.display()
                );
            };
            verifiers.push(key);
        }
        Ok((!verifiers.is_empty()).then_some(Authenticator { verifiers, signer }))
    }

    /// Checks `token` for access to `doc` with at least `needed`.
    pub fn check(
        &self,
        token: Option<&str>,
        doc: &DocName,
        needed: Mode,
    ) -> Result<Grant, AuthError> {
        let token = token
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        let (alg, key) = self.verifier_for(token)?;
        let claims = verify(token, alg, key)?;
        if !pattern_covers(&claims.doc, doc.as_str()) {
            return Err(AuthError::WrongDocument {
                allowed: claims.doc,
                doc: doc.to_string(),
            });
        }
        if claims.mode < needed {
            return Err(AuthError::ReadOnly);
        }
        Ok(Grant {
            mode: claims.mode,
            sub: claims.sub,
            expires_at: Some(claims.exp.system_time()),
        })
    }

    /// The configured key for the token's algorithm, from its header; a
    /// header that marks an extension critical is refused, as weft
    /// understands none.
    fn verifier_for(&self, token: &str) -> Result<(Algorithm, &DecodingKey), AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if let Some(crit) = &header.crit {
            return Err(AuthError::Malformed(format!(
                "its header marks {crit:?} critical (crit), and weft supports no JWS extension"
            )));
        }
        self.verifiers
            .iter()
            .find(|(alg, _)| *alg == header.alg)
            .map(|(alg, key)| (*alg, key))
            .ok_or(AuthError::BadSignature)
    }
    /// Mints an HS256 token; `None` without a shared secret.
    pub fn mint(&self, claims: &Claims) -> Option<Result<String, String>> {
        let key = self.signer.as_ref()?;
        Some(
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, key)
                .map_err(|e| e.to_string()),
        )
    }
}

/// The token's claims, once its signature, `exp` and `nbf` check out.
fn verify(token: &str, alg: Algorithm, key: &DecodingKey) -> Result<Claims, AuthError> {
    let mut validation = Validation::new(alg);
    validation.set_required_spec_claims(&["exp"]);
    validation.validate_nbf = true;
    // No leeway: a token is refused at the second it expires, the same
    // second open connections are closed.
    validation.leeway = 0;
    jsonwebtoken::decode::<Claims>(token, key, &validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEcdsaKey => AuthError::BadSignature,
            _ => AuthError::Malformed(e.to_string()),
        })
}

/// Whether a token's `doc` claim covers `doc`: equal, or a prefix pattern.
pub fn pattern_covers(pattern: &str, doc: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => doc.starts_with(prefix),
        None => pattern == doc,
    }
}

/// Whether a `doc` claim is a name or a prefix pattern of valid characters.
pub fn valid_pattern(pattern: &str) -> bool {
    let name = pattern.strip_suffix('*').unwrap_or(pattern);
    (name.is_empty() && pattern == "*") || DocName::new(name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    fn auth() -> Authenticator {
        Authenticator::new(Some(SECRET), None)
            .expect("valid")
            .expect("configured")
    }

    fn token(doc: &str, mode: Mode, exp: u64) -> String {
        let claims = Claims {
            doc: doc.into(),
            mode,
            exp: Timestamp::from_secs(exp).expect("in range"),
            nbf: None,
            iat: None,
            sub: Some("ann".into()),
        };
        auth().mint(&claims).expect("can mint").expect("mints")
    }

    fn doc(s: &str) -> DocName {
        DocName::new(s).expect("valid")
    }

    #[test]
    fn patterns() {
        assert!(pattern_covers("a", "a"));
        assert!(!pattern_covers("a", "ab"));
        assert!(pattern_covers("team-a.*", "team-a.notes"));
        assert!(!pattern_covers("team-a.*", "team-b.notes"));
        assert!(pattern_covers("*", "anything"));
        assert!(valid_pattern("*") && valid_pattern("x.*") && valid_pattern("x"));
        assert!(!valid_pattern("a/b") && !valid_pattern("") && !valid_pattern("**"));
    }

    #[test]
    fn grants_and_refusals() {
        let a = auth();
        let later = now() + 600;
        let g = a
            .check(
                Some(&token("d", Mode::Write, later)),
                &doc("d"),
                Mode::Write,
            )
            .expect("write ok");
        assert_eq!((g.mode, g.sub.as_deref()), (Mode::Write, Some("ann")));
        assert!(a
            .check(Some(&token("d", Mode::Read, later)), &doc("d"), Mode::Read)
            .is_ok());
        assert_eq!(
            a.check(Some(&token("d", Mode::Read, later)), &doc("d"), Mode::Write),
            Err(AuthError::ReadOnly)
        );
        assert!(matches!(
            a.check(Some(&token("e", Mode::Write, later)), &doc("d"), Mode::Read),
            Err(AuthError::WrongDocument { .. })
        ));
        assert_eq!(
            a.check(
                Some(&token("d", Mode::Write, now() - 1)),
                &doc("d"),
                Mode::Read
            ),
            Err(AuthError::Expired)
        );
        assert_eq!(
            a.check(None, &doc("d"), Mode::Read),
            Err(AuthError::Missing)
        );
        assert!(matches!(
            a.check(Some("not.a.jwt"), &doc("d"), Mode::Read),
            Err(AuthError::Malformed(_))
        ));
        let other = Authenticator::new(Some("another-secret-another-secret-xx"), None)
            .expect("valid")
            .expect("configured");
        assert_eq!(
            other.check(Some(&token("d", Mode::Write, later)), &doc("d"), Mode::Read),
            Err(AuthError::BadSignature)
        );
    }

    /// A token with any claims and header, signed with the test secret.
    fn raw_token(header: &Header, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(SECRET.as_bytes()))
            .expect("encodes")
    }

    #[test]
    fn times_out_of_range_are_malformed() {
        let a = auth();
        let later = now() + 600;
        let header = Header::default();
        for claims in [
            serde_json::json!({ "doc": "d", "mode": "read", "exp": u64::MAX }),
            serde_json::json!({ "doc": "d", "mode": "read", "exp": Timestamp::LATEST + 1 }),
            serde_json::json!({ "doc": "d", "mode": "read", "exp": later, "nbf": u64::MAX }),
            serde_json::json!({ "doc": "d", "mode": "read", "exp": later, "iat": u64::MAX }),
            serde_json::json!({ "doc": "d", "mode": "read", "exp": -1 }),
        ] {
            let result = a.check(Some(&raw_token(&header, &claims)), &doc("d"), Mode::Read);
            assert!(
                matches!(result, Err(AuthError::Malformed(_))),
                "{claims}: {result:?}"
            );
        }
        let latest = serde_json::json!({ "doc": "d", "mode": "read", "exp": Timestamp::LATEST });
        let grant = a
            .check(Some(&raw_token(&header, &latest)), &doc("d"), Mode::Read)
            .expect("the latest time is valid");
        assert!(grant.expires_at.is_some());
    }

    #[test]
    fn not_before_and_critical_headers() {
        let a = auth();
        let later = now() + 600;
        let early =
            serde_json::json!({ "doc": "d", "mode": "read", "exp": later, "nbf": now() + 60 });
        assert_eq!(
            a.check(
                Some(&raw_token(&Header::default(), &early)),
                &doc("d"),
                Mode::Read
            ),
            Err(AuthError::NotYetValid)
        );
        let due = serde_json::json!({ "doc": "d", "mode": "read", "exp": later, "nbf": now() });
        assert!(a
            .check(
                Some(&raw_token(&Header::default(), &due)),
                &doc("d"),
                Mode::Read
            )
            .is_ok());
        let critical = Header {
            crit: Some(vec!["b64".into()]),
            ..Header::default()
        };
        assert!(matches!(
            a.check(Some(&raw_token(&critical, &due)), &doc("d"), Mode::Read),
            Err(AuthError::Malformed(_))
        ));
        assert_eq!(
            a.check(Some("  "), &doc("d"), Mode::Read),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Authenticator::new(Some("short"), None).is_err());
        assert!(Authenticator::new(None, None).expect("ok").is_none());
    }
}
