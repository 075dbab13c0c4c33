//! The `factory-service` command line: `serve` (default), `migrate`, and the operator tools.

use clap::{Parser, Subcommand};

/// VokeTag factory service: the admin API and its operator tools.
///
/// Every setting is an environment variable (docs/CONFIGURATION.md), e.g. DATABASE_URL,
/// REDIS_URL and JWT_SECRET; the subcommands' flags are only for what an operator gives by hand.
#[derive(Debug, Parser)]
#[command(name = "factory-service", version)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the admin API (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Consume scan events only, without the admin API (any number of workers may run).
    Worker {
        /// Also serve /healthz, /readyz and /metrics on this address.
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Pub/Sub plumbing of the scan-event pipeline.
    #[command(subcommand)]
    Pubsub(crate::events::commands::PubsubCommand),
    /// Inspect and replay dead-lettered scan events.
    #[command(subcommand)]
    Dlq(crate::events::commands::DlqCommand),
    /// Manage admin users.
    #[command(subcommand)]
    User(crate::users::command::UserCommand),
    /// Audit log tools (`audit verify`).
    #[command(subcommand)]
    Audit(crate::audit::command::AuditCommand),
}
