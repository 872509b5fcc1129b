//! Assembles the instance: bus, store, hub, background services and the HTTP server.

use std::{
    future::Future,
    io,
    net::{SocketAddr, TcpListener},
    rc::Rc,
    sync::Arc,
    time::Duration,
};

use actix_http::{HttpService, KeepAlive};
use actix_server::Server;
use actix_service::{
    IntoServiceFactory, Service, ServiceFactory, ServiceFactoryExt, fn_factory, map_config,
};
use actix_web::{
    App, HttpResponse,
    body::MessageBody,
    dev::{AppConfig, ServiceRequest, ServiceResponse},
    middleware::{Next, from_fn},
    web,
};
use anyhow::Context;
use futures_util::future::LocalBoxFuture;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::{
    admission::{Gate, Rules},
    auth::Tokens,
    bus::{self, Bus, Engine, LocalBus, RedisBus, Retention},
    config::Settings,
    connection::{self, Guarded, Timeouts},
    delivery::Streams,
    direct,
    error::ApiError,
    files,
    hub::{Capacity, Hub, ShardId},
    metrics::Metrics,
    presence::{self, Presence},
    readiness::Readiness,
    rebalance::Rebalancer,
    redis::Redis,
    routes,
    snapshots::{self, SnapshotService},
    state::{AppState, Limits},
    store::{MemoryStore, RedisStore, Store},
    tasks::Tasks,
    telemetry,
    throttle::Throttle,
    tickets::{MemoryTickets, RedisTickets, Tickets},
    topics::TopicAccess,
};

/// How many `snapshots.generate` requests may wait for the snapshot service.
const SNAPSHOT_QUEUE: usize = 1024;

/// How long the HTTP server waits for open requests at shutdown. Streams are closed
/// before it starts waiting, so this bounds only ordinary requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Connections the kernel queues for the server to accept. A deploy or a network blip
/// sends every browser back at once, and a connection dropped off a full queue costs its
/// client a one-second retransmit (or a reset). std's default is 128; actix-web's own
/// binding uses 1024.
const LISTEN_BACKLOG: i32 = 1024;

/// Binds the listener an instance serves on (`port` 0 for any free one).
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// How much history is kept per topic, from the settings.
fn retention(settings: &Settings) -> Retention {
    Retention {
        max_len: settings.history_max_len,
        max_age: Duration::from_secs(settings.history_max_age_secs),
    }
}

/// How an instance stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Readiness turns false, new streams are refused, open streams are closed spread
    /// over the drain window (their clients resume elsewhere), requests finish.
    Graceful,
    /// Every connection is dropped at once, as in a crash. For fault tests.
    Abort,
}

/// What ended an instance's serving.
enum Ending {
    /// The HTTP server stopped by itself.
    Server(io::Result<()>),
    /// Its owner asked it to stop.
    Asked(Stop),
    /// A part it cannot serve without ended (a background task, a worker's dispatcher).
    Failed(String),
}

/// A built instance, listening but not yet serving until [`Application::run_until_stopped`].
pub struct Application {
    port: u16,
    /// The internal listener's port, when `/metrics` has one of its own.
    metrics_port: Option<u16>,
    server_id: String,
    server: Server,
    state: web::Data<AppState>,
    redis: Option<Redis>,
    drain_window: Duration,
    /// Fired at shutdown; every background loop watches it.
    shutdown: CancellationToken,
    /// Background services: each runs until shutdown, so one that ends sooner stops
    /// the instance (see `tasks`).
    tasks: Tasks,
}

impl Application {
    /// Connects to Redis (when configured), starts the background services and the HTTP
    /// server on `listener`. Fails if Redis cannot be reached.
    pub async fn build(settings: Settings, listener: TcpListener) -> anyhow::Result<Self> {
        settings.check()?;
        let port = listener.local_addr()?.port();
        let server_id = settings.server_id_for(port);
        let shutdown = CancellationToken::new();
        let mut tasks = Tasks::default();

        for insecure in settings.insecure_settings() {
            tracing::warn!("INSECURE: {insecure}");
        }
        let tokens = Tokens::from_settings(&settings)?;

        let metrics = Arc::new(Metrics::new());
        let max_streams = files::fit_streams(settings.max_streams, settings.file_limit_strict)?;
        metrics
            .streams_max
            .set(i64::try_from(max_streams).unwrap_or(i64::MAX));
        let capacity = Capacity {
            queue_size: usize::try_from(settings.stream_queue_size)?,
            per_user: usize::try_from(settings.max_streams_per_user)?,
            total: usize::try_from(max_streams)?,
        };
        let hub = Hub::new(capacity, metrics.clone());
        let readiness = Arc::new(Readiness::new(settings.redis_url.is_some()));
        let (bus, store, tickets, redis) = match &settings.redis_url {
            Some(url) => {
                let redis = Redis::connect(url.expose(), settings.publish_replicas > 0)
                    .await
                    .context("could not connect to Redis (is REDIS_URL right and Redis up?)")?;
                let gate = Gate::new(
                    Rules {
                        max_event_bytes: settings.max_event_bytes,
                    },
                    metrics.clone(),
                );
                bus::start_relay(
                    &redis,
                    hub.clone(),
                    readiness.clone(),
                    metrics.clone(),
                    bus::Listening {
                        server_id: &server_id,
                        legacy_channels: settings.legacy_channels,
                        gate: gate.clone(),
                    },
                    &mut tasks,
                    shutdown.clone(),
                )
                .await?;
                let bus = RedisBus::new(
                    &redis,
                    retention(&settings),
                    settings.publish_replicas,
                    gate,
                    &mut tasks,
                    shutdown.clone(),
                );
                let bus = Engine::Redis(bus);
                let store = Store::Redis(RedisStore::new(redis.client.clone()));
                let tickets = Tickets::Redis(RedisTickets::new(redis.client.clone()));
                (bus, store, tickets, Some(redis))
            }
            None => {
                tracing::warn!(
                    "REDIS_URL is not set: running single-node with an in-process bus and an \
                     in-memory store; streams on other instances will not receive events"
                );
                let bus = Engine::Local(LocalBus::new(
                    hub.clone(),
                    retention(&settings),
                    settings.history_max_memory_bytes(),
                ));
                let tickets = Tickets::Memory(MemoryTickets::default());
                (bus, Store::Memory(MemoryStore::default()), tickets, None)
            }
        };
        let bus = Arc::new(Bus::new(bus, server_id.clone(), metrics.clone()));
        if bus.keeps_histories_in_memory() {
            tasks.spawn(
                "history expiry",
                bus.clone().expire_histories(shutdown.clone()),
            );
        }
        let store = Arc::new(store);
        let presence = Arc::new(Presence::new(
            bus.clone(),
            &server_id,
            presence::Settings::from_settings(&settings),
            metrics.clone(),
        ));
        hub.track_presence(presence.tracker());
        tasks.spawn("presence", presence.clone().run(shutdown.clone()));

        let (snapshot_requests, snapshot_queue) = snapshots::channel(SNAPSHOT_QUEUE);
        let service = SnapshotService {
            store: store.clone(),
            bus: bus.clone(),
            server_id: server_id.clone(),
        };
        tasks.spawn("snapshots", service.run(snapshot_queue, shutdown.clone()));

        tasks.spawn(
            "rebalancing",
            Rebalancer {
                hub: hub.clone(),
                bus: bus.clone(),
                readiness: readiness.clone(),
                metrics: metrics.clone(),
                instance: format!("{server_id}~{}", uuid::Uuid::new_v4().simple()),
                above: settings.rebalance_above,
                rate: settings.rebalance_rate,
            }
            .run(shutdown.clone()),
        );
        let streams = Streams {
            hub: hub.clone(),
            bus: bus.clone(),
            metrics: metrics.clone(),
            readiness: readiness.clone(),
            server_id: server_id.clone(),
            max_streams_per_user: settings.max_streams_per_user,
            max_replay: settings.max_replay,
        };
        let topics = match &settings.topic_auth_url {
            Some(url) => TopicAccess::with_hook(
                url.clone(),
                Duration::from_secs(settings.topic_auth_cache_secs),
                Duration::from_millis(settings.topic_auth_timeout_ms),
            )?,
            None => TopicAccess::claims_only(),
        };
        let state = web::Data::new(AppState {
            streams,
            topics,
            presence,
            user_publishes: Throttle::new(settings.user_publish_rate),
            server_id: server_id.clone(),
            tokens,
            dev_tokens: settings.dev_tokens,
            publish_key: settings.publish_key.clone(),
            hub,
            bus,
            store,
            snapshots: snapshot_requests,
            tickets,
            limits: Limits::from_settings(&settings),
            readiness,
            metrics,
            keep_alive: settings.keep_alive(),
            sse_retry: Duration::from_millis(settings.sse_retry_ms),
        });

        let metrics_listener = settings.metrics_addr.map(listen).transpose()?;
        let metrics_port = match &metrics_listener {
            Some(listener) => Some(listener.local_addr()?.port()),
            None => None,
        };
        let server = http_server(&settings, state.clone(), listener, metrics_listener)?;
        tracing::info!(port, ?metrics_port, bus = state.bus.kind(), "listening");
        Ok(Self {
            port,
            metrics_port,
            server_id,
            server,
            state,
            redis,
            drain_window: Duration::from_secs(settings.drain_secs),
            shutdown,
            tasks,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The port `/metrics` is served on when it has a listener of its own (`METRICS_ADDR`).
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_port
    }

    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// The instance's registry of open streams (to observe it, e.g. in tests).
    pub fn hub(&self) -> Hub {
        self.state.hub.clone()
    }

    /// Serves until `stop` completes (or the server fails), then shuts down as it says.
    /// Gracefully: readiness off, streams drained over the drain window, the HTTP server
    /// stopped once requests finish. Either way, background services stop and Redis is
    /// closed before this returns.
    ///
    /// A background task that ends while the instance serves (it panicked, or its
    /// connection is gone for good) stops it as gracefully, and the result is an error
    /// naming the task, so that the process exits non-zero and its supervisor restarts it.
    pub async fn run_until_stopped(self, stop: impl Future<Output = Stop>) -> anyhow::Result<()> {
        let Self {
            server,
            state,
            redis,
            drain_window,
            shutdown,
            mut tasks,
            ..
        } = self;
        let handle = server.handle();
        let mut server = std::pin::pin!(server);
        let hub = state.hub.clone();
        let ending = tokio::select! {
            result = &mut server => Ending::Server(result),
            how = stop => Ending::Asked(how),
            ended = tasks.ended() => Ending::Failed(ended.to_string()),
            () = hub.dispatcher_lost() => {
                Ending::Failed("a worker's broadcast dispatcher ended".to_string())
            }
        };
        let (result, failed) = match ending {
            Ending::Server(result) => (result, None),
            Ending::Asked(how) => (
                Self::stop(&state, handle, server, how, drain_window).await,
                None,
            ),
            Ending::Failed(why) => {
                tracing::error!(%why, "stopping the instance");
                let stopped =
                    Self::stop(&state, handle, server, Stop::Graceful, drain_window).await;
                (stopped, Some(why))
            }
        };
        shutdown.cancel();
        tasks.join_all().await;
        if let Some(redis) = &redis {
            redis.quit().await;
        }
        tracing::info!("stopped");
        result.context("HTTP server failed")?;
        match failed {
            Some(failed) => Err(anyhow::anyhow!(failed)),
            None => Ok(()),
        }
    }

    /// Stops serving as `how` says, driving the server's own future meanwhile (it carries
    /// out the stop command).
    async fn stop(
        state: &AppState,
        handle: actix_server::ServerHandle,
        server: std::pin::Pin<&mut Server>,
        how: Stop,
        drain_window: Duration,
    ) -> io::Result<()> {
        tracing::info!(?how, "shutting down");
        state.hub.stopping();
        let graceful = how == Stop::Graceful;
        if graceful {
            state.readiness.start_draining();
            state.hub.drain(drain_window).await;
        }
        let ((), result) = tokio::join!(handle.stop(graceful), server);
        state.hub.close_all();
        result
    }
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("port", &self.port)
            .field("server_id", &self.server_id)
            .finish_non_exhaustive()
    }
}

/// The HTTP server: actix-web's, assembled from its parts (as `actix_web::HttpServer`
/// does) so that each new connection is first offered to [`direct`], which serves plain
/// stream requests without actix-http's per-connection buffers; every other connection
/// goes to the actix-web `App` as usual.
fn http_server(
    settings: &Settings,
    state: web::Data<AppState>,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
) -> anyhow::Result<Server> {
    let body_limit = settings.max_body_bytes;
    let timeouts = Timeouts {
        head: Duration::from_secs(settings.request_head_timeout_secs),
        body: Duration::from_secs(settings.request_body_timeout_secs),
    };
    let head_timeout = timeouts.head;
    let public_metrics = metrics_listener.is_none();
    let metrics_state = state.clone();
    let web_dir = settings.web_dir.clone();
    if let Some(dir) = &web_dir {
        anyhow::ensure!(
            dir.join("index.html").is_file(),
            "WEB_DIR {} has no index.html (run `trunk build --release`)",
            dir.display()
        );
    }
    let addr = listener.local_addr()?;
    // Each worker thread builds its own services from this.
    let per_worker = move || {
        let json = web::JsonConfig::default()
            .limit(body_limit)
            .content_type_required(false)
            .error_handler(move |err, _| ApiError::from_json_error(&err, body_limit).into());
        let query = web::QueryConfig::default()
            .error_handler(|err, _| ApiError::from_query_error(&err).into());
        let app = App::new()
            .app_data(state.clone())
            .app_data(json)
            .app_data(query)
            .wrap(from_fn(access_log))
            .wrap(from_fn(connection::rules))
            .route("/healthz", web::get().to(routes::healthz))
            .route("/readyz", web::get().to(routes::readyz))
            .configure(|cfg| {
                if public_metrics {
                    cfg.route("/metrics", web::get().to(routes::metrics));
                }
            })
            .service(web::scope("/api").configure(routes::api))
            .configure(|cfg| {
                if let Some(dir) = &web_dir {
                    cfg.service(actix_files::Files::new("/", dir).index_file("index.html"));
                }
            })
            .default_service(web::to(not_found));
        let http = HttpService::build()
            .keep_alive(KeepAlive::default())
            .client_request_timeout(timeouts.head)
            .client_disconnect_timeout(Duration::from_secs(1))
            // A client that sends FIN has left, as the direct carrier takes it: its stream
            // ends at once rather than at the second failed keep-alive write.
            .h1_allow_half_closed(false)
            .local_addr(addr)
            .on_connect_ext(connection::on_connect)
            .h1(map_config(
                app.into_factory().map_err(|err| err.error_response()),
                // The host and address actix-web would put here only matter to requests
                // without a Host header, which this service never reads.
                |()| AppConfig::default(),
            ));
        let state = state.clone();
        fn_factory(move || {
            let http = http.new_service(());
            let state = state.clone();
            async move {
                // Built on the worker's own thread: its streams' broadcasts and
                // keep-alives are written there.
                let shard = state.hub.start_shard(state.keep_alive);
                Ok::<_, ()>(Connections {
                    http: Rc::new(http.await?),
                    state,
                    timeouts,
                    shard,
                })
            }
        })
    };
    let mut server = Server::build()
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
        .listen("backend", listener, per_worker)?;
    if let Some(listener) = metrics_listener {
        // The internal listener (`METRICS_ADDR`): `/metrics`, and the probes an
        // orchestrator sends (`/healthz`, `/readyz`), nothing of the API.
        server = server.listen("metrics", listener, move || {
            let app = App::new()
                .app_data(metrics_state.clone())
                .route("/metrics", web::get().to(routes::metrics))
                .route("/healthz", web::get().to(routes::healthz))
                .route("/readyz", web::get().to(routes::readyz))
                .default_service(web::to(not_found));
            HttpService::build()
                .client_request_timeout(head_timeout)
                .finish(map_config(
                    app.into_factory().map_err(|err| err.error_response()),
                    |()| AppConfig::default(),
                ))
                .tcp()
        })?;
    }
    if let Some(workers) = settings.workers {
        server = server.workers(usize::try_from(workers)?);
    }
    Ok(server.run())
}

/// Where each new connection of the public listener goes: one whose first request is a
/// plain stream request is served by [`direct`]; any other, unread, by actix-web.
struct Connections<S> {
    http: Rc<S>,
    state: web::Data<AppState>,
    timeouts: Timeouts,
    /// This worker's shard of the hub.
    shard: ShardId,
}

impl<S> Service<TcpStream> for Connections<S>
where
    S: Service<(Guarded, Option<SocketAddr>), Response = ()> + 'static,
{
    type Response = ();
    type Error = S::Error;
    type Future = LocalBoxFuture<'static, Result<(), S::Error>>;

    actix_service::always_ready!();

    fn call(&self, io: TcpStream) -> Self::Future {
        let http = self.http.clone();
        let state = self.state.clone();
        let timeouts = self.timeouts;
        let shard = self.shard;
        Box::pin(async move {
            // Events and API answers are small and latency is the point, on either
            // carrier: no Nagle delay behind an unacknowledged write.
            let _ = io.set_nodelay(true);
            // Every future awaited here is boxed: this one is allocated for as long as
            // the connection lives, so it stays a few hundred bytes.
            match Box::pin(direct::stream_request(&io, timeouts.head)).await {
                direct::Peeked::Stream(peek) => {
                    // Bound first: the opening future is freed before the stream runs
                    // (a temporary in the `if let` would live as long as the stream).
                    let serving = Box::pin(direct::open(io, peek, state, shard)).await;
                    if let Some(stream) = serving {
                        stream.await;
                    }
                    Ok(())
                }
                direct::Peeked::Other => {
                    let peer = io.peer_addr().ok();
                    Box::pin(http.call((Guarded::new(io, timeouts), peer))).await
                }
                // The head did not arrive in time: one timeout, not actix's second one
                // on top.
                direct::Peeked::TimedOut => Ok(()),
            }
        })
    }
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

/// One line per request: method, path (never the query, which may hold a token),
/// status and time to the response head.
async fn access_log(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.path().to_string();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.metrics.clone());
    let response = next.call(req).await?;
    if let Some(metrics) = metrics {
        telemetry::request_served(
            &metrics,
            method.as_str(),
            &path,
            &route,
            response.status().as_u16(),
            started.elapsed(),
        );
    }
    Ok(response)
}
