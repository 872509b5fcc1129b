//! The test harness, by concern: private redis-server processes (`redis`), backend
//! instances in this process (`instance`) and as processes (`process`), the HTTP API of
//! any of them (`api`), SSE streams (`sse`), clients that act over time (`traffic`),
//! tokens (`tokens`), and waiting on conditions (`wait`).

mod api;
mod instance;
mod process;
mod redis;
mod sse;
mod tokens;
mod traffic;
mod wait;

use std::time::Duration;

pub use backend::Settings;

pub use self::{
    api::{Api, metric_value},
    instance::{TestApp, settings, settings_for, spawn_app, spawn_app_with},
    process::{BackendProcess, readiness_becomes},
    redis::{RedisCluster, RedisSentinels, RedisServer, cli, free_port},
    sse::{Frame, FrameJson, SseStream},
    tokens::{epoch_secs, sign},
    traffic::{Received, counted, follow, publish_counted},
    wait::{eventually, holds_within},
};

/// The secret test instances sign tokens with (tests mint their own tokens with it too).
pub const JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";
pub const PUBLISH_KEY: &str = "test-publish-key";
/// How long a test waits for something that should happen.
pub const PATIENCE: Duration = Duration::from_secs(10);
