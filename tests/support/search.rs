//! The search node in tests: its URL, HTTP calls, every document of an index (paged, any size),
//! and the comparison of an index with what a table should produce, document by document.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::TestDb;

/// Documents by id.
pub type Docs = BTreeMap<String, Value>;

pub fn node_url() -> String {
    super::search_url()
        .expect("CDC_TEST_SEARCH_URL is not set: run the tests with scripts/test.sh (it starts the search node)")
}

pub async fn http(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let (status, text) = http_text(method, url, body).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub async fn http_text(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, String) {
    let client = reqwest::Client::new();
    let mut request = client.request(method, url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Every document of `index` with its `_source` exactly as stored (bytes, not re-serialized),
/// after a refresh; paged by `search_after` on `_id`, so any size works.
pub async fn raw_docs(node: &str, index: &str) -> BTreeMap<String, String> {
    versioned_docs(node, index)
        .await
        .into_iter()
        .map(|(id, (_, source))| (id, source))
        .collect()
}

/// [`raw_docs`] with each document's version (the commit LSN cdc wrote it with).
pub async fn versioned_docs(node: &str, index: &str) -> BTreeMap<String, (u64, String)> {
    let (status, _) = http(reqwest::Method::POST, &format!("{node}/{index}/_refresh"), None).await;
    if status == 404 {
        return BTreeMap::new();
    }
    #[derive(serde::Deserialize)]
    struct Reply<'a> {
        #[serde(borrow)]
        hits: Hits<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Hits<'a> {
        #[serde(borrow)]
        hits: Vec<Hit<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Hit<'a> {
        _id: String,
        _version: u64,
        #[serde(borrow)]
        _source: &'a serde_json::value::RawValue,
    }
    let mut out = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut body = json!({
            "size": 10000,
            "version": true,
            "sort": [{"_id": {"order": "asc", "unmapped_type": "keyword"}}],
        });
        if let Some(after) = &after {
            body["search_after"] = json!([after]);
        }
        let (status, text) = search_when_ready(&format!("{node}/{index}/_search"), body).await;
        assert_eq!(status, 200, "searching {index}: {text}");
        let reply: Reply = serde_json::from_str(&text).unwrap();
        let n = reply.hits.hits.len();
        for hit in reply.hits.hits {
            after = Some(hit._id.clone());
            out.insert(hit._id, (hit._version, hit._source.get().to_string()));
        }
        if n < 10000 {
            return out;
        }
    }
}

/// POST a search, again while the node answers 503 (a fresh index's shard, e.g. right after a
/// truncate swapped the alias, is not active yet), for up to 30 s.
pub async fn search_when_ready(url: &str, body: Value) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = http_text(reqwest::Method::POST, url, Some(body.clone())).await;
        if status != 503 || Instant::now() >= deadline {
            return (status, text);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every document of `index` (an alias), parsed, after a refresh.
pub async fn index_docs(node: &str, index: &str) -> Docs {
    raw_docs(node, index)
        .await
        .into_iter()
        .map(|(id, source)| (id, serde_json::from_str(&source).unwrap()))
        .collect()
}

/// The documents the table should produce: `sql` selects (id text, document jsonb).
pub async fn table_docs(db: &TestDb, sql: &str) -> Docs {
    db.query_text(sql)
        .await
        .into_iter()
        .map(|row| {
            (
                row[0].clone().unwrap(),
                serde_json::from_str(row[1].as_deref().unwrap()).unwrap(),
            )
        })
        .collect()
}

/// Waits until the index equals what `sql` says the table holds; fails with the differences.
pub async fn assert_index_equals_table(node: &str, index: &str, db: &TestDb, sql: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let expected = table_docs(db, sql).await;
        let actual = index_docs(node, index).await;
        if expected == actual {
            assert!(!expected.is_empty(), "the test compares something");
            return;
        }
        if Instant::now() >= deadline {
            let missing: Vec<&String> = expected.keys().filter(|k| !actual.contains_key(*k)).take(10).collect();
            let extra: Vec<&String> = actual.keys().filter(|k| !expected.contains_key(*k)).take(10).collect();
            let differing: Vec<(&String, &Value, &Value)> = expected
                .iter()
                .filter_map(|(k, v)| actual.get(k).filter(|a| *a != v).map(|a| (k, v, a)))
                .take(5)
                .collect();
            panic!(
                "index {index} differs from the table after {timeout:?}: {} expected, {} indexed; missing {missing:?}; extra {extra:?}; differing (id, table, index) {differing:?}",
                expected.len(),
                actual.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
