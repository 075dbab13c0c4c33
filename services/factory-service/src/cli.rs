//! The `factory-service` command line: `serve` (default), `migrate`, and the operator tools.

use clap::{Parser, Subcommand};

/// VokeTag factory service: the admin API and its operator tools.
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
}
