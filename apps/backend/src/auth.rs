//! Who is calling: user tokens (JWTs) and publisher credentials. The HTTP side (reading
//! them off a request) is `routes::extract`.
//!
//! Tokens are verified with whatever the deployment configures: an HS256 secret shared
//! with the host application, a public key from a PEM file (RS256, ES256, EdDSA), or a
//! local JWKS file whose keys a token's `kid` selects. `exp` and `sub` are required,
//! `nbf` is honoured, and `aud`/`iss` are checked when configured. Credentials are read
//! from the `Authorization` header only: never from a URL, which ends up in logs and
//! browser history (browsers' event streams use a stream ticket instead, see `tickets`).

use std::{
    borrow::Cow,
    time::{Duration, SystemTime},
};

use anyhow::Context;
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation,
    jwk::{Jwk, JwkSet},
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::{
    clock::epoch_secs,
    config::{KeyAlgorithm, Secret, Settings},
};

/// The claims of every token this system signs or accepts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default)]
    pub iat: u64,
    /// Not valid before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Audience: a string or a list of strings (checked when `JWT_AUDIENCE` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    /// Issuer (checked when `JWT_ISSUER` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Whether the bearer may publish events to any user through `POST /api/publish`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub publish: bool,
    /// Topic patterns the user may subscribe to (see [`events::pattern_allows`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics: Vec<String>,
    /// Topic patterns the user may publish to with this token.
    #[serde(
        default,
        rename = "publishTopics",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub publish_topics: Vec<String>,
}

/// Patterns a credential keeps at most per claim: a token is a header, and every stream
/// opened with it holds its patterns.
pub const MAX_PATTERNS: usize = 256;

/// Why a credential was refused. Deliberately coarse: a client learns no more than it must.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("token has expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
    #[error("unknown, used or expired stream ticket (get one from POST /api/stream-tickets)")]
    BadTicket,
    #[error(
        "tokens are not accepted in the URL: send Authorization: Bearer, or open the stream \
         with a ticket from POST /api/stream-tickets"
    )]
    TokenInUrl,
    /// A valid user token, where a publisher's credential is needed.
    #[error("this token may not publish")]
    MayNotPublish,
}

/// A user's verified credential: who, until when (seconds since the Unix epoch), and the
/// topics granted. A stream opened with it ends when it expires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credential {
    pub user_id: String,
    pub expires_at: u64,
    /// Patterns of the topics the user may subscribe to (the `topics` claim).
    pub topics: Vec<String>,
    /// Patterns of the topics the user may publish to (the `publishTopics` claim).
    pub publish_topics: Vec<String>,
}

/// The patterns of a claim a credential keeps: those that can allow a topic, at most
/// [`MAX_PATTERNS`].
fn patterns(claim: Vec<String>) -> Vec<String> {
    claim
        .into_iter()
        .filter(|pattern| events::is_topic_pattern(pattern))
        .take(MAX_PATTERNS)
        .collect()
}

/// What a caller of `POST /api/publish` may publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishRight {
    /// Anything: the publish key, or a token with the `publish` claim.
    Any,
    /// Only to the topics its `publishTopics` patterns allow, as `user_id`.
    Topics {
        user_id: String,
        patterns: Vec<String>,
    },
}

/// A public key a token may be signed with.
struct PublicKey {
    /// The JWKS `kid`, if the key came with one.
    kid: Option<String>,
    key: DecodingKey,
}

/// Signs and verifies tokens, so that any instance (and the host application, which holds
/// the private key or the same secret) can check a token any other minted.
pub struct Tokens {
    /// Signs development tokens; present when an HS256 secret is configured.
    signer: Option<EncodingKey>,
    hs256: Option<DecodingKey>,
    public: Vec<PublicKey>,
    audience: Option<String>,
    issuer: Option<String>,
    ttl: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("hs256", &self.hs256.is_some())
            .field("public_keys", &self.public.len())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// HS256 only, with `secret`.
    pub fn new(secret: &str, ttl: Duration) -> Self {
        Self {
            signer: Some(EncodingKey::from_secret(secret.as_bytes())),
            hs256: Some(DecodingKey::from_secret(secret.as_bytes())),
            public: Vec::new(),
            audience: None,
            issuer: None,
            ttl,
        }
    }

    /// Everything `settings` configures: the HS256 secret, the public key file, the JWKS
    /// file, audience and issuer. Fails on a key file that cannot be read or parsed.
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let ttl = Duration::from_secs(settings.token_ttl_secs);
        let mut tokens = match settings.hs256_secret() {
            Some(secret) => Self::new(secret, ttl),
            None => Self {
                signer: None,
                hs256: None,
                public: Vec::new(),
                audience: None,
                issuer: None,
                ttl,
            },
        };
        if let (Some(path), Some(algorithm)) =
            (&settings.jwt_public_key_file, settings.jwt_algorithm)
        {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read JWT_PUBLIC_KEY_FILE {}", path.display()))?;
            let key = match algorithm {
                KeyAlgorithm::Rs256 => DecodingKey::from_rsa_pem(&pem),
                KeyAlgorithm::Es256 => DecodingKey::from_ec_pem(&pem),
                KeyAlgorithm::EdDsa => DecodingKey::from_ed_pem(&pem),
            }
            .with_context(|| {
                format!(
                    "JWT_PUBLIC_KEY_FILE {} is not a {algorithm:?} public key",
                    path.display()
                )
            })?;
            tokens.public.push(PublicKey { kid: None, key });
        }
        if let Some(path) = &settings.jwt_jwks_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read JWT_JWKS_FILE {}", path.display()))?;
            let set: JwkSet = serde_json::from_str(&text)
                .with_context(|| format!("JWT_JWKS_FILE {} is not a JWKS", path.display()))?;
            for jwk in &set.keys {
                tokens.public.push(public_key(jwk).with_context(|| {
                    format!(
                        "a key of JWT_JWKS_FILE {} cannot verify tokens",
                        path.display()
                    )
                })?);
            }
        }
        tokens.audience = settings.jwt_audience.clone();
        tokens.issuer = settings.jwt_issuer.clone();
        Ok(tokens)
    }

    /// Mints a user token; returns it with its expiry. `None` when no HS256 secret is
    /// configured (tokens then come from the host application only).
    pub fn issue(&self, user_id: &str) -> Option<(String, SystemTime)> {
        self.issue_with(user_id, Vec::new(), Vec::new())
    }

    /// [`Tokens::issue`], granting the topics of `topics` and `publish_topics` patterns.
    pub fn issue_with(
        &self,
        user_id: &str,
        topics: Vec<String>,
        publish_topics: Vec<String>,
    ) -> Option<(String, SystemTime)> {
        let now = SystemTime::now();
        let expires = now + self.ttl;
        let claims = Claims {
            sub: user_id.to_string(),
            exp: epoch_secs(expires),
            iat: epoch_secs(now),
            aud: self.audience.clone().map(serde_json::Value::String),
            iss: self.issuer.clone(),
            topics,
            publish_topics,
            ..Claims::default()
        };
        Some((self.sign(&claims)?, expires))
    }

    /// Signs arbitrary claims with the HS256 secret (tests and tools that mint publisher
    /// tokens); `None` without one.
    pub fn sign(&self, claims: &Claims) -> Option<String> {
        let signer = self.signer.as_ref()?;
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, signer).ok()
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let key = self.key_for(header.alg, header.kid.as_deref())?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = 5;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(issuer) = &self.issuer {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| match e
            .kind()
        {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid,
        })?;
        events::validate_user_id(&data.claims.sub).map_err(|_| AuthError::Invalid)?;
        Ok(data.claims)
    }

    /// The key that may have signed a token of `alg` (and `kid`). An HMAC token is only
    /// ever checked against the HS256 secret, never against a public key (the classic
    /// algorithm-confusion forgery).
    fn key_for(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Cow<'_, DecodingKey>, AuthError> {
        if alg == Algorithm::HS256 {
            return self
                .hs256
                .as_ref()
                .map(Cow::Borrowed)
                .ok_or(AuthError::Invalid);
        }
        self.public
            .iter()
            .filter(|candidate| candidate.key.family() == alg.family())
            .find(|candidate| match (kid, &candidate.kid) {
                (Some(kid), Some(key_id)) => kid == key_id,
                (Some(_), None) | (None, _) => true,
            })
            .map(|candidate| Cow::Borrowed(&candidate.key))
            .ok_or(AuthError::Invalid)
    }

    /// Verifies a user's token into a [`Credential`].
    pub fn credential(&self, token: &str) -> Result<Credential, AuthError> {
        Ok(Self::credential_of(self.verify(token)?))
    }

    fn credential_of(claims: Claims) -> Credential {
        Credential {
            user_id: claims.sub,
            expires_at: claims.exp,
            topics: patterns(claims.topics),
            publish_topics: patterns(claims.publish_topics),
        }
    }
}

fn public_key(jwk: &Jwk) -> anyhow::Result<PublicKey> {
    Ok(PublicKey {
        kid: jwk.common.key_id.clone(),
        key: DecodingKey::from_jwk(jwk)?,
    })
}

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case).
/// `None` when absent or of another scheme.
pub fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    let (scheme, token) = authorization?.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// The user whose token an `Authorization` header value carries.
pub fn authenticate(tokens: &Tokens, authorization: Option<&str>) -> Result<Credential, AuthError> {
    let token = bearer_token(authorization).ok_or(AuthError::Missing)?;
    tokens.credential(token)
}

/// What an `Authorization` header value lets its bearer publish: anything, with the
/// publish API key or a token whose `publish` claim is true; with any other user token,
/// the topics its `publishTopics` claim allows (perhaps none).
pub fn authorize_publisher(
    tokens: &Tokens,
    publish_key: Option<&Secret>,
    authorization: Option<&str>,
) -> Result<PublishRight, AuthError> {
    Ok(match identify(tokens, publish_key, authorization)? {
        Caller::Service => PublishRight::Any,
        Caller::User(credential) => PublishRight::Topics {
            user_id: credential.user_id,
            patterns: credential.publish_topics,
        },
    })
}

/// Who calls: a service (the publish API key, or a token whose `publish` claim is true),
/// or a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Service,
    User(Credential),
}

/// The caller the `Authorization` header names, either kind.
pub fn identify(
    tokens: &Tokens,
    publish_key: Option<&Secret>,
    authorization: Option<&str>,
) -> Result<Caller, AuthError> {
    match bearer_token(authorization) {
        None => Err(AuthError::Missing),
        Some(token) if matches_key(token, publish_key) => Ok(Caller::Service),
        Some(token) => match tokens.verify(token)? {
            claims if claims.publish => Ok(Caller::Service),
            claims => Ok(Caller::User(Tokens::credential_of(claims))),
        },
    }
}

fn matches_key(candidate: &str, key: Option<&Secret>) -> bool {
    key.is_some_and(|key| bool::from(candidate.as_bytes().ct_eq(key.expose().as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::{
        Engine, engine::general_purpose::STANDARD, engine::general_purpose::URL_SAFE_NO_PAD,
    };

    fn claims(sub: &str, exp: u64) -> Claims {
        Claims {
            sub: sub.into(),
            exp,
            ..Claims::default()
        }
    }

    fn in_a_minute() -> u64 {
        epoch_secs(SystemTime::now()) + 60
    }

    #[test]
    fn issued_tokens_verify_and_name_their_user() {
        let tokens = Tokens::new("secret", Duration::from_secs(60));
        let (token, _) = tokens.issue("alice").expect("HS256 signs");
        assert_eq!(
            tokens.verify(&token).map(|c| c.sub),
            Ok("alice".to_string())
        );
    }

    #[test]
    fn forged_expired_and_not_yet_valid_tokens_are_refused() {
        let ours = Tokens::new("secret", Duration::from_secs(60));
        let theirs = Tokens::new("other secret", Duration::from_secs(60));
        let (forged, _) = theirs.issue("alice").expect("signs");
        assert_eq!(ours.verify(&forged).map(|c| c.sub), Err(AuthError::Invalid));

        let expired = ours
            .sign(&claims("alice", epoch_secs(SystemTime::now()) - 120))
            .expect("signs");
        assert_eq!(
            ours.verify(&expired).map(|c| c.sub),
            Err(AuthError::Expired)
        );
        let early = ours
            .sign(&Claims {
                nbf: Some(in_a_minute() + 600),
                ..claims("alice", in_a_minute() + 3600)
            })
            .expect("signs");
        assert_eq!(ours.verify(&early).map(|c| c.sub), Err(AuthError::Invalid));
        assert_eq!(
            ours.verify("not.a.jwt").map(|c| c.sub),
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_nothing_else_is_a_bearer() {
        assert_eq!(bearer_token(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(Some("BEARER abc")), Some("abc"));
        assert_eq!(bearer_token(Some("bearer   abc ")), Some("abc"));
        assert_eq!(bearer_token(Some("Basic abc")), None);
        assert_eq!(bearer_token(Some("Bearer ")), None);
        assert_eq!(bearer_token(Some("")), None);
        assert_eq!(bearer_token(None), None);
    }

    #[test]
    fn publish_key_comparison() {
        let key = Secret::new("pk");
        assert!(matches_key("pk", Some(&key)));
        assert!(!matches_key("pk2", Some(&key)));
        assert!(!matches_key("pk", None));
    }

    /// An Ed25519 key pair from a fixed seed: the signing key (PKCS#8 DER), its JWK and
    /// its public key as a PEM file's text.
    fn ed25519(seed: u8) -> (EncodingKey, Jwk, String) {
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend([seed; 32]);
        let signing = EncodingKey::from_ed_der(&der);
        let jwk =
            Jwk::from_encoding_key(&signing, Algorithm::EdDSA).expect("a JWK of an Ed25519 key");
        let x = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(okp) => okp.x.clone(),
            other => panic!("not an OKP key: {other:?}"),
        };
        let mut spki = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        spki.extend(URL_SAFE_NO_PAD.decode(x).expect("base64url x"));
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(spki)
        );
        (signing, jwk, pem)
    }

    fn signed(key: &EncodingKey, kid: Option<&str>, claims: &Claims) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, key).expect("EdDSA signs")
    }

    fn settings_with(files: &[(&str, &str)]) -> (Settings, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("auth-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut settings = Settings::for_tests();
        settings.dev_tokens = false;
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write key file");
            match *name {
                "key.pem" => {
                    settings.jwt_public_key_file = Some(path);
                    settings.jwt_algorithm = Some(KeyAlgorithm::EdDsa);
                }
                _ => settings.jwt_jwks_file = Some(path),
            }
        }
        (settings, dir)
    }

    #[test]
    fn tokens_signed_by_the_host_applications_private_key_verify_with_its_pem_public_key() {
        let (private, _, pem) = ed25519(7);
        let (settings, dir) = settings_with(&[("key.pem", &pem)]);
        let tokens = Tokens::from_settings(&settings).expect("PEM loads");
        let token = signed(&private, None, &claims("alice", in_a_minute()));
        assert_eq!(tokens.verify(&token).map(|c| c.sub), Ok("alice".into()));

        let (stranger, _, _) = ed25519(8);
        let forged = signed(&stranger, None, &claims("alice", in_a_minute()));
        assert_eq!(
            tokens.verify(&forged).map(|c| c.sub),
            Err(AuthError::Invalid)
        );
        // No HS256 secret is configured: an HS256 token cannot be checked, so it fails,
        // and no token can be minted here.
        let hs = Tokens::new("whatever-secret", Duration::from_secs(60));
        let hs_token = hs.issue("alice").expect("signs").0;
        assert_eq!(
            tokens.verify(&hs_token).map(|c| c.sub),
            Err(AuthError::Invalid)
        );
        assert!(tokens.issue("alice").is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_jwks_file_picks_the_key_by_kid() {
        let (first, mut first_jwk, _) = ed25519(1);
        let (second, mut second_jwk, _) = ed25519(2);
        first_jwk.common.key_id = Some("2026-01".into());
        second_jwk.common.key_id = Some("2026-06".into());
        let set = JwkSet {
            keys: vec![first_jwk, second_jwk],
        };
        let json = serde_json::to_string(&set).expect("JWKS serializes");
        let (settings, dir) = settings_with(&[("keys.json", &json)]);
        let tokens = Tokens::from_settings(&settings).expect("JWKS loads");
        for (key, kid) in [(&first, "2026-01"), (&second, "2026-06")] {
            let token = signed(key, Some(kid), &claims("bob", in_a_minute()));
            assert_eq!(
                tokens.verify(&token).map(|c| c.sub),
                Ok("bob".into()),
                "{kid}"
            );
        }
        let wrong_kid = signed(&first, Some("2026-06"), &claims("bob", in_a_minute()));
        assert_eq!(
            tokens.verify(&wrong_kid).map(|c| c.sub),
            Err(AuthError::Invalid)
        );
        let unknown_kid = signed(&first, Some("1999"), &claims("bob", in_a_minute()));
        assert_eq!(
            tokens.verify(&unknown_kid).map(|c| c.sub),
            Err(AuthError::Invalid)
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let mut settings = Settings::for_tests();
        settings.jwt_secret = Some(Secret::new("0123456789abcdef0123456789abcdef"));
        settings.jwt_audience = Some("events".into());
        settings.jwt_issuer = Some("https://app.example".into());
        let tokens = Tokens::from_settings(&settings).expect("loads");
        let good = Claims {
            aud: Some(serde_json::json!(["billing", "events"])),
            iss: Some("https://app.example".into()),
            ..claims("carol", in_a_minute())
        };
        let sign = |c: &Claims| tokens.sign(c).expect("signs");
        assert!(tokens.verify(&sign(&good)).is_ok());
        for bad in [
            Claims {
                aud: Some(serde_json::json!("billing")),
                ..good.clone()
            },
            Claims {
                aud: None,
                ..good.clone()
            },
            Claims {
                iss: Some("https://evil.example".into()),
                ..good.clone()
            },
            Claims {
                iss: None,
                ..good.clone()
            },
        ] {
            assert_eq!(
                tokens.verify(&sign(&bad)).map(|c| c.sub),
                Err(AuthError::Invalid),
                "{bad:?}"
            );
        }
        // Minted development tokens carry the configured audience and issuer.
        let (minted, _) = tokens.issue("carol").expect("signs");
        assert!(tokens.verify(&minted).is_ok());
    }
}
