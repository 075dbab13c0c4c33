use std::process::ExitCode;

use common::Env;
use common::report::Chain;
use scan_service::{Application, ScanConfig};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of glibc malloc: under load the scan path spent a sixth of its CPU in
/// malloc, much of it waiting on arena locks (see docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// VokeTag scan service: answers `GET /v1/scan/{tag_id}`.
///
/// It takes no arguments: every setting is an environment variable (docs/CONFIGURATION.md).
#[derive(clap::Parser)]
#[command(name = "scan-service", version)]
struct Cli {}

#[tokio::main]
async fn main() -> ExitCode {
    // `--help` and `--version` answer; anything else on the command line is refused rather than
    // ignored (a mistyped flag would otherwise start a server on the default address).
    let Cli {} = clap::Parser::parse();
    let env = Env::from_process();
    let config = match ScanConfig::from_env(&env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("scan-service: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = match common::telemetry::init("scan-service", &config.common.telemetry) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("scan-service: {}", Chain(e.as_ref()));
            return ExitCode::from(2);
        }
    };
    let uses = common::startup_warnings::Uses {
        database: &["DATABASE_READ_URL", "DATABASE_URL"],
        redis: true,
        pubsub: true,
    };
    for warning in common::startup_warnings::startup_warnings(&env, &config.common, uses) {
        tracing::warn!("{warning}");
    }
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Also on stderr, as the factory does: a log filter may turn the log line off.
            tracing::error!("scan-service stopped: {}", Chain(e.as_ref()));
            eprintln!("scan-service stopped: {}", Chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

async fn run(config: ScanConfig) -> anyhow::Result<()> {
    // Signals are handled from before start-up: SIGTERM while it waits on a dependency stops
    // the process with exit 0, as it does later, instead of killing it.
    let shutdown = CancellationToken::new();
    common::server::cancel_on_signal(shutdown.clone());
    let Some(app) = shutdown
        .run_until_cancelled(Application::build(config))
        .await
    else {
        tracing::info!("stopped during start-up");
        return Ok(());
    };
    let app = app?;
    tracing::info!("scan-service listening on http://{}", app.local_addr());
    app.run_until_stopped(shutdown).await
}
