//! Backend instances in this process, on port 0.

use std::ops::Deref;

use backend::{Application, Settings, Stop, config::Secret, hub::Hub};
use tokio::{sync::oneshot, task::JoinHandle};

use super::{Api, JWT_SECRET, PATIENCE, PUBLISH_KEY, RedisServer, SseStream, eventually};

/// Settings for a test instance: loopback, port 0, the test secrets, and Redis if given.
pub fn settings(redis: Option<&RedisServer>) -> Settings {
    let mut settings = Settings::for_tests();
    settings.redis_url = redis.map(|r| Secret::new(r.url()));
    settings.jwt_secret = Some(Secret::new(JWT_SECRET));
    settings.publish_key = Some(Secret::new(PUBLISH_KEY));
    settings
}

/// A running backend instance; stops when dropped. Its API is reached through `Deref`.
pub struct TestApp {
    pub api: Api,
    pub server_id: String,
    pub hub: Hub,
    stop: Option<oneshot::Sender<Stop>>,
    running: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Deref for TestApp {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// [`settings`] for an instance of the Redis (or Redis Cluster) at `url`.
pub fn settings_for(url: &str) -> Settings {
    Settings {
        redis_url: Some(Secret::new(url)),
        ..settings(None)
    }
}

pub async fn spawn_app(redis: Option<&RedisServer>) -> TestApp {
    spawn_app_with(settings(redis)).await
}

pub async fn spawn_app_with(settings: Settings) -> TestApp {
    let listener = backend::listen(([127, 0, 0, 1], 0).into()).expect("bind a free port");
    let app = Application::build(settings, listener)
        .await
        .expect("the application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let server_id = app.server_id().to_string();
    let hub = app.hub();
    let (stop, stopped) = oneshot::channel::<Stop>();
    let running =
        tokio::spawn(app.run_until_stopped(async { stopped.await.unwrap_or(Stop::Graceful) }));
    TestApp {
        api: Api::new(address),
        server_id,
        hub,
        stop: Some(stop),
        running: Some(running),
    }
}

impl TestApp {
    /// Shuts the instance down gracefully (as on SIGTERM) and waits until it has stopped.
    pub async fn stop(self) {
        self.shut_down(Stop::Graceful).await;
    }

    /// Drops every connection at once, as a crash would, and waits until it has stopped.
    pub async fn kill(self) {
        self.shut_down(Stop::Abort).await;
    }

    async fn shut_down(mut self, how: Stop) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(how);
        }
        if let Some(running) = self.running.take() {
            tokio::time::timeout(PATIENCE, running)
                .await
                .expect("the instance stops in time")
                .expect("the run task completes")
                .expect("the instance stops cleanly");
        }
    }

    /// Waits until `count` streams without a cursor are open and have read where they
    /// start (counted once their start is known): an event published from then on
    /// reaches them. Open alone is not enough: a publish that lands before the start is
    /// read is part of where the stream starts, and so is never sent to it.
    pub async fn streams_started(&self, count: usize) {
        eventually("the streams to open", PATIENCE, || async {
            let open = self.metric_value("sse_streams_open").await;
            let started = self
                .metric_value(r#"sse_resumes_total{outcome="fresh"}"#)
                .await;
            (open == Some(count as f64) && started == Some(count as f64)).then_some(())
        })
        .await;
    }

    /// Opens a stream and reads up to its `stream.opened` frame, which must name this
    /// instance.
    pub async fn open_stream(&self, token: &str) -> SseStream {
        self.resume_stream(token, None).await
    }

    /// Opens a stream that resumes after `last_event_id`.
    pub async fn resume_stream(&self, token: &str, last_event_id: Option<&str>) -> SseStream {
        let (stream, server) = self.api.open_stream_served(token, last_event_id).await;
        assert_eq!(server, self.server_id, "served by this instance");
        stream
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Dropping the sender stops the instance.
        self.stop.take();
    }
}

impl TestApp {
    /// `events` events `{"n": 1..}` are published to `user` through this instance
    /// (`PUBLISH_REPLICAS=1`) while `failover` runs, 300 ms in (it kills a master and
    /// waits for a replica to take over): every accepted event must reach the user's
    /// stream, which resumes by itself, exactly once, in order, and publishes in between
    /// must have been refused (503) and retried with their idempotency key. `failover`
    /// starts once the user has a history (its first event is published).
    pub async fn expect_no_loss_across(
        &self,
        user: &str,
        events: u64,
        failover: impl std::future::Future<Output = ()>,
    ) {
        use super::{counted, follow, publish_counted};
        use std::time::Duration;
        let token = self.token(user).await;
        let follower = tokio::spawn(follow(
            vec![self.address.clone()],
            token,
            Duration::from_secs(60),
            move |received| counted(received).len() >= events as usize,
        ));
        // A stream without a cursor starts where its user's history stands when it opens.
        self.streams_started(1).await;
        publish_counted(
            vec![self.address.clone()],
            user.into(),
            1,
            1,
            Duration::ZERO,
        )
        .await;
        let publisher = tokio::spawn(publish_counted(
            vec![self.address.clone()],
            user.into(),
            2,
            events - 1,
            Duration::from_millis(20),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        failover.await;
        let accepted = publisher.await.expect("the publisher finishes");
        assert_eq!(accepted, (2..=events).collect::<Vec<_>>());
        let (received, _) = follower.await.expect("the follower finishes");
        assert_eq!(
            counted(&received),
            (1..=events).collect::<Vec<_>>(),
            "every accepted event exactly once, in order"
        );
        let refused = self
            .metric_value(r#"http_requests_total{method="POST",route="/api/publish",status="503"}"#)
            .await;
        assert!(
            refused.is_some_and(|n| n >= 1.0),
            "publishes during the failover were refused: {refused:?}"
        );
    }
}
