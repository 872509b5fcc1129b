use std::net::SocketAddr;

use anyhow::Context;
use backend::{Application, Settings, Stop, telemetry};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    settings.check()?;
    if settings.migrate_partitions {
        return migrate_partitions(&settings).await;
    }
    let listener = backend::listen(SocketAddr::new(settings.host, settings.port))
        .with_context(|| format!("could not listen on {}:{}", settings.host, settings.port))?;
    let server_id = settings.server_id_for(listener.local_addr()?.port());
    telemetry::init(&server_id, settings.log_format);
    tracing::info!(config = %settings.summary(), "starting");

    let app = Application::build(settings, listener).await?;
    app.run_until_stopped(shutdown_signal()).await
}

/// `--migrate-partitions`: the one-off copy of histories to today's partition tags.
async fn migrate_partitions(settings: &Settings) -> anyhow::Result<()> {
    let url = settings
        .redis_url
        .as_ref()
        .context("--migrate-partitions needs REDIS_URL")?;
    let redis = backend::redis::Redis::connect(url.expose(), false).await?;
    let migrated = backend::bus::migrate_partitions(&redis.client).await?;
    println!(
        "histories copied to today's partition tags: {}; left as they were (today's layout had them already): {}; idempotency records copied: {}",
        migrated.copied, migrated.kept, migrated.records
    );
    Ok(())
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM, asking for a graceful stop.
async fn shutdown_signal() -> Stop {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("can listen for SIGTERM");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
        _ = terminate.recv() => tracing::info!("received SIGTERM"),
    }
    Stop::Graceful
}
