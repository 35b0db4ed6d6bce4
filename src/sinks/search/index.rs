//! The indexes behind the aliases cdc writes to.
//!
//! cdc writes through an alias (the mapping's `index`) to a physical index `<index>_<suffix>`,
//! created on first use with the mapping's settings file, so that a truncate (and a rebuild)
//! can build a fresh index and swap the alias to it in one atomic step: searches never see a
//! missing index. The integ-test distributions have no delete-by-query, and cdc does not need it.

use std::path::Path;

use anyhow::{bail, Context};
use bytes::Bytes;
use elasticsearch::http::Method;
use serde_json::{json, Value as Json};

use super::retry;
use super::service::Service;
use crate::retry::Unrecoverable;

/// What a name points at on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Absent,
    /// An alias over these physical indexes.
    Alias(Vec<String>),
    /// A concrete index of that name (made by hand, or by auto-creation before cdc ran).
    Index,
}

/// The private alias `cdc rebuild-index` builds a new index behind (`<alias>.rebuild`). Dead
/// letters written while building name it; `cdc dead-letters replay` maps it back to `alias`.
pub fn building_alias(alias: &str) -> String {
    format!("{alias}.rebuild")
}

/// Looks up what `name` is.
pub async fn lookup(service: &Service, name: &str) -> anyhow::Result<Target> {
    let reply = service.get(&format!("/_alias/{}", encode(name))).await?;
    if reply.ok() {
        let indexes = reply
            .json()
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        return Ok(Target::Alias(indexes));
    }
    if reply.status == 401 || reply.status == 403 {
        bail!(
            "{} refused the credentials (HTTP {}): check username/password or api_key",
            service.url,
            reply.status
        );
    }
    if reply.status != 404 {
        bail!("looking up alias {name}: HTTP {}: {}", reply.status, reply.text());
    }
    let reply = service.send(Method::Head, &format!("/{}", encode(name)), None).await?;
    match reply.status {
        200 => Ok(Target::Index),
        404 => Ok(Target::Absent),
        status => bail!("looking up index {name}: HTTP {status}"),
    }
}

/// Makes sure `alias` can take writes: creates the physical index and the alias when absent.
pub async fn ensure(service: &Service, alias: &str, settings: Option<&Path>) -> anyhow::Result<()> {
    match lookup(service, alias).await? {
        Target::Alias(_) => Ok(()),
        Target::Index => {
            tracing::warn!(
                index = alias,
                "{alias} is an index, not an alias: cdc writes to it, but a truncate must delete and recreate it"
            );
            Ok(())
        }
        Target::Absent => match create_physical(service, alias, settings, true).await {
            Ok(physical) => {
                tracing::info!(alias, index = %physical, "created the index and pointed the alias at it");
                Ok(())
            }
            // A create that timed out may have been carried out by the node all the same, and
            // then this attempt is refused (the alias has its write index): the alias is there.
            Err(e) => match lookup(service, alias).await? {
                Target::Alias(indexes) => {
                    tracing::info!(alias, indexes = ?indexes, "the alias exists now: an earlier attempt to create it got through");
                    Ok(())
                }
                _ => Err(e),
            },
        },
    }
}

/// Empties what `alias` shows: points it at a fresh empty index and drops the old ones, in one
/// alias update.
pub async fn truncate(service: &Service, alias: &str, settings: Option<&Path>) -> anyhow::Result<()> {
    match lookup(service, alias).await? {
        Target::Absent => {
            ensure(service, alias, settings).await?;
        }
        Target::Index => {
            // No alias to swap: the index must go before one can take its name as an alias.
            let reply = service
                .send(Method::Delete, &format!("/{}", encode(alias)), None)
                .await?;
            if !reply.ok() && reply.status != 404 {
                bail!("deleting index {alias}: HTTP {}: {}", reply.status, reply.text());
            }
            let physical = create_physical(service, alias, settings, true).await?;
            tracing::info!(alias, index = %physical, "truncate: replaced the index {alias} by an alias over a fresh empty index");
        }
        Target::Alias(old) => {
            let physical = create_physical(service, alias, settings, false).await?;
            let mut actions = vec![json!({"add": {"index": physical, "alias": alias}})];
            actions.extend(old.iter().map(|index| json!({"remove_index": {"index": index}})));
            let body = serde_json::to_vec(&json!({ "actions": actions }))?;
            let reply = service.send(Method::Post, "/_aliases", Some(Bytes::from(body))).await?;
            if !reply.ok() {
                bail!(
                    "swapping alias {alias} to {physical}: HTTP {}: {}",
                    reply.status,
                    reply.text()
                );
            }
            tracing::info!(alias, index = %physical, dropped = ?old, "truncate: pointed the alias at a fresh empty index");
        }
    }
    Ok(())
}

/// Creates `<alias>_<UTC time>` with the settings file's settings and mappings, with the alias
/// (as its write index) when `with_alias`. Returns its name.
async fn create_physical(
    service: &Service,
    alias: &str,
    settings: Option<&Path>,
    with_alias: bool,
) -> anyhow::Result<String> {
    let physical = format!("{alias}_{}", chrono::Utc::now().format("%Y%m%d%H%M%S%3f"));
    let mut body = read_settings(settings).map_err(|e| Unrecoverable(format!("{e:#}")))?;
    if with_alias {
        // As the alias's write index: a second create for the same alias (a retry of one that
        // timed out but went through) is then refused instead of putting two indexes behind the
        // alias, which takes no writes.
        body["aliases"] = json!({ alias: {"is_write_index": true} });
    }
    let reply = service
        .send(
            Method::Put,
            &format!("/{}", encode(&physical)),
            Some(Bytes::from(serde_json::to_vec(&body)?)),
        )
        .await?;
    if reply.status == 400 {
        // The node judged the request itself (settings, mappings, name): sending it again
        // cannot change the answer.
        let reason = retry::classify(reply.status, &reply.body, 0).map_or_else(|f| f.reason, |_| reply.text());
        return Err(Unrecoverable(format!(
            "the node refused to create index {physical} for alias {alias} with {}: {reason}",
            settings.map_or_else(|| "default settings".to_string(), |p| p.display().to_string())
        ))
        .into());
    }
    if !reply.ok() {
        bail!("creating index {physical}: HTTP {}: {}", reply.status, reply.text());
    }
    Ok(physical)
}

/// The settings file: a JSON object as the create-index API takes it (`settings`, `mappings`).
pub fn read_settings(path: Option<&Path>) -> anyhow::Result<Json> {
    let Some(path) = path else { return Ok(json!({})) };
    let text = std::fs::read(path).with_context(|| format!("reading index settings {}", path.display()))?;
    let body: Json = serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    if !body.is_object() {
        bail!(
            "{} must hold a JSON object like {{\"settings\": {{...}}, \"mappings\": {{...}}}}",
            path.display()
        );
    }
    Ok(body)
}

/// Index and alias names go into URL paths; the few characters they may hold that a path
/// treats specially are escaped.
pub fn encode(name: &str) -> String {
    name.replace('%', "%25")
        .replace('#', "%23")
        .replace('?', "%3F")
        .replace(' ', "%20")
}

/// Whether the node accepts the settings file: creates a throwaway index with it and deletes it
/// again (for `cdc check`; the node's own validation is the only one that cannot disagree).
pub async fn try_settings(service: &Service, settings: &Path) -> anyhow::Result<()> {
    let name = format!("cdc-check-{}", chrono::Utc::now().format("%Y%m%d%H%M%S%6f"));
    let body = read_settings(Some(settings))?;
    let reply = service
        .send(
            Method::Put,
            &format!("/{}", encode(&name)),
            Some(Bytes::from(serde_json::to_vec(&body)?)),
        )
        .await?;
    if !reply.ok() {
        bail!(
            "the node refuses the settings in {} (HTTP {}): {}",
            settings.display(),
            reply.status,
            reply.text()
        );
    }
    let deleted = service
        .send(Method::Delete, &format!("/{}", encode(&name)), None)
        .await?;
    if !deleted.ok() {
        bail!(
            "deleting the throwaway index {name}: HTTP {}: {}",
            deleted.status,
            deleted.text()
        );
    }
    Ok(())
}
