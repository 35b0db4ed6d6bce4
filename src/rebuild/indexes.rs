//! The indexes of a rebuild: the new physical index (built behind a private alias
//! `<alias>.rebuild`), the settings that make bulk loading cheap and safe, the atomic alias swap,
//! and the clean-up of what an interrupted rebuild left behind.
//!
//! Two private aliases let a later run finish what an interrupted one left: an index behind
//! `<alias>.rebuild` that `<alias>` does not serve was never swapped in; an index behind
//! `<alias>.retired` was swapped out (in the same `_aliases` call) but not yet deleted. Both are
//! deleted.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use elasticsearch::http::Method;
use serde_json::{json, Value as Json};

pub use crate::sinks::search::index::building_alias;
use crate::sinks::search::index::{self, encode, Target};
use crate::sinks::search::service::{Reply, Service};

/// Settings for the copy: no refreshes, no replicas, and deletes remembered long enough that a
/// snapshot row written after a streamed delete of it is refused as older (`index.gc_deletes`).
const BUILD_SETTINGS: [(&str, &str); 3] = [
    ("refresh_interval", "-1"),
    ("number_of_replicas", "0"),
    ("gc_deletes", "24h"),
];

/// The private alias of indexes swapped out and not yet deleted.
fn retired_alias(alias: &str) -> String {
    format!("{alias}.retired")
}

/// The new index: its name, and the settings file's values of the build settings to restore.
pub struct NewIndex {
    pub name: String,
    restore: serde_json::Map<String, Json>,
}

/// Deletes the indexes an earlier, interrupted rebuild of `alias` left behind (and says so); an
/// index the alias already serves only loses the private alias.
pub async fn remove_leftovers(service: &Service, alias: &str) -> anyhow::Result<()> {
    let building = building_alias(alias);
    let serving = match index::lookup(service, alias).await? {
        Target::Alias(indexes) => indexes,
        _ => Vec::new(),
    };
    match index::lookup(service, &building).await? {
        Target::Absent => {}
        Target::Index => {
            tracing::warn!(index = %building, "removing the index {building}, written by an interrupted rebuild after its index was gone");
            delete(service, std::slice::from_ref(&building)).await?;
        }
        Target::Alias(indexes) => {
            for name in indexes {
                if serving.contains(&name) {
                    call(
                        service,
                        Method::Delete,
                        &format!("/{}/_alias/{}", encode(&name), encode(&building)),
                        None,
                    )
                    .await?;
                } else {
                    tracing::warn!(index = %name, alias, "removing the half-built index {name} left by an earlier rebuild of {alias} that did not finish");
                    delete(service, std::slice::from_ref(&name)).await?;
                }
            }
        }
    }
    if let Target::Alias(retired) = index::lookup(service, &retired_alias(alias)).await? {
        let retired: Vec<String> = retired.into_iter().filter(|i| !serving.contains(i)).collect();
        if retired.is_empty() {
            return Ok(());
        }
        tracing::warn!(alias, indexes = ?retired, "removing the old index(es) an earlier rebuild of {alias} swapped out but did not delete");
        delete(service, &retired).await?;
    }
    Ok(())
}

/// After the hand-over: deletes the swapped-out indexes, or with `keep` only takes them off the
/// private alias.
pub async fn retire(service: &Service, alias: &str, old: &[String], keep: bool) -> anyhow::Result<()> {
    if !keep {
        return delete(service, old).await;
    }
    let retired = retired_alias(alias);
    for name in old {
        let path = format!("/{}/_alias/{}", encode(name), encode(&retired));
        let reply = service.send(Method::Delete, &path, None).await?;
        if !reply.ok() && reply.status != 404 {
            bail!("DELETE {path}: HTTP {}: {}", reply.status, reply.text());
        }
    }
    Ok(())
}

/// Creates `<alias>_<UTC time>` with the settings file, the build settings and the private alias.
pub async fn create(service: &Service, alias: &str, settings: Option<&Path>) -> anyhow::Result<NewIndex> {
    let name = format!("{alias}_{}", chrono::Utc::now().format("%Y%m%d%H%M%S%3f"));
    let mut body = index::read_settings(settings)?;
    let restore = apply_build_settings(&mut body);
    body["aliases"] = json!({ building_alias(alias): {} });
    let body = serde_json::to_vec(&body)?;
    call(service, Method::Put, &format!("/{}", encode(&name)), Some(body)).await?;
    Ok(NewIndex { name, restore })
}

/// Replaces the settings file's values of the build settings (wherever it wrote them) by the
/// build values; returns the file's values (null: the node's default) to restore afterwards.
fn apply_build_settings(body: &mut Json) -> serde_json::Map<String, Json> {
    if !body["settings"].is_object() {
        body["settings"] = json!({});
    }
    let settings = body["settings"].as_object_mut().expect("made an object above");
    let mut restore = serde_json::Map::new();
    for (key, _) in BUILD_SETTINGS {
        let flat = settings.remove(key);
        let prefixed = settings.remove(&format!("index.{key}"));
        let nested = settings
            .get_mut("index")
            .and_then(Json::as_object_mut)
            .and_then(|index| index.remove(key));
        restore.insert(key.to_string(), flat.or(prefixed).or(nested).unwrap_or(Json::Null));
    }
    if !settings.get("index").is_some_and(Json::is_object) {
        settings.insert("index".to_string(), json!({}));
    }
    let index = settings["index"].as_object_mut().expect("made an object above");
    for (key, value) in BUILD_SETTINGS {
        index.insert(key.to_string(), json!(value));
    }
    restore
}

/// After the copy: the settings file's refresh, replicas and delete retention, a refresh, and
/// primaries active, so the index answers searches fully the moment the alias points at it.
pub async fn make_searchable(service: &Service, new: &NewIndex) -> anyhow::Result<()> {
    let path = encode(&new.name);
    let body = serde_json::to_vec(&json!({ "index": new.restore }))?;
    call(service, Method::Put, &format!("/{path}/_settings"), Some(body)).await?;
    call(service, Method::Post, &format!("/{path}/_refresh"), None).await?;
    call(
        service,
        Method::Get,
        &format!("/_cluster/health/{path}?wait_for_status=yellow&timeout=120s"),
        None,
    )
    .await?;
    Ok(())
}

/// Points `alias` at `new` alone, in one `_aliases` call that also puts the indexes it served
/// before behind `<alias>.retired` (see [`retire`]); returns them. An index named like the alias
/// is deleted in the same call: an alias cannot share its name.
pub async fn swap(service: &Service, alias: &str, new: &str) -> anyhow::Result<Vec<String>> {
    let mut attempt = 0;
    loop {
        let mut actions = Vec::new();
        let old = match index::lookup(service, alias).await? {
            Target::Absent => Vec::new(),
            Target::Index => {
                actions.push(json!({"remove_index": {"index": alias}}));
                Vec::new()
            }
            Target::Alias(old) => old.into_iter().filter(|o| o != new).collect(),
        };
        for index in &old {
            actions.push(json!({"remove": {"index": index, "alias": alias}}));
            actions.push(json!({"add": {"index": index, "alias": retired_alias(alias)}}));
        }
        actions.push(json!({"add": {"index": new, "alias": alias}}));
        let body = serde_json::to_vec(&json!({ "actions": actions }))?;
        match call(service, Method::Post, "/_aliases", Some(body)).await {
            Ok(_) => return Ok(old),
            // `cdc run` may have swapped the alias itself (a truncate) since it was looked up.
            Err(e) if attempt < 5 => {
                tracing::warn!(alias, "swapping the alias failed, looking it up again: {e:#}");
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Removes the private alias once the rebuild is complete.
pub async fn drop_building_alias(service: &Service, alias: &str, new: &str) -> anyhow::Result<()> {
    let path = format!("/{}/_alias/{}", encode(new), encode(&building_alias(alias)));
    let reply = service.send(Method::Delete, &path, None).await?;
    if !reply.ok() && reply.status != 404 {
        bail!("DELETE {path}: HTTP {}: {}", reply.status, reply.text());
    }
    Ok(())
}

/// Deletes indexes (absent ones are fine).
pub async fn delete(service: &Service, names: &[String]) -> anyhow::Result<()> {
    for name in names {
        let reply = service
            .send(Method::Delete, &format!("/{}", encode(name)), None)
            .await?;
        if !reply.ok() && reply.status != 404 {
            bail!("deleting index {name}: HTTP {}: {}", reply.status, reply.text());
        }
    }
    Ok(())
}

/// One request that must succeed.
async fn call(service: &Service, method: Method, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<Reply> {
    let what = format!("{method:?} {path}");
    let reply = service
        .send(method, path, body.map(Bytes::from))
        .await
        .with_context(|| what.clone())?;
    if !reply.ok() {
        bail!("{what}: HTTP {}: {}", reply.status, reply.text());
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_settings_replace_the_files_wherever_it_wrote_them_and_are_restored_from_it() {
        let mut body = json!({
            "settings": {"refresh_interval": "5s", "index": {"number_of_shards": 2, "number_of_replicas": 2}},
            "mappings": {"properties": {}}
        });
        let restore = apply_build_settings(&mut body);
        assert_eq!(
            body["settings"],
            json!({"index": {"number_of_shards": 2, "refresh_interval": "-1", "number_of_replicas": "0", "gc_deletes": "24h"}})
        );
        assert_eq!(
            Json::Object(restore),
            json!({"refresh_interval": "5s", "number_of_replicas": 2, "gc_deletes": null})
        );
        let mut empty = json!({});
        apply_build_settings(&mut empty);
        assert_eq!(empty["settings"]["index"]["refresh_interval"], "-1");
    }
}
