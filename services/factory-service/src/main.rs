use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use common::Env;
use factory_service::cli::{Cli, Command};
use factory_service::{Application, FactoryConfig};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match FactoryConfig::from_env(&Env::from_process()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("factory-service: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = match common::telemetry::init("factory-service", &config.common.telemetry) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("factory-service: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => migrate(config).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("factory-service: {e:#}");
            eprintln!("factory-service: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: FactoryConfig) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    tracing::info!("factory-service listening on http://{}", app.local_addr());
    let shutdown = CancellationToken::new();
    common::server::cancel_on_signal(shutdown.clone());
    app.run_until_stopped(shutdown).await
}

async fn migrate(config: FactoryConfig) -> anyhow::Result<()> {
    let pool = common::db::pg_pool(&config.common.database_url, 2)?;
    factory_service::db::migrate(&pool)
        .await
        .context("applying migrations")?;
    tracing::info!("migrations applied");
    Ok(())
}
