//! Settings, from command-line flags or the environment (flags win).

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, ValueEnum};

/// The longest `SERVER_ID`. Every event carries it, and the relays size their gate by it
/// (see `admission`). A derived id (`<hostname>-<port>`) is at most 253 + 6.
pub const MAX_SERVER_ID_CHARS: usize = 260;

/// Signing secret used when dev tokens are on and no `JWT_SECRET` is given. Public on
/// purpose: with dev tokens on, anyone may mint a token for any user anyway. Refused
/// whenever dev tokens are off.
pub const DEV_JWT_SECRET: &str = "insecure-development-secret-do-not-use-in-production";

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

    /// Redis to fan out through and store in: one node (redis://127.0.0.1:6379,
    /// rediss://...), a Redis Cluster (redis-cluster://host:port?node=host2:port2, any
    /// of its nodes as seeds), or a master found through Sentinels
    /// (redis-sentinel://host:26379?sentinelServiceName=name&node=host2:26379).
    /// Absent: single node, in-process bus and in-memory store.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<Secret>,

    /// Replicas that must hold an event (Redis `WAIT`) before it is published and the
    /// publish answered 202, so that an accepted event survives the loss of its master.
    /// 0: acknowledged once the master has it.
    #[arg(long, env = "PUBLISH_REPLICAS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=16))]
    pub publish_replicas: u64,

    /// Also deliver what other services publish the original design's way (`PUBLISH
    /// user-events` / `system-events` with an envelope): live only, without an id, and
    /// received by every instance whether it serves the user or not.
    #[arg(long, env = "LEGACY_CHANNELS", default_value_t = false, action = ArgAction::Set)]
    pub legacy_channels: bool,

    /// HS256 secret that verifies (and, for dev tokens, signs) tokens, 32+ bytes. With dev
    /// tokens off, this or a public key (file or JWKS) is required.
    #[arg(long, env = "JWT_SECRET")]
    pub jwt_secret: Option<Secret>,

    /// PEM file of the public key that verifies tokens signed by the host application
    /// (with JWT_ALGORITHM).
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Algorithm of JWT_PUBLIC_KEY_FILE.
    #[arg(long, env = "JWT_ALGORITHM", value_enum)]
    pub jwt_algorithm: Option<KeyAlgorithm>,

    /// Local JWKS file (`{"keys": [...]}`) of public keys that verify tokens; a token's
    /// `kid` picks its key.
    #[arg(long, env = "JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,

    /// Required `aud` of every token, when set.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` of every token, when set.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Serve POST /api/auth/token, which mints a token for any user id. Development only:
    /// off unless set to true.
    #[arg(long, env = "DEV_TOKENS", default_value_t = false, action = ArgAction::Set)]
    pub dev_tokens: bool,

    /// API key that lets other services call POST /api/publish (as a Bearer token in the
    /// Authorization header).
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

    /// Single node only: MiB of events kept in memory across all histories. Past it, the
    /// histories published to least recently lose their events first (their clients
    /// resume with `stream.resync`). With Redis, Redis's own `maxmemory` applies.
    #[arg(long, env = "HISTORY_MAX_MEMORY_MIB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub history_max_memory_mib: u64,

    /// Seconds over which open streams are closed at shutdown (SIGTERM), so their
    /// clients reconnect elsewhere gradually.
    #[arg(long, env = "DRAIN_SECS", default_value_t = 5)]
    pub drain_secs: u64,

    /// Reconnection delay suggested to browsers (the SSE `retry:` field), in milliseconds.
    #[arg(long, env = "SSE_RETRY_MS", default_value_t = 2000)]
    pub sse_retry_ms: u64,

    /// Lifetime of minted development tokens, in seconds (at most a day).
    #[arg(long, env = "TOKEN_TTL_SECS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub token_ttl_secs: u64,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// Largest `data` of one event (its JSON), in bytes; larger publishes get 413 and
    /// larger raw messages on Redis are dropped.
    #[arg(long, env = "MAX_EVENT_BYTES", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub max_event_bytes: u64,

    /// Streams one user may hold open on one instance; more get 429.
    #[arg(long, env = "MAX_STREAMS_PER_USER", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_streams_per_user: u64,

    /// Streams this instance holds at most; beyond it new streams get 503 and /readyz
    /// says not ready, so the load balancer sends them elsewhere.
    #[arg(long, env = "MAX_STREAMS", default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub max_streams: u64,

    /// Shed streams (each told to reconnect, and served elsewhere) while this instance
    /// holds more than this many times the fleet's mean, down to the mean; 0: never.
    #[arg(long, env = "REBALANCE_ABOVE", default_value_t = 1.2, value_parser = parse_ratio)]
    pub rebalance_above: f64,

    /// Streams shed per second at most while rebalancing.
    #[arg(long, env = "REBALANCE_RATE", default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub rebalance_rate: u64,

    /// Refuse to start when the open-file limit (raised at start to its hard limit) is
    /// below MAX_STREAMS plus headroom; by default the instance holds fewer streams.
    #[arg(long, env = "FILE_LIMIT_STRICT", default_value_t = false, action = ArgAction::Set)]
    pub file_limit_strict: bool,

    /// Accounts one user may create; more get 409.
    #[arg(long, env = "MAX_ACCOUNTS_PER_USER", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_accounts_per_user: u64,

    /// Events replayed to one resuming stream at most; a stream that missed more gets
    /// `stream.resync` and the latest this many.
    #[arg(long, env = "MAX_REPLAY", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_replay: u64,

    /// Events one user may publish per second with their own token (to the topics of
    /// their `publishTopics` claim), on one instance; more get 429. The publish key and
    /// `publish` tokens are not limited.
    #[arg(long, env = "USER_PUBLISH_RATE", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub user_publish_rate: u64,

    /// Topics one stream may carry (`?topic=`, repeated); more get 400 `too_many_topics`.
    #[arg(long, env = "MAX_TOPICS_PER_STREAM", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=events::MAX_CURSOR_TOPICS as u64))]
    pub max_topics_per_stream: u64,

    /// The host application's topic authorization endpoint, asked (`POST {userId,
    /// topics}` → `{topics: [the allowed ones]}`) about the topics a token's `topics` claim
    /// does not allow. Unset: the claim alone decides.
    #[arg(long, env = "TOPIC_AUTH_URL")]
    pub topic_auth_url: Option<reqwest::Url>,

    /// Seconds each answer of TOPIC_AUTH_URL is kept, per user and topic (allowed or not).
    #[arg(long, env = "TOPIC_AUTH_CACHE_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub topic_auth_cache_secs: u64,

    /// Milliseconds TOPIC_AUTH_URL has to answer; later (or failing) is a 503 for the
    /// stream, never "allowed".
    #[arg(long, env = "TOPIC_AUTH_TIMEOUT_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub topic_auth_timeout_ms: u64,

    /// Topics whose presence is kept (who holds a stream of them, on any instance: `GET
    /// /api/topics/{topic}/presence`), as comma-separated patterns like a token's
    /// `topics` claim: `*` every topic, `room:*` a namespace; empty: none.
    #[arg(
        long,
        env = "PRESENCE_TOPICS",
        default_value = "*",
        value_delimiter = ','
    )]
    pub presence_topics: Vec<String>,

    /// Topics (of those whose presence is kept) whose subscribers receive `stream.joined`
    /// and `stream.left` as users arrive and leave, as comma-separated patterns; empty:
    /// none. Opt in per namespace: a topic of 100,000 subscribers would get 100,000 joins.
    #[arg(
        long,
        env = "PRESENCE_EVENTS",
        default_value = "",
        value_delimiter = ','
    )]
    pub presence_events: Vec<String>,

    /// Milliseconds a user stays present after their last stream of a topic closes: a
    /// reload (or a reconnection to another instance) within it neither leaves nor joins.
    #[arg(long, env = "PRESENCE_GRACE_MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub presence_grace_ms: u64,

    /// Seconds within which the users of an instance that died (`kill -9`, power loss)
    /// leave the topics they were in, swept by any other instance; and within which
    /// presence is rebuilt after Redis lost it.
    #[arg(long, env = "PRESENCE_TTL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(2..=3600))]
    pub presence_ttl_secs: u64,

    /// Users listed in a presence answer at most (`truncated: true` beyond; `count` is
    /// always exact).
    #[arg(long, env = "PRESENCE_LIST_MAX", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub presence_list_max: u64,

    /// Seconds a client may take to send a request head, in all, from its first byte (on
    /// every request of a connection).
    #[arg(long, env = "REQUEST_HEAD_TIMEOUT_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub request_head_timeout_secs: u64,

    /// Seconds a client may take to send a request body, in all, once its head is read;
    /// a later body is answered 408 and its connection closed.
    #[arg(long, env = "REQUEST_BODY_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub request_body_timeout_secs: u64,

    /// Serve /metrics on this address only (e.g. 127.0.0.1:9100), not on the public port.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Directory of the web client's release build (`trunk build --release` → dist/) to
    /// serve at `/`. Unset: only the API is served (nginx serves the page).
    #[arg(long, env = "WEB_DIR")]
    pub web_dir: Option<std::path::PathBuf>,

    /// HTTP worker threads [default: one per core].
    #[arg(long, env = "WORKERS", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub workers: Option<u64>,

    /// Copy the histories kept under the partition tags of versions before topics to
    /// today's keys in REDIS_URL, print what was done, and exit (see the README's
    /// "Upgrading"). Run once, with no instance running.
    #[arg(long, default_value_t = false)]
    pub migrate_partitions: bool,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The public-key algorithms a PEM key file can be for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyAlgorithm {
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
    #[value(name = "EdDSA")]
    EdDsa,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings that cannot work together.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "no way to verify tokens: set JWT_SECRET (32+ bytes), JWT_PUBLIC_KEY_FILE or \
         JWT_JWKS_FILE (or DEV_TOKENS=true for development)"
    )]
    MissingJwtSecret,
    #[error("JWT_SECRET must be at least 32 bytes")]
    WeakJwtSecret,
    #[error("JWT_SECRET is the public development secret; it is refused unless DEV_TOKENS=true")]
    DevSecretInProduction,
    #[error("JWT_PUBLIC_KEY_FILE needs JWT_ALGORITHM (RS256, ES256 or EdDSA)")]
    MissingKeyAlgorithm,
    #[error(
        "REDIS_URL must start with redis://, rediss://, redis-cluster://, rediss-cluster://, \
         redis-sentinel:// or rediss-sentinel://"
    )]
    BadRedisUrl,
    #[error("SERVER_ID must be 1 to {MAX_SERVER_ID_CHARS} characters from A-Z a-z 0-9 _ - . : @")]
    BadServerId,
    #[error(
        "TOPIC_AUTH_URL must be an http:// URL (the host application on the private network; \
         this build has no TLS client)"
    )]
    BadTopicAuthUrl,
    #[error("{0}: each pattern is a topic name, or a prefix of one followed by `*` (e.g. room:*)")]
    BadPresencePattern(&'static str),
}

impl Settings {
    /// The declared defaults, ignoring the environment (so that a developer's
    /// `REDIS_URL` or `PORT` never leaks into a test), with what tests need on top:
    /// loopback and a free port, dev tokens, a short drain, one worker.
    pub fn for_tests() -> Self {
        let defaults = Self::from_args_only(["backend"])
            .unwrap_or_else(|error| unreachable!("no arguments always parse: {error}"));
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            dev_tokens: true,
            drain_secs: 1,
            workers: Some(1),
            // Instances of one test would shed each other's streams: the tests of
            // rebalancing turn it on.
            rebalance_above: 0.0,
            ..defaults
        }
    }

    /// Settings from `args` alone, every default as declared above: the environment is
    /// not read.
    pub fn from_args_only<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let command = Self::command().mut_args(|arg| arg.env(None));
        Self::from_arg_matches(&command.try_get_matches_from(args)?)
    }

    pub fn check(&self) -> Result<(), SettingsError> {
        if let Some(secret) = &self.jwt_secret {
            if secret.expose() == DEV_JWT_SECRET && !self.dev_tokens {
                return Err(SettingsError::DevSecretInProduction);
            }
            if secret.expose().len() < 32 && !self.dev_tokens {
                return Err(SettingsError::WeakJwtSecret);
            }
        }
        let public_keys = self.jwt_public_key_file.is_some() || self.jwt_jwks_file.is_some();
        if !self.dev_tokens && self.jwt_secret.is_none() && !public_keys {
            return Err(SettingsError::MissingJwtSecret);
        }
        if self.jwt_public_key_file.is_some() && self.jwt_algorithm.is_none() {
            return Err(SettingsError::MissingKeyAlgorithm);
        }
        if let Some(server_id) = &self.server_id {
            let allowed =
                |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@');
            if server_id.is_empty()
                || server_id.chars().count() > MAX_SERVER_ID_CHARS
                || !server_id.chars().all(allowed)
            {
                return Err(SettingsError::BadServerId);
            }
        }
        if let Some(url) = &self.redis_url
            && !REDIS_SCHEMES
                .iter()
                .any(|scheme| url.expose().starts_with(scheme))
        {
            return Err(SettingsError::BadRedisUrl);
        }
        if self
            .topic_auth_url
            .as_ref()
            .is_some_and(|url| url.scheme() != "http")
        {
            return Err(SettingsError::BadTopicAuthUrl);
        }
        for (setting, patterns) in [
            ("PRESENCE_TOPICS", &self.presence_topics),
            ("PRESENCE_EVENTS", &self.presence_events),
        ] {
            if !patterns
                .iter()
                .filter(|pattern| !pattern.trim().is_empty())
                .all(|pattern| events::is_topic_pattern(pattern.trim()))
            {
                return Err(SettingsError::BadPresencePattern(setting));
            }
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

    /// The HS256 secret, if tokens are verified with one: `JWT_SECRET`, or the public
    /// development secret when dev tokens are on and no key of any kind is configured.
    pub fn hs256_secret(&self) -> Option<&str> {
        match &self.jwt_secret {
            Some(secret) => Some(secret.expose()),
            None if self.dev_tokens => Some(DEV_JWT_SECRET),
            None => None,
        }
    }

    /// Every setting in force that a public deployment must not run with, for the
    /// startup log to shout about.
    pub fn insecure_settings(&self) -> Vec<&'static str> {
        let mut found = Vec::new();
        if self.dev_tokens {
            found.push(
                "DEV_TOKENS=true: anyone can mint a token for any user at POST /api/auth/token",
            );
        }
        if self.jwt_secret.as_ref().map(Secret::expose) == Some(DEV_JWT_SECRET)
            || (self.jwt_secret.is_none() && self.dev_tokens)
        {
            found.push("tokens are signed with the public development secret (JWT_SECRET unset)");
        }
        if self.metrics_addr.is_none() {
            found.push("METRICS_ADDR unset: /metrics is served on the public port");
        }
        if let Some(url) = &self.redis_url
            && (url.expose().starts_with("redis://")
                || url.expose().starts_with("redis-cluster://"))
            && !redis_hosts_are_loopback(url.expose())
        {
            found.push(
                "REDIS_URL is plain redis:// to another host: use rediss:// (TLS), or \
                 rediss-cluster://",
            );
        }
        found
    }

    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_secs)
    }

    /// The single node's memory bound on histories, in bytes.
    pub fn history_max_memory_bytes(&self) -> usize {
        usize::try_from(self.history_max_memory_mib.saturating_mul(1024 * 1024))
            .unwrap_or(usize::MAX)
    }

    /// One line describing the effective configuration, secrets left out: every field as
    /// declared (a `Secret` prints redacted), so a new setting shows up here by itself,
    /// and where Redis is, without its password.
    pub fn summary(&self) -> String {
        let redis = match &self.redis_url {
            Some(url) => redact_url(url.expose()),
            None => "none (single node: in-process bus, in-memory store)".into(),
        };
        format!("redis at {redis}; {self:?}")
    }
}

/// The URL schemes fred takes: one node, or a cluster (its seeds in `node=` parameters).
/// `REBALANCE_ABOVE`: 0 (off), or a ratio of 1 or more.
fn parse_ratio(value: &str) -> Result<f64, String> {
    let ratio: f64 = value
        .parse()
        .map_err(|_| format!("{value:?} is not a number"))?;
    if ratio == 0.0 || (ratio.is_finite() && ratio >= 1.0) {
        Ok(ratio)
    } else {
        Err("must be 0 (off) or 1 or more, e.g. 1.2".into())
    }
}

const REDIS_SCHEMES: [&str; 6] = [
    "redis://",
    "rediss://",
    "redis-cluster://",
    "rediss-cluster://",
    "redis-sentinel://",
    "rediss-sentinel://",
];

/// Whether every host a Redis URL names (a cluster's seeds included) is this machine.
fn redis_hosts_are_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let (address, query) = host_port.split_once('?').unwrap_or((host_port, ""));
    let first = address.split('/').next().unwrap_or_default();
    let seeds = query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("node="));
    std::iter::once(first).chain(seeds).all(|host_port| {
        let host = host_port
            .rsplit_once(':')
            .map_or(host_port, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    })
}

/// Hides the password of `scheme://user:password@host/...`.
fn redact_url(url: &str) -> String {
    let url = match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_string(),
    };
    // A Sentinel's credentials travel in the query (`sentinelPassword=`).
    let Some((address, query)) = url.split_once('?') else {
        return url;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if name.to_ascii_lowercase().contains("password") => {
                format!("{name}=***")
            }
            _ => pair.to_string(),
        })
        .collect();
    format!("{address}?{}", query.join("&"))
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

    /// Settings from `args` alone, so a developer's shell (`JWT_SECRET`, `DEV_TOKENS`,
    /// ...) cannot change what these tests see.
    fn parse_from<const N: usize>(args: [&str; N]) -> Settings {
        Settings::from_args_only(args).expect("the arguments parse")
    }

    #[test]
    fn a_sentinel_password_in_the_query_is_never_printed() {
        let shown = redact_url(
            "redis-sentinel://u:secret1@h:26379?sentinelServiceName=m&sentinelPassword=secret2&node=h2:26379",
        );
        assert!(
            !shown.contains("secret1") && !shown.contains("secret2"),
            "{shown}"
        );
        assert!(shown.contains("sentinelServiceName=m") && shown.contains("node=h2:26379"));
    }

    #[test]
    fn summary_never_shows_secrets() {
        let settings = parse_from([
            "backend",
            "--dev-tokens",
            "false",
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
        let no_secret = parse_from(["backend", "--dev-tokens", "false"]);
        assert!(matches!(
            no_secret.check(),
            Err(SettingsError::MissingJwtSecret)
        ));
        let weak = parse_from(["backend", "--dev-tokens", "false", "--jwt-secret", "x"]);
        assert!(matches!(weak.check(), Err(SettingsError::WeakJwtSecret)));
        let bad_url = parse_from([
            "backend",
            "--dev-tokens",
            "true",
            "--redis-url",
            "localhost:6379",
        ]);
        assert!(matches!(bad_url.check(), Err(SettingsError::BadRedisUrl)));
        let strong = "0123456789abcdef0123456789abcdef";
        let ok = parse_from(["backend", "--dev-tokens", "false", "--jwt-secret", strong]);
        assert!(ok.check().is_ok());
    }

    #[test]
    fn dev_tokens_are_off_unless_asked_for_and_the_dev_secret_only_works_with_them() {
        let defaults = parse_from([
            "backend",
            "--jwt-secret",
            "0123456789abcdef0123456789abcdef",
        ]);
        assert!(!defaults.dev_tokens, "minting tokens is opt-in");
        let dev_secret = parse_from([
            "backend",
            "--dev-tokens",
            "false",
            "--jwt-secret",
            DEV_JWT_SECRET,
        ]);
        assert!(matches!(
            dev_secret.check(),
            Err(SettingsError::DevSecretInProduction)
        ));
        let dev = parse_from(["backend", "--dev-tokens", "true"]);
        assert!(dev.check().is_ok());
        assert_eq!(dev.hs256_secret(), Some(DEV_JWT_SECRET));
        let insecure = dev.insecure_settings();
        assert!(
            insecure.iter().any(|s| s.contains("DEV_TOKENS")),
            "{insecure:?}"
        );
        assert!(
            insecure.iter().any(|s| s.contains("development secret")),
            "{insecure:?}"
        );
    }

    #[test]
    fn a_public_key_alone_verifies_tokens_in_production() {
        let pem = parse_from([
            "backend",
            "--dev-tokens",
            "false",
            "--jwt-public-key-file",
            "k.pem",
        ]);
        assert!(matches!(
            pem.check(),
            Err(SettingsError::MissingKeyAlgorithm)
        ));
        let pem = parse_from([
            "backend",
            "--dev-tokens",
            "false",
            "--jwt-public-key-file",
            "k.pem",
            "--jwt-algorithm",
            "EdDSA",
        ]);
        assert!(pem.check().is_ok());
        assert_eq!(
            pem.hs256_secret(),
            None,
            "no HS256 secret to forge tokens with"
        );
    }

    #[test]
    fn plain_redis_is_insecure_only_towards_another_host() {
        for (url, insecure) in [
            ("redis://127.0.0.1:6379", false),
            ("redis://:pw@localhost:6379/0", false),
            ("redis://redis:6379", true),
            ("rediss://redis:6379", false),
            ("redis-cluster://127.0.0.1:7000?node=127.0.0.1:7001", false),
            ("redis-cluster://127.0.0.1:7000?node=redis-2:7001", true),
            ("rediss-cluster://redis-1:7000?node=redis-2:7001", false),
        ] {
            let settings = parse_from(["backend", "--dev-tokens", "true", "--redis-url", url]);
            let found = settings
                .insecure_settings()
                .iter()
                .any(|s| s.contains("REDIS_URL"));
            assert_eq!(found, insecure, "{url}");
        }
    }

    #[test]
    fn server_ids_are_bounded_plain_names() {
        let named =
            |id: &str| parse_from(["backend", "--dev-tokens", "true", "--server-id", id]).check();
        assert!(named("backend-1").is_ok());
        assert!(named(&"b".repeat(MAX_SERVER_ID_CHARS)).is_ok());
        for bad in [
            "",
            "two words",
            "line\nbreak",
            &"b".repeat(MAX_SERVER_ID_CHARS + 1),
        ] {
            assert!(
                matches!(named(bad), Err(SettingsError::BadServerId)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn server_id_defaults_to_host_and_port() {
        let settings = parse_from(["backend"]);
        assert!(settings.server_id_for(3002).ends_with("-3002"));
        let named = parse_from(["backend", "--server-id", "backend-1"]);
        assert_eq!(named.server_id_for(3002), "backend-1");
    }
}
