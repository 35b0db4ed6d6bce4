//! `cdc webhook test NAME` (send a signed test event, print what came back) and
//! `cdc webhook attempts NAME` (the endpoint's last delivery attempts and its outbox).

use std::time::SystemTime;

use anyhow::Context;

use crate::config::{Config, SinkConfig};
use crate::event::format_timestamp_us;
use crate::sinks::webhook::attempts::{self, Attempt, Via};
use crate::sinks::webhook::outbox;
use crate::sinks::webhook::{test_event, WebhookConfig};
use crate::source::connection;

/// Attempts `cdc webhook attempts` shows.
const SHOWN: i64 = 50;

#[derive(clap::Subcommand, Debug, Clone)]
pub enum WebhookCommand {
    /// Send a signed test event (op "test") to the sink's endpoint; print the status, the latency
    /// and the start of the response body. Exit status 1 unless the endpoint answered 2xx.
    #[command(after_help = "Example:\n  cdc webhook test opinions_hook")]
    Test {
        /// The webhook sink, as in [sinks.NAME].
        name: String,
    },
    /// Show the sink's last delivery attempts (newest first) and how many batches wait in its outbox.
    #[command(after_help = "Example:\n  cdc webhook attempts opinions_hook")]
    Attempts {
        /// The webhook sink, as in [sinks.NAME].
        name: String,
    },
}

/// Runs a `cdc webhook` subcommand; returns the exit code.
pub async fn run(config: &Config, command: WebhookCommand) -> anyhow::Result<i32> {
    match command {
        WebhookCommand::Test { name } => test(config, &name).await,
        WebhookCommand::Attempts { name } => attempts(config, &name).await.map(|_| 0),
    }
}

pub async fn test(config: &Config, name: &str) -> anyhow::Result<i32> {
    let sink = webhook_sink(config, name)?;
    let at = SystemTime::now();
    let (id, response) = test_event::send(name, sink).await?;
    let latency_ms = response.latency.as_secs_f64() * 1000.0;
    match response.status {
        Some(status) => println!(
            "{} answered {status} in {latency_ms:.1} ms",
            crate::redact::url(&sink.url)
        ),
        None => println!(
            "{} did not answer: {} ({latency_ms:.1} ms)",
            crate::redact::url(&sink.url),
            response.error.as_deref().unwrap_or("")
        ),
    }
    println!("webhook-id: {id}");
    if !response.body_start.is_empty() {
        println!("response body: {}", response.body_start.trim_end());
    }
    // The attempt history is a convenience here: a missing state schema must not fail the test.
    let attempt = Attempt {
        at,
        batch_id: id,
        via: Via::Test,
        status: response.status.map(i32::from),
        latency_ms,
        error: response.error.clone(),
    };
    if let Ok(db) = connection::catalog(&config.source.url).await {
        if let Err(e) = attempts::record(&db, name, &[attempt]).await {
            tracing::debug!("the test attempt was not recorded: {e}");
        }
    }
    Ok(if response.error.is_none() { 0 } else { 1 })
}

pub async fn attempts(config: &Config, name: &str) -> anyhow::Result<()> {
    let sink = webhook_sink(config, name)?;
    let db = connection::catalog(&config.source.url).await?;
    let waiting = outbox::len(&db, name)
        .await
        .context("reading the webhook outbox (has `cdc setup` been run?)")?;
    let recent = attempts::recent(&db, name, SHOWN).await?;
    println!(
        "{name} → {}: {waiting} batches in the outbox; last {} attempts, newest first",
        crate::redact::url(&sink.url),
        recent.len()
    );
    for a in &recent {
        println!("{}", line(a));
    }
    Ok(())
}

fn line(a: &Attempt) -> String {
    let at_us =
        a.at.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or_default();
    let status = a.status.map_or("---".to_string(), |s| s.to_string());
    let error = a.error.as_deref().map(|e| format!("  {e}")).unwrap_or_default();
    format!(
        "{}  {:<6}  {status}  {:>8.1} ms  {}{error}",
        format_timestamp_us(at_us),
        a.via.as_str(),
        a.latency_ms,
        a.batch_id
    )
}

fn webhook_sink<'c>(config: &'c Config, name: &str) -> anyhow::Result<&'c WebhookConfig> {
    match config.sinks.get(name) {
        Some(SinkConfig::Webhook(sink)) => Ok(sink),
        Some(other) => anyhow::bail!("sink {name} is a {} sink, not a webhook", other.type_name()),
        None => {
            let hooks: Vec<&str> = config
                .sinks
                .iter()
                .filter(|(_, s)| matches!(s, SinkConfig::Webhook(_)))
                .map(|(n, _)| n.as_str())
                .collect();
            anyhow::bail!(
                "no sink named {name} in {}; webhook sinks: {}",
                config.path.display(),
                if hooks.is_empty() {
                    "none".to_string()
                } else {
                    hooks.join(", ")
                }
            )
        }
    }
}
