//! Settings, from command-line flags or the environment (flags win).

use std::{fmt, net::IpAddr, str::FromStr, time::Duration};

use clap::{ArgAction, Parser, ValueEnum};

/// Signing secret used when dev tokens are on and no `JWT_SECRET` is given. Public on
/// purpose: with dev tokens on, anyone may mint a token for any user anyway.
const DEV_JWT_SECRET: &str = "insecure-development-secret-do-not-use-in-production";

#[derive(Debug, Clone, Parser)]
#[command(
    name = "backend",
    version,
    about = "Per-user Server-Sent Events, fanned out through Redis"
)]
pub struct Settings {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,

    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 3000)]
    pub port: u16,

    /// Name of this instance in logs and events [default: <hostname>-<port>].
    #[arg(long, env = "SERVER_ID")]
    pub server_id: Option<String>,

    /// Redis to fan out through and store in, e.g. redis://127.0.0.1:6379 or rediss://...
    /// Absent: single node, in-process bus and in-memory store.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<Secret>,

    /// HS256 secret that signs and verifies tokens; required when dev tokens are off.
    #[arg(long, env = "JWT_SECRET")]
    pub jwt_secret: Option<Secret>,

    /// Serve POST /api/auth/token, which mints a token for any user id (development only).
    #[arg(long, env = "DEV_TOKENS", default_value_t = true, action = ArgAction::Set)]
    pub dev_tokens: bool,

    /// API key that lets other services call POST /api/publish (as a Bearer token).
    #[arg(long, env = "PUBLISH_KEY")]
    pub publish_key: Option<Secret>,

    /// Seconds between keep-alive comments on idle streams.
    #[arg(long, env = "KEEP_ALIVE_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub keep_alive_secs: u64,

    /// Events buffered per stream before a slow stream is closed.
    #[arg(long, env = "STREAM_QUEUE_SIZE", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub stream_queue_size: u64,

    /// Events kept per user (and for broadcasts) for streams to resume from.
    #[arg(long, env = "HISTORY_MAX_LEN", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub history_max_len: u64,

    /// Seconds an event is kept for streams to resume from.
    #[arg(long, env = "HISTORY_MAX_AGE_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub history_max_age_secs: u64,

    /// Seconds over which open streams are closed at shutdown (SIGTERM), so their
    /// clients reconnect elsewhere gradually.
    #[arg(long, env = "DRAIN_SECS", default_value_t = 5)]
    pub drain_secs: u64,

    /// Reconnection delay suggested to browsers (the SSE `retry:` field), in milliseconds.
    #[arg(long, env = "SSE_RETRY_MS", default_value_t = 2000)]
    pub sse_retry_ms: u64,

    /// Lifetime of minted tokens, in seconds.
    #[arg(long, env = "TOKEN_TTL_SECS", default_value_t = 12 * 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub token_ttl_secs: u64,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Directory of the web client's release build (`trunk build --release` → dist/) to
    /// serve at `/`. Unset: only the API is served (nginx serves the page).
    #[arg(long, env = "WEB_DIR")]
    pub web_dir: Option<std::path::PathBuf>,

    /// HTTP worker threads [default: one per core].
    #[arg(long, env = "WORKERS")]
    pub workers: Option<usize>,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings that cannot work together.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("JWT_SECRET is required when DEV_TOKENS=false")]
    MissingJwtSecret,
    #[error("JWT_SECRET must be at least 32 bytes when DEV_TOKENS=false")]
    WeakJwtSecret,
    #[error("REDIS_URL must start with redis:// or rediss://")]
    BadRedisUrl,
}

impl Settings {
    /// The documented defaults on loopback and a free port, ignoring the environment, so
    /// that a developer's `REDIS_URL` or `PORT` never leaks into a test.
    pub fn for_tests() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            server_id: None,
            redis_url: None,
            jwt_secret: None,
            dev_tokens: true,
            publish_key: None,
            keep_alive_secs: 15,
            stream_queue_size: 256,
            sse_retry_ms: 2000,
            history_max_len: 1000,
            history_max_age_secs: 3600,
            drain_secs: 1,
            token_ttl_secs: 12 * 3600,
            max_body_bytes: 64 * 1024,
            web_dir: None,
            workers: Some(1),
            log_format: LogFormat::Text,
        }
    }

    pub fn check(&self) -> Result<(), SettingsError> {
        if !self.dev_tokens {
            match &self.jwt_secret {
                None => return Err(SettingsError::MissingJwtSecret),
                Some(secret) if secret.expose().len() < 32 => {
                    return Err(SettingsError::WeakJwtSecret);
                }
                Some(_) => {}
            }
        }
        if let Some(url) = &self.redis_url
            && !(url.expose().starts_with("redis://") || url.expose().starts_with("rediss://"))
        {
            return Err(SettingsError::BadRedisUrl);
        }
        Ok(())
    }

    /// The configured server id, or `<hostname>-<port>` for the port actually bound.
    pub fn server_id_for(&self, bound_port: u16) -> String {
        self.server_id.clone().unwrap_or_else(|| {
            let host = gethostname::gethostname().to_string_lossy().into_owned();
            format!("{host}-{bound_port}")
        })
    }

    /// The token signing secret, and whether it is the public development default.
    pub fn signing_secret(&self) -> (&str, bool) {
        match &self.jwt_secret {
            Some(secret) => (secret.expose(), false),
            None => (DEV_JWT_SECRET, true),
        }
    }

    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_secs)
    }

    pub fn retention(&self) -> crate::bus::Retention {
        crate::bus::Retention {
            max_len: self.history_max_len,
            max_age: Duration::from_secs(self.history_max_age_secs),
        }
    }

    /// One line describing the effective configuration, secrets left out.
    pub fn summary(&self) -> String {
        let redis = match &self.redis_url {
            Some(url) => redact_url(url.expose()),
            None => "none (single node: in-process bus, in-memory store)".into(),
        };
        format!(
            "host={} port={} redis={} dev_tokens={} jwt_secret={} publish_key={} keep_alive={}s \
             stream_queue_size={} history_max_len={} history_max_age={}s drain={}s sse_retry={}ms \
             token_ttl={}s max_body={}B web_dir={} workers={} log_format={:?}",
            self.host,
            self.port,
            redis,
            self.dev_tokens,
            if self.jwt_secret.is_some() {
                "set"
            } else {
                "development default"
            },
            if self.publish_key.is_some() {
                "set"
            } else {
                "unset"
            },
            self.keep_alive_secs,
            self.stream_queue_size,
            self.history_max_len,
            self.history_max_age_secs,
            self.drain_secs,
            self.sse_retry_ms,
            self.token_ttl_secs,
            self.max_body_bytes,
            self.web_dir
                .as_ref()
                .map_or_else(|| "none".to_string(), |d| d.display().to_string()),
            self.workers
                .map_or_else(|| "auto".to_string(), |w| w.to_string()),
            self.log_format,
        )
    }
}

/// Hides the password of `scheme://user:password@host/...`.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// A value that must never be printed: its `Debug` and `Display` are redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_never_shows_secrets() {
        let settings = Settings::parse_from([
            "backend",
            "--redis-url",
            "redis://default:hunter2@redis:6379/0",
            "--jwt-secret",
            "s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t",
            "--publish-key",
            "pk-123",
        ]);
        let summary = settings.summary();
        assert!(!summary.contains("hunter2"), "{summary}");
        assert!(!summary.contains("s3cr3t"), "{summary}");
        assert!(!summary.contains("pk-123"), "{summary}");
        assert!(summary.contains("redis://***@redis:6379/0"), "{summary}");
        assert!(!format!("{settings:?}").contains("hunter2"));
    }

    #[test]
    fn production_mode_needs_a_strong_secret() {
        let no_secret = Settings::parse_from(["backend", "--dev-tokens", "false"]);
        assert!(matches!(
            no_secret.check(),
            Err(SettingsError::MissingJwtSecret)
        ));
        let weak = Settings::parse_from(["backend", "--dev-tokens", "false", "--jwt-secret", "x"]);
        assert!(matches!(weak.check(), Err(SettingsError::WeakJwtSecret)));
        let bad_url = Settings::parse_from(["backend", "--redis-url", "localhost:6379"]);
        assert!(matches!(bad_url.check(), Err(SettingsError::BadRedisUrl)));
        assert!(Settings::parse_from(["backend"]).check().is_ok());
    }

    #[test]
    fn server_id_defaults_to_host_and_port() {
        let settings = Settings::parse_from(["backend"]);
        assert!(settings.server_id_for(3002).ends_with("-3002"));
        let named = Settings::parse_from(["backend", "--server-id", "backend-1"]);
        assert_eq!(named.server_id_for(3002), "backend-1");
    }
}
