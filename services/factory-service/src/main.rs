use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use common::Env;
use common::report::Chain;
use factory_service::cli::{Cli, Command};
use factory_service::events::commands as events;
use factory_service::{Application, FactoryConfig};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc malloc: under load the scan path spent a sixth of its CPU in
/// malloc, much of it waiting on arena locks (see docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::from_process();
    let config = match FactoryConfig::from_env(&env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("factory-service: {e}");
            return ExitCode::from(2);
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    // A missing signing secret is a configuration error of `serve`, reported like the others.
    if matches!(command, Command::Serve)
        && let Err(e) = config.jwt_secret()
    {
        eprintln!("factory-service: {e}");
        return ExitCode::from(2);
    }
    let _telemetry = match common::telemetry::init("factory-service", &config.common.telemetry) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("factory-service: {}", Chain(e.as_ref()));
            return ExitCode::from(2);
        }
    };
    // The commands a deployment runs unattended (the services, and `migrate` as a job) also log
    // their failure, where their operators look; a command run by hand says it only to its
    // caller's terminal, once (a log line on stdout would repeat it).
    let unattended = matches!(
        command,
        Command::Serve | Command::Worker { .. } | Command::Migrate
    );
    if unattended {
        use common::startup_warnings::{Uses, startup_warnings};
        let uses = Uses {
            database: &["DATABASE_URL"],
            redis: matches!(command, Command::Serve),
            pubsub: match command {
                Command::Serve => config.serve_consumer,
                Command::Worker { .. } => true,
                _ => false,
            },
        };
        for warning in startup_warnings(&env, &config.common, uses) {
            tracing::warn!("{warning}");
        }
    }
    let result = match command {
        // `audit verify` has its own exit codes: 0 intact, 1 broken, 2 could not verify.
        Command::Audit(command) => {
            return factory_service::audit::command::run(command, &config.common.database_url)
                .await;
        }
        Command::Serve => serve(config).await,
        Command::Migrate => migrate(config).await,
        Command::Worker { metrics_addr } => worker(config, metrics_addr).await,
        Command::Pubsub(command) => events::pubsub(&config, &command).await,
        Command::Dlq(command) => events::dlq(&config, &command).await,
        Command::User(command) => {
            factory_service::users::command::run(command, &config, &env).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e = Chain(e.as_ref());
            if unattended {
                tracing::error!("factory-service: {e}");
            }
            eprintln!("factory-service: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: FactoryConfig) -> anyhow::Result<()> {
    // Signals are handled from before start-up: SIGTERM while it waits on a dependency stops
    // the process with exit 0, as it does later, instead of killing it.
    let shutdown = CancellationToken::new();
    common::server::cancel_on_signal(shutdown.clone());
    let started = async {
        // The API first: it binds `BIND_ADDR` before anything connects.
        let app = Application::build(config.clone()).await?;
        let consumer = if config.serve_consumer {
            Some(events::consumer(&config).await?)
        } else {
            None
        };
        anyhow::Ok((app, consumer))
    };
    let Some(started) = shutdown.run_until_cancelled(started).await else {
        tracing::info!("stopped during start-up");
        return Ok(());
    };
    let (app, consumer) = started?;
    tracing::info!("factory-service listening on http://{}", app.local_addr());
    // The scan-event consumer, unless `SCAN_EVENTS_CONSUMER=false`, runs beside the API under
    // the same shutdown token.
    let consumer = consumer.map(|c| tokio::spawn(c.run(shutdown.clone())));
    let served = app.run_until_stopped(shutdown.clone()).await;
    // Stop the consumer too if serving ended on its own, and let it settle in-flight events.
    shutdown.cancel();
    if let Some(task) = consumer
        && let Err(e) = task.await
    {
        tracing::error!(error = %e, "the scan-event consumer task failed");
    }
    served
}

async fn worker(config: FactoryConfig, metrics_addr: Option<SocketAddr>) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    common::server::cancel_on_signal(shutdown.clone());
    events::worker(&config, metrics_addr, shutdown).await
}

async fn migrate(config: FactoryConfig) -> anyhow::Result<()> {
    common::db::ensure_reachable(&config.common.database_url, "DATABASE_URL").await?;
    let pool = common::db::pg_pool(
        &config.common.database_url,
        "voketag-migrate",
        2,
        config.common.database_idle_tx_timeout,
    )?;
    factory_service::db::migrate(&pool)
        .await
        .context("applying migrations")?;
    tracing::info!("migrations applied");
    Ok(())
}
