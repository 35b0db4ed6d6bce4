//! `cdc dead-letters list | replay [--id N | --all] | purge`: what sinks could not deliver
//! because the receiver refused it for itself, stored in `cdc.dead_letters`.
//!
//! Replay re-delivers through the sink that stored the letter (after the cause was fixed, e.g.
//! the index mapping) and deletes each letter the receiver takes; a letter refused again stays,
//! with its attempt count raised and the new error.

use anyhow::{bail, Context};
use clap::Subcommand;
use tokio_postgres::Client;

use crate::config::{Config, SinkConfig};
use crate::sinks::search::dead_letter::{self as search_letters, Replayed};
use crate::source::connection;
use crate::state::{self, dead_letters, dead_letters::DeadLetter};

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum DeadLettersAction {
    /// List dead letters: id, sink, target, time, attempts, error.
    #[command(after_help = "Example:\n  cdc dead-letters list --sink search")]
    List {
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
        /// Also print each payload (the event and the document).
        #[arg(long)]
        payload: bool,
    },
    /// Deliver dead letters again (after fixing the cause); delivered ones are deleted.
    #[command(after_help = "Examples:\n  cdc dead-letters replay --id 42\n  cdc dead-letters replay --all")]
    Replay {
        /// This dead letter.
        #[arg(long, value_name = "N", required_unless_present = "all", conflicts_with = "all")]
        id: Option<i64>,
        /// Every dead letter, oldest first.
        #[arg(long)]
        all: bool,
    },
    /// Delete dead letters without delivering them.
    #[command(after_help = "Examples:\n  cdc dead-letters purge\n  cdc dead-letters purge --sink search")]
    Purge {
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
    },
}

pub async fn run(config: &Config, action: DeadLettersAction) -> anyhow::Result<()> {
    let client = connection::catalog(&config.source.url).await?;
    state::ensure_schema(&client)
        .await
        .context("creating cdc's state schema")?;
    match action {
        DeadLettersAction::List { sink, payload } => list(&client, sink.as_deref(), payload).await,
        DeadLettersAction::Replay { id: Some(id), .. } => {
            let letter = dead_letters::get(&client, id)
                .await?
                .with_context(|| format!("there is no dead letter {id}"))?;
            let (delivered, refused) = replay_all(config, &client, vec![letter]).await?;
            if refused > 0 || delivered == 0 {
                bail!("dead letter {id} was not delivered");
            }
            Ok(())
        }
        DeadLettersAction::Replay { .. } => {
            let letters = dead_letters::list(&client, None).await?;
            let (delivered, refused) = replay_all(config, &client, letters).await?;
            println!("{delivered} delivered, {refused} still refused");
            if refused > 0 {
                bail!("{refused} dead letter(s) were refused again");
            }
            Ok(())
        }
        DeadLettersAction::Purge { sink } => {
            let n = dead_letters::purge(&client, sink.as_deref()).await?;
            println!("purged {n} dead letter(s)");
            Ok(())
        }
    }
}

async fn list(client: &Client, sink: Option<&str>, payload: bool) -> anyhow::Result<()> {
    let letters = dead_letters::list(client, sink).await?;
    if letters.is_empty() {
        println!("no dead letters");
    }
    for l in &letters {
        let at = chrono::DateTime::<chrono::Utc>::from(l.created_at).format("%Y-%m-%dT%H:%M:%SZ");
        println!(
            "{}\t{}\t{}\t{}\t{} attempt(s)\t{}",
            l.id, l.sink, l.target, at, l.attempts, l.error
        );
        if payload {
            println!("\t{}", l.payload);
        }
    }
    Ok(())
}

/// Replays each letter in id order; returns (delivered, refused again). Stops at the first
/// letter that could not be tried (node down, sink gone), so the order of later ones is kept.
async fn replay_all(config: &Config, client: &Client, letters: Vec<DeadLetter>) -> anyhow::Result<(usize, usize)> {
    let (mut delivered, mut refused) = (0, 0);
    for letter in letters {
        match replay_one(config, client, &letter)
            .await
            .with_context(|| format!("replaying dead letter {}", letter.id))?
        {
            Replayed::Delivered(what) => {
                dead_letters::delete(client, letter.id).await?;
                println!("{}: delivered ({what})", letter.id);
                delivered += 1;
            }
            Replayed::Refused(reason) => {
                dead_letters::record_attempt(client, letter.id, &reason).await?;
                println!("{}: refused again: {reason}", letter.id);
                refused += 1;
            }
        }
    }
    Ok((delivered, refused))
}

async fn replay_one(config: &Config, client: &Client, letter: &DeadLetter) -> anyhow::Result<Replayed> {
    let sink = config
        .sinks
        .get(&letter.sink)
        .with_context(|| format!("sink {} is not in {} any more", letter.sink, config.path.display()))?;
    match (letter.kind.as_str(), sink) {
        (search_letters::KIND, SinkConfig::Elasticsearch(search)) => {
            search_letters::replay(&letter.sink, search, &config.tables, client, letter).await
        }
        // A webhook batch goes back to the sink's outbox with its batch id, so receivers can
        // dedupe it; a running sink sends it within seconds, otherwise the next `cdc run`.
        ("webhook", SinkConfig::Webhook(_)) => {
            let outbox_id = crate::sinks::webhook::requeue(client, &letter.sink, &letter.payload).await?;
            Ok(Replayed::Delivered(format!("queued in the outbox as {outbox_id}")))
        }
        (kind, other) => bail!(
            "cannot replay a {kind} dead letter through sink {} of type {}",
            letter.sink,
            other.type_name()
        ),
    }
}
