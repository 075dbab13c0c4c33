//! `factory-service user ...`: the operator's user management. There is no user API: users are
//! managed here, each change audited (actor `system`) in the transaction that makes it.

use std::io::{BufRead as _, IsTerminal as _};

use anyhow::Context as _;
use clap::Subcommand;
use common::Env;
use secrecy::SecretString;
use sqlx::PgPool;

use super::manage::{self, Disabled, RoleChange};
use super::{Role, normalize_email};
use crate::FactoryConfig;
use crate::audit::{Actor, AuditLog};

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
    /// List every user: email, role, status, live sessions.
    List,
    /// Disable a user: they cannot sign in, and every session of theirs ends at once.
    Disable {
        /// The user's email address.
        #[arg(long)]
        email: String,
    },
    /// Let a disabled user sign in again (their old sessions stay ended).
    Enable {
        /// The user's email address.
        #[arg(long)]
        email: String,
    },
    /// Change a user's role; tokens already issued act with the new role at once.
    SetRole {
        /// The user's email address.
        #[arg(long)]
        email: String,
        /// admin, operator or viewer.
        #[arg(long)]
        role: Role,
    },
    /// Set a user's password (read as for `create`) and end every session of theirs.
    SetPassword {
        /// The user's email address.
        #[arg(long)]
        email: String,
    },
    /// End every session of a user (a lost device, say) without disabling them.
    EndSessions {
        /// The user's email address.
        #[arg(long)]
        email: String,
    },
}

/// Runs a user subcommand, saying on stdout what it did.
pub async fn run(command: UserCommand, config: &FactoryConfig, env: &Env) -> anyhow::Result<()> {
    // An email that could never match is refused before a password is asked for.
    let email = match &command {
        UserCommand::List => None,
        UserCommand::Create { email, .. }
        | UserCommand::Disable { email }
        | UserCommand::Enable { email }
        | UserCommand::SetRole { email, .. }
        | UserCommand::SetPassword { email }
        | UserCommand::EndSessions { email } => Some(email.as_str()),
    };
    if let Some(email) = email {
        normalize_email(email)
            .map_err(|problem| anyhow::anyhow!("--email {email:?}: {problem}"))?;
    }
    common::db::ensure_reachable(&config.common.database_url, "DATABASE_URL").await?;
    let pool = common::db::pg_pool(
        &config.common.database_url,
        "voketag-factory-cli",
        2,
        config.common.database_idle_tx_timeout,
    )?;
    // The configured key, so a change made here is signed like one made by the API.
    let audit = AuditLog::from_config(&config.audit);
    match command {
        UserCommand::Create { email, role } => {
            let password = read_password(env)?;
            let user = super::create_user(&pool, &audit, &email, &password, role, Actor::System)
                .await
                .context("creating the user")?;
            println!("created {} user {} ({})", user.role, user.email, user.id);
        }
        UserCommand::SetPassword { email } => {
            let password = read_password(env)?;
            let ended = manage::set_password(&pool, &audit, &email, &password)
                .await
                .context("setting the password")?;
            println!("password of {email} set; {ended} live session(s) ended");
        }
        UserCommand::List => list(&pool).await?,
        UserCommand::Disable { email } => match manage::disable(&pool, &audit, &email)
            .await
            .context("disabling the user")?
        {
            Disabled::Now {
                sessions_ended,
                active_admins_left,
            } => {
                println!("{email} disabled; {sessions_ended} live session(s) ended");
                warn_if_no_admin(active_admins_left);
            }
            Disabled::Already(since) => {
                println!(
                    "{email} was already disabled (since {}); nothing changed",
                    utc(since)
                );
            }
        },
        UserCommand::Enable { email } => {
            if manage::enable(&pool, &audit, &email)
                .await
                .context("enabling the user")?
            {
                println!("{email} enabled; they sign in again");
            } else {
                println!("{email} was not disabled; nothing changed");
            }
        }
        UserCommand::SetRole { email, role } => {
            match manage::set_role(&pool, &audit, &email, role)
                .await
                .context("changing the role")?
            {
                RoleChange::Changed {
                    from,
                    active_admins_left,
                } => {
                    println!("{email} is now {role} (was {from})");
                    warn_if_no_admin(active_admins_left);
                }
                RoleChange::Unchanged => println!("{email} is already {role}; nothing changed"),
            }
        }
        UserCommand::EndSessions { email } => {
            let ended = manage::end_sessions(&pool, &audit, &email)
                .await
                .context("ending the sessions")?;
            println!("{ended} live session(s) of {email} ended");
        }
    }
    Ok(())
}

/// The password from FACTORY_USER_PASSWORD, else the first line of standard input: typed at a
/// terminal without echo (rpassword), or read from a pipe as it comes.
fn read_password(env: &Env) -> anyhow::Result<SecretString> {
    let given = env.password("FACTORY_USER_PASSWORD");
    env.refuse_unreadable()?;
    if let Some(p) = given {
        return Ok(p);
    }
    let mut line = if std::io::stdin().is_terminal() {
        rpassword::prompt_password("password (not shown as you type): ")
            .context("reading the password from the terminal")?
    } else {
        eprintln!("password (one line on standard input):");
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        line
    };
    let len = common::config::strip_line_ending(&line).len();
    line.truncate(len);
    // Nothing came (stdin closed or empty): say so, rather than "too short".
    anyhow::ensure!(
        !line.is_empty(),
        "no password given (one line on standard input, or FACTORY_USER_PASSWORD)"
    );
    Ok(SecretString::from(line))
}

async fn list(pool: &PgPool) -> anyhow::Result<()> {
    let users = manage::list(pool).await.context("listing users")?;
    println!("email\trole\tstatus\tlive_sessions\tcreated_at\tid");
    for u in users {
        let status = match u.disabled_at {
            Some(at) => format!("disabled since {}", utc(at)),
            None => "active".to_owned(),
        };
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            u.email,
            u.role,
            status,
            u.live_sessions,
            utc(u.created_at),
            u.id
        );
    }
    Ok(())
}

/// A time as `user` commands print it: UTC, to the second.
fn utc(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn warn_if_no_admin(active_admins_left: i64) {
    if active_admins_left == 0 {
        eprintln!(
            "warning: no active admin is left, so no one can manage API keys or read the audit \
             log through the API; make one with `user set-role --role admin` or `user create`"
        );
    }
}
