//! The `factory-service` command line: `serve` (default), `migrate`, and the operator tools.

use clap::{Parser, Subcommand};

use crate::users::Role;

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
    /// Manage admin users.
    #[command(subcommand)]
    User(UserCommand),
    /// Audit log tools (`audit verify`).
    #[command(subcommand)]
    Audit(crate::audit::command::AuditCommand),
}

/// `factory-service user ...`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user. The password is read from FACTORY_USER_PASSWORD if set, else from the
    /// first line of standard input; it is never an argument (arguments show in `ps`).
    Create {
        /// The user's email address.
        #[arg(long)]
        email: String,
        /// admin, operator or viewer.
        #[arg(long)]
        role: Role,
    },
}
