//! What `cdc check` asks a search node: is it reachable, which product and version, are the
//! credentials accepted, and is each mapped alias either absent (cdc will create it) or an alias
//! cdc can write through.

use super::config::SearchConfig;
use super::index::{self, Target};
use super::service::Service;
use crate::config::TableMapping;
use crate::sinks::search::encoder::index_name;
use crate::sinks::Finding;

/// Checks the node of sink `name` and the aliases of `mappings` (the mappings that use it).
pub async fn check(name: &str, config: &SearchConfig, mappings: &[&TableMapping]) -> Vec<Finding> {
    let mut findings = Vec::new();
    let service = match Service::new(config) {
        Ok(s) => s,
        Err(e) => return vec![Finding::Problem(format!("sink {name}: {e:#}"))],
    };
    let reply = match service.get("/").await {
        Ok(reply) => reply,
        Err(e) => {
            findings.push(Finding::Problem(format!(
                "sink {name}: {e} — is the node running, and is url right?"
            )));
            return findings;
        }
    };
    if reply.status == 401 || reply.status == 403 {
        findings.push(Finding::Problem(format!(
            "sink {name}: {} refused the credentials (HTTP {}): check username/password or api_key",
            service.url, reply.status
        )));
        return findings;
    }
    if !reply.ok() {
        findings.push(Finding::Problem(format!(
            "sink {name}: {} answered HTTP {}: {}",
            service.url,
            reply.status,
            reply.text()
        )));
        return findings;
    }
    findings.push(version_finding(name, &service.url, &reply.json()));
    for mapping in mappings {
        findings.push(alias_finding(name, &service, mapping).await);
    }
    findings
}

fn version_finding(name: &str, url: &str, info: &serde_json::Value) -> Finding {
    let version = info["version"]["number"].as_str().unwrap_or("unknown");
    let product = if info["version"]["distribution"] == "opensearch" {
        "OpenSearch"
    } else {
        "Elasticsearch"
    };
    let major: u32 = version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    let supported = match product {
        "OpenSearch" => major >= 2,
        _ => major >= 8,
    };
    if supported {
        Finding::Ok(format!("sink {name}: {url} is {product} {version}"))
    } else {
        Finding::Warning(format!(
            "sink {name}: {url} is {product} {version}; cdc is tested with Elasticsearch 8/9 and OpenSearch 2"
        ))
    }
}

async fn alias_finding(name: &str, service: &Service, mapping: &TableMapping) -> Finding {
    let alias = index_name(mapping);
    if let Err(e) = index::read_settings(mapping.settings.as_deref()) {
        return Finding::Problem(format!("sink {name}: table {}: {e:#}", mapping.table));
    }
    // cdc creates indexes with the settings file on first use, on truncate and on rebuild: a
    // file the node refuses would stop the sink then, so find out now.
    if let Some(settings) = &mapping.settings {
        if let Err(e) = index::try_settings(service, settings).await {
            return Finding::Problem(format!("sink {name}: table {}: {e:#}", mapping.table));
        }
    }
    match index::lookup(service, &alias).await {
        Err(e) => Finding::Problem(format!("sink {name}: {e:#}")),
        Ok(Target::Absent) => Finding::Ok(format!("sink {name}: index {alias} does not exist yet; cdc creates it (an alias over {alias}_<time>)")),
        Ok(Target::Alias(indexes)) if indexes.len() == 1 => Finding::Ok(format!("sink {name}: alias {alias} → {}", indexes[0])),
        Ok(Target::Alias(indexes)) => Finding::Problem(format!(
            "sink {name}: alias {alias} points at {} indexes ({}); writes need exactly one: remove the others from the alias",
            indexes.len(),
            indexes.join(", ")
        )),
        Ok(Target::Index) => Finding::Warning(format!(
            "sink {name}: {alias} is an index, not an alias: cdc writes to it, but a truncate deletes and recreates it and a rebuild cannot swap it without downtime"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_names_the_product_and_flags_old_ones() {
        let os = serde_json::json!({"version": {"distribution": "opensearch", "number": "2.19.6"}});
        assert_eq!(
            version_finding("s", "http://n", &os),
            Finding::Ok("sink s: http://n is OpenSearch 2.19.6".into())
        );
        let old = serde_json::json!({"version": {"number": "7.17.0"}});
        assert!(
            matches!(version_finding("s", "http://n", &old), Finding::Warning(w) if w.contains("Elasticsearch 7.17.0"))
        );
    }
}
