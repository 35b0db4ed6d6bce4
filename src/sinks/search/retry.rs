//! Bulk response → what became of each action: a pure function, tested on literal responses.
//!
//! Unlike a whole-request verdict, each item is judged on its own: a stale version means a newer
//! document is already there (success), a rejection by the node's load or health is retried, and
//! a document the index refuses for itself goes to the dead letters so the rest can move on.

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written (or, for a delete, already absent).
    Done,
    /// The index holds this version or a newer one: a replay, or an overtaken request.
    Stale,
    /// The node could not take it now (overload, shard unavailable, read-only): send again.
    Retry(String),
    /// The document itself is refused (mapping conflict, bad value): a dead letter.
    Dead(String),
}

/// The whole request failed before any item was judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFailed {
    pub status: u16,
    pub reason: String,
    /// Wrong credentials or missing privileges: worth its own log line, fixed by an operator.
    pub auth: bool,
}

#[derive(Deserialize)]
struct BulkResponse {
    items: Vec<std::collections::HashMap<String, Item>>,
}

#[derive(Deserialize)]
struct Item {
    status: u16,
    #[serde(default)]
    error: Option<ItemError>,
}

#[derive(Deserialize)]
struct ItemError {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    reason: String,
}

/// Errors that say "this document", whatever its status: retrying it would fail the same way.
const DOCUMENT_ERRORS: &[&str] = &[
    "mapper_parsing_exception",
    "document_parsing_exception",
    "strict_dynamic_mapping_exception",
    "illegal_argument_exception",
    "mapper_exception",
];

/// Errors that say "not now", whatever their status.
const TRANSIENT_ERRORS: &[&str] = &[
    "es_rejected_execution_exception",
    "opensearch_rejected_execution_exception",
    "circuit_breaking_exception",
];

/// Judges one bulk response of `sent` items.
pub fn classify(status: u16, body: &[u8], sent: usize) -> Result<Vec<Outcome>, RequestFailed> {
    if !(200..300).contains(&status) {
        return Err(request_failed(status, body));
    }
    let unreadable = |e: serde_json::Error| RequestFailed {
        status,
        reason: format!("unreadable bulk response ({e})"),
        auth: false,
    };
    // Most responses have no error: count their items without building them.
    let summary: Summary = serde_json::from_slice(body).map_err(unreadable)?;
    if summary.items.len() != sent {
        return Err(RequestFailed {
            status,
            reason: format!("the bulk response has {} items for {sent} actions", summary.items.len()),
            auth: false,
        });
    }
    if !summary.errors {
        return Ok(vec![Outcome::Done; sent]);
    }
    let response: BulkResponse = serde_json::from_slice(body).map_err(unreadable)?;
    Ok(response
        .items
        .iter()
        .map(|item| item.values().next().map_or(Outcome::Done, outcome))
        .collect())
}

#[derive(Deserialize)]
struct Summary {
    #[serde(default)]
    errors: bool,
    #[serde(default)]
    items: Vec<serde::de::IgnoredAny>,
}

fn outcome(item: &Item) -> Outcome {
    let Some(error) = &item.error else {
        // A delete of an absent document answers 404 without an error: it is gone, as asked.
        return Outcome::Done;
    };
    let reason = format!("{}: {}", error.kind, error.reason);
    if error.kind == "version_conflict_engine_exception" {
        Outcome::Stale
    } else if TRANSIENT_ERRORS.contains(&error.kind.as_str()) {
        Outcome::Retry(reason)
    } else if DOCUMENT_ERRORS.contains(&error.kind.as_str()) || item.status == 400 {
        Outcome::Dead(reason)
    } else {
        // 429, 5xx, an unavailable shard, a read-only index: the node's state, not the document's.
        Outcome::Retry(reason)
    }
}

fn request_failed(status: u16, body: &[u8]) -> RequestFailed {
    #[derive(Deserialize)]
    struct ErrorBody {
        error: serde_json::Value,
    }
    let reason = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            error: serde_json::Value::Object(e),
        }) => {
            let kind = e.get("type").and_then(|v| v.as_str()).unwrap_or("error");
            let reason = e.get("reason").and_then(|v| v.as_str()).unwrap_or("");
            format!("{kind}: {reason}")
        }
        Ok(ErrorBody { error }) => error.to_string(),
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
    };
    RequestFailed {
        status,
        reason: format!("HTTP {status}: {reason}"),
        auth: status == 401 || status == 403,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_without_errors_is_all_done() {
        let body = br#"{"took":3,"errors":false,"items":[{"index":{"_id":"1","status":201}},{"delete":{"_id":"2","status":200}}]}"#;
        assert_eq!(classify(200, body, 2), Ok(vec![Outcome::Done, Outcome::Done]));
    }

    /// What the sink asks for (`filter_path=errors,items.*.status,items.*.error`): the items
    /// keep their places, each with its status and any error.
    #[test]
    fn a_filtered_response_is_judged_like_a_full_one() {
        let body = br#"{"errors":true,"items":[{"index":{"status":201}},{"index":{"status":409,"error":{"type":"version_conflict_engine_exception","reason":"[1]: version conflict"}}},{"delete":{"status":404}}]}"#;
        assert_eq!(
            classify(200, body, 3),
            Ok(vec![Outcome::Done, Outcome::Stale, Outcome::Done])
        );
    }

    /// The items below are what OpenSearch 2.19 answered in a real run.
    #[test]
    fn each_item_is_judged_on_its_own() {
        let body = br#"{"took":2125,"errors":true,"items":[
            {"index":{"_index":"probe","_id":"1","_version":5,"result":"created","status":201}},
            {"index":{"_index":"probe","_id":"1","status":409,"error":{"type":"version_conflict_engine_exception","reason":"[1]: version conflict, current version [5] is higher than the one provided [3]"}}},
            {"delete":{"_index":"probe","_id":"2","_version":3,"result":"not_found","status":404}},
            {"index":{"_index":"probe","_id":"3","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [a] of type [long] in document with id '3'","caused_by":{"type":"illegal_argument_exception","reason":"For input string"}}}},
            {"index":{"_index":"probe","_id":"4","status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation"}}},
            {"index":{"_index":"probe","_id":"5","status":503,"error":{"type":"unavailable_shards_exception","reason":"primary shard is not active"}}},
            {"index":{"_index":"probe","_id":"6","status":403,"error":{"type":"cluster_block_exception","reason":"index [probe] blocked by: [FORBIDDEN/8/index write (api)];"}}}
        ]}"#;
        let outcomes = classify(200, body, 7).unwrap();
        assert_eq!(outcomes[0], Outcome::Done);
        assert_eq!(outcomes[1], Outcome::Stale);
        assert_eq!(outcomes[2], Outcome::Done, "deleting an absent document is done");
        assert!(
            matches!(&outcomes[3], Outcome::Dead(r) if r.starts_with("mapper_parsing_exception: failed to parse field [a]"))
        );
        assert!(matches!(&outcomes[4], Outcome::Retry(r) if r.starts_with("es_rejected_execution_exception")));
        assert!(matches!(&outcomes[5], Outcome::Retry(_)), "an unavailable shard heals");
        assert!(
            matches!(&outcomes[6], Outcome::Retry(_)),
            "a read-only index is the node's state, not the document's"
        );
    }

    #[test]
    fn a_failed_request_says_why_and_flags_credentials() {
        let body = br#"{"error":{"root_cause":[],"type":"security_exception","reason":"unable to authenticate user [elastic]"},"status":401}"#;
        let failed = classify(401, body, 1).unwrap_err();
        assert!(failed.auth);
        assert_eq!(
            failed.reason,
            "HTTP 401: security_exception: unable to authenticate user [elastic]"
        );
        let overloaded = classify(429, b"Too Many Requests", 1).unwrap_err();
        assert!(!overloaded.auth);
        assert_eq!(overloaded.reason, "HTTP 429: Too Many Requests");
    }

    #[test]
    fn a_response_that_does_not_match_the_request_is_a_failure() {
        let body = br#"{"errors":false,"items":[{"index":{"status":201}}]}"#;
        assert!(classify(200, body, 2).is_err());
        assert!(classify(200, b"<html>proxy</html>", 1).is_err());
    }
}
