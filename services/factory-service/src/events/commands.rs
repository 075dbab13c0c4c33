//! The command-line edge of the event pipeline: `worker`, `pubsub setup`, `dlq list` and
//! `dlq replay`. Errors become `anyhow` here, with what was being done.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use common::health::{self, ReadinessCheck};
use tokio_util::sync::CancellationToken;

use super::dlq::{self, ReadWindow, Selector};
use super::{Consumer, EventsError, EventsSettings, setup};
use crate::config::FactoryConfig;

/// `factory-service pubsub …`.
#[derive(Debug, Clone, Subcommand)]
pub enum PubsubCommand {
    /// Create the scan-event topic, DLQ topic and subscriptions (safe to run again).
    Setup,
}

/// `factory-service dlq …`.
#[derive(Debug, Clone, Subcommand)]
pub enum DlqCommand {
    /// Show dead-lettered scan events without consuming them.
    List {
        /// Show at most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Characters of each body to show.
        #[arg(long, default_value_t = 120)]
        preview: usize,
        /// Seconds to wait for the first message.
        #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_WAIT_SECS)]
        wait: u64,
    },
    /// Republish dead-lettered scan events to the main topic, then remove them from the DLQ.
    Replay {
        /// Which messages.
        #[command(flatten)]
        which: ReplayArgs,
        /// Seconds to wait for the first message.
        #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_WAIT_SECS)]
        wait: u64,
    },
}

/// Long enough for messages another read left leased on the emulator to come back.
const DEFAULT_WAIT_SECS: u64 = dlq::READ_LEASE.as_secs() + 2;

fn window(wait: u64) -> ReadWindow {
    ReadWindow {
        first: std::time::Duration::from_secs(wait),
        ..ReadWindow::default()
    }
}

/// Which dead letters `dlq replay` takes: exactly one of the two.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct ReplayArgs {
    /// Every message in the DLQ.
    #[arg(long)]
    pub all: bool,
    /// One message, by its DLQ message id or its original message id.
    #[arg(long, value_name = "ID")]
    pub message_id: Option<String>,
}

/// `factory-service worker`: the consumer alone, until `shutdown`.
pub async fn worker(
    config: &FactoryConfig,
    metrics_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // The recorder first: the consumer describes its series as it is built, and a scrape
    // may come as soon as the address below is logged.
    common::telemetry::prometheus();
    let consumer = consumer(config).await?;
    consumer.warn_if_database_unreachable();
    let Some(addr) = metrics_addr else {
        consumer.run(shutdown).await;
        return Ok(());
    };
    // A worker on its own still wants probes and scraping; it serves only those.
    let pool = common::db::pg_pool(
        &config.common.database_url,
        "voketag-factory-worker",
        2,
        config.common.database_idle_tx_timeout,
    )?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the worker's metrics address {addr}"))?;
    // The bound address, so that port 0 (any free port) says which one it got.
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!("worker health and metrics on http://{bound}");
    let router = health::routes(vec![ReadinessCheck::postgres(pool), consumer.readiness()]);
    let (served, ()) = tokio::join!(
        common::server::serve(listener, router, shutdown.clone()),
        consumer.run(shutdown),
    );
    served.context("serving the worker's health and metrics")
}

/// A consumer for `config`, with its own small database pool: one connection per batch
/// applied at once (`SCAN_EVENTS_DB_CONNECTIONS`).
pub async fn consumer(config: &FactoryConfig) -> anyhow::Result<Consumer> {
    let settings = EventsSettings::from_config(config);
    let connections = settings.consumer.db_connections;
    let pool = common::db::pg_pool(
        &config.common.database_url,
        "voketag-factory-consumer",
        connections,
        config.common.database_idle_tx_timeout,
    )?;
    Consumer::build(settings, pool)
        .await
        .context("building the scan-event consumer")
}

/// `factory-service pubsub …`.
pub async fn pubsub(config: &FactoryConfig, command: &PubsubCommand) -> anyhow::Result<()> {
    match command {
        PubsubCommand::Setup => {
            let settings = EventsSettings::from_config(config);
            let done = setup::setup(&settings)
                .await
                .map_err(|e| with_reach_hint(e, &settings))
                .context("setting up Pub/Sub topics and subscriptions")?;
            for resource in done {
                println!("{resource}");
            }
            Ok(())
        }
    }
}

/// `factory-service dlq …`.
pub async fn dlq(config: &FactoryConfig, command: &DlqCommand) -> anyhow::Result<()> {
    let settings = EventsSettings::from_config(config);
    match command {
        DlqCommand::List {
            limit,
            preview,
            wait,
        } => {
            let entries = dlq::list(&settings, *limit, window(*wait))
                .await
                .map_err(|e| with_reach_hint(e, &settings))
                .context("listing the DLQ")?;
            let now = chrono::Utc::now();
            for entry in &entries {
                println!("{}", dlq::describe(entry, now, *preview));
            }
            println!(
                "{}",
                list_summary(entries.len(), settings.pubsub.emulator_host.is_some())
            );
            Ok(())
        }
        DlqCommand::Replay { which, wait } => {
            let selector = match &which.message_id {
                Some(id) => Selector::MessageId(id.clone()),
                None => Selector::All,
            };
            // Each line as soon as the main topic has the message: a long replay shows its
            // progress, and one stopped or failing midway has said what went through.
            let mut done = 0usize;
            let replayed = dlq::replay(&settings, &selector, window(*wait), |entry| {
                done += 1;
                println!("replayed {} (reason {})", entry.message_id, entry.reason);
            })
            .await
            .map_err(|e| with_reach_hint(e, &settings))
            .with_context(|| {
                format!("replaying from the DLQ ({done} message(s) replayed before the error)")
            })?;
            if let Selector::MessageId(id) = &selector
                && replayed.is_empty()
            {
                anyhow::bail!("no dead-lettered message with id {id} was found");
            }
            println!("{} message(s) replayed", replayed.len());
            Ok(())
        }
    }
}

/// The last line of `dlq list`. On the emulator, dead letters leased to an earlier read's
/// closed stream stay hidden (docs/SCAN_EVENTS.md), so a short count is not proof.
fn list_summary(shown: usize, emulator: bool) -> String {
    let mut line = format!("{shown} dead-lettered message(s) shown");
    if emulator {
        line.push_str(
            " (on the Pub/Sub emulator, messages an earlier read saw may stay hidden: \
             see docs/SCAN_EVENTS.md, Dead letters)",
        );
    }
    line
}

/// Says where Pub/Sub was expected when it could not be reached at all, and how to start the
/// emulator; other errors pass unchanged.
fn with_reach_hint(error: EventsError, settings: &EventsSettings) -> anyhow::Error {
    if !error.is_unreachable() {
        return error.into();
    }
    let hint = match &settings.pubsub.emulator_host {
        Some(host) => format!(
            "nothing answers at PUBSUB_EMULATOR_HOST={host}: is the Pub/Sub emulator running \
             there? (`make services-up` starts one)"
        ),
        None => "Google Cloud Pub/Sub cannot be reached from here".to_owned(),
    };
    anyhow::Error::new(error).context(hint)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::cli::{Cli, Command};

    use super::*;

    fn parse(args: &[&str]) -> Result<Command, clap::Error> {
        let argv = std::iter::once("factory-service").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.command.unwrap_or(Command::Serve))
    }

    #[test]
    fn replay_takes_exactly_one_selector() {
        assert!(parse(&["dlq", "replay"]).is_err());
        assert!(parse(&["dlq", "replay", "--all", "--message-id", "7"]).is_err());
        let Ok(Command::Dlq(DlqCommand::Replay { which, wait })) =
            parse(&["dlq", "replay", "--message-id", "7"])
        else {
            panic!("not a replay");
        };
        assert_eq!(which.message_id.as_deref(), Some("7"));
        assert_eq!(wait, DEFAULT_WAIT_SECS);
    }

    #[test]
    fn a_dlq_list_on_the_emulator_says_its_count_may_be_short() {
        assert_eq!(list_summary(3, false), "3 dead-lettered message(s) shown");
        let emulator = list_summary(0, true);
        assert!(emulator.starts_with("0 dead-lettered message(s) shown (on the Pub/Sub emulator"));
        assert!(emulator.contains("docs/SCAN_EVENTS.md"), "{emulator}");
    }

    #[test]
    fn operator_commands_parse() {
        assert!(matches!(
            parse(&["pubsub", "setup"]),
            Ok(Command::Pubsub(PubsubCommand::Setup))
        ));
        assert!(matches!(
            parse(&["dlq", "list", "--limit", "5"]),
            Ok(Command::Dlq(DlqCommand::List { limit: 5, .. }))
        ));
        assert!(matches!(
            parse(&["worker", "--metrics-addr", "127.0.0.1:9100"]),
            Ok(Command::Worker {
                metrics_addr: Some(_)
            })
        ));
    }
}
