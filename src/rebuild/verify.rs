//! `cdc verify`: whether an index holds exactly the documents its table gives under the mapping.
//!
//! Both sides are streamed in document-id order (byte order) and merged, so memory stays bounded
//! whatever the size: the table under a snapshot, ordered by the document id Postgres computes
//! the way cdc converts each id column (`Plan::id_sql`: timestamps with `T` and `Z`, bool as
//! `true`, bytea as base64, ...; `COLLATE "C"`), each row made into its document by the
//! rebuild's own code; the index by `search_after` on `_id`. Both orders are checked as they
//! stream (each row's SQL id must be the id the encoder made, each side must ascend), so a key
//! type whose text the SQL does not reproduce stops verify with a message instead of
//! reporting false differences. Documents are compared by meaning (parsed JSON). The index is
//! live, so each difference found is checked once more (current row, current document, after a
//! refresh) before it is reported. `--sample N` checks N random rows and N random documents
//! instead of everything.

use std::collections::{HashMap, VecDeque};

use anyhow::{bail, Context};
use bytes::Bytes;
use elasticsearch::http::Method;
use futures_util::{pin_mut, TryStreamExt};
use serde_json::{json, Value as Json};
use tokio_postgres::{Client, SimpleQueryMessage, SimpleQueryRow};

use super::table::Plan;
use crate::config::TableMapping;
use crate::event::Lsn;
use crate::sinks::search::encoder::{index_name, Write};
use crate::sinks::search::index::encode;
use crate::sinks::search::service::Service;
use crate::sinks::search::SearchConfig;
use crate::source::connection;

/// How many examples of each kind of difference are shown.
const EXAMPLES: usize = 5;
/// How many differences are held for the second look; more are counted as found.
const RECHECK_LIMIT: usize = 10_000;
/// Documents per index page and per recheck batch.
const PAGE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Missing,
    Extra,
    Different,
}

/// Differences of one kind.
#[derive(Debug, Default)]
pub struct Findings {
    pub count: u64,
    /// `id` for missing and extra documents, `id: field, field` for different ones.
    pub examples: Vec<String>,
}

impl Findings {
    fn add(&mut self, example: String) {
        self.count += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(example);
        }
    }
}

/// What `cdc verify` found for one mapping.
#[derive(Debug, Default)]
pub struct Report {
    pub table: String,
    pub alias: String,
    /// Rows (under the filter) and documents compared.
    pub rows: u64,
    pub documents: u64,
    pub missing: Findings,
    pub extra: Findings,
    pub different: Findings,
    /// Rows that make no document (a NULL id column): the stream and the rebuild store them as
    /// dead letters, so they are not expected in the index.
    pub without_id: u64,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.missing.count + self.extra.count + self.different.count == 0
    }

    /// What is printed: a summary line, then one line per kind of difference found.
    pub fn lines(&self) -> Vec<String> {
        let verdict = if self.is_clean() { "ok" } else { "DIFFERS" };
        let mut summary = format!(
            "{} → {}: {verdict}: {} rows, {} documents; missing {}, extra {}, different {}",
            self.table,
            self.alias,
            self.rows,
            self.documents,
            self.missing.count,
            self.extra.count,
            self.different.count
        );
        if self.without_id > 0 {
            summary += &format!(
                "; {} row(s) without a document id (dead letters, not expected in the index)",
                self.without_id
            );
        }
        let mut lines = vec![summary];
        for (name, findings) in [
            ("missing", &self.missing),
            ("extra", &self.extra),
            ("different", &self.different),
        ] {
            if findings.count > 0 {
                lines.push(format!(
                    "  {name} ({}), e.g.: {}",
                    findings.count,
                    findings.examples.join("; ")
                ));
            }
        }
        lines
    }
}

/// The comparison's state: counts, and the differences waiting for their second look.
struct Compare<'a> {
    plan: &'a Plan,
    service: &'a Service,
    alias: String,
    report: Report,
    suspects: Vec<(Kind, String)>,
}

/// Compares the index of `mapping` (on `search`) with its table; `sample` checks that many random
/// rows and documents instead of all.
pub async fn verify(
    source_url: &str,
    search: &SearchConfig,
    mapping: &TableMapping,
    sample: Option<usize>,
) -> anyhow::Result<Report> {
    let service = Service::new(search)?;
    let catalog = connection::catalog(source_url).await?;
    let plan = Plan::new(&catalog, mapping).await?;
    let alias = index_name(mapping).to_string();
    let mut compare = Compare {
        plan: &plan,
        service: &service,
        report: Report {
            table: plan.table.to_string(),
            alias: alias.clone(),
            ..Report::default()
        },
        alias,
        suspects: Vec::new(),
    };
    compare.refresh().await?;
    match sample {
        None => compare.everything(&catalog).await?,
        Some(n) => compare.sample(&catalog, n).await?,
    }
    compare.recheck(&catalog).await?;
    Ok(compare.report)
}

impl Compare<'_> {
    /// Merges the whole table (under a snapshot) with the whole index, both in id order.
    async fn everything(&mut self, catalog: &Client) -> anyhow::Result<()> {
        catalog
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        let sql = self.plan.select_in_id_order();
        let rows = catalog
            .simple_query_raw(&sql)
            .await
            .with_context(|| format!("reading {}", self.plan.table))?;
        pin_mut!(rows);
        let alias = self.alias.clone();
        let mut index = IndexScan::new(self.service, &alias);
        let mut doc = index.next().await?;
        let mut previous: Option<String> = None;
        while let Some(message) = rows.try_next().await? {
            let SimpleQueryMessage::Row(row) = message else {
                continue;
            };
            let (id, expected) = match self.document(&row)? {
                Made::Document(id, doc) => (id, doc),
                Made::Nothing => continue,
                Made::NoId => {
                    self.report.without_id += 1;
                    continue;
                }
            };
            let sql_id = row.get(self.plan.columns.len()).unwrap_or_default();
            if sql_id != id {
                bail!(
                    "{}: Postgres computed the document id {sql_id:?} where cdc makes {id:?}, so the table cannot be read in the index's id order; the id columns are {}: please report it",
                    self.plan.table,
                    self.plan.id_types()
                );
            }
            if let Some(previous) = previous.as_ref().filter(|p| **p > id) {
                bail!(
                    "{}: Postgres sorted the document id {id:?} after {previous:?}; verify needs the database's \"C\" collation to order by bytes",
                    self.plan.table
                );
            }
            self.report.rows += 1;
            // Index documents before this row's id are not in the table.
            while let Some((doc_id, source)) = doc.take() {
                if doc_id >= id {
                    doc = Some((doc_id, source));
                    break;
                }
                self.found(Kind::Extra, doc_id);
                doc = index.next().await?;
            }
            match doc.take() {
                Some((doc_id, source)) if doc_id == id => {
                    if differing_fields(&expected, &source).is_some() {
                        self.found(Kind::Different, id.clone());
                    }
                    doc = index.next().await?;
                }
                other => {
                    doc = other;
                    self.found(Kind::Missing, id.clone());
                }
            }
            previous = Some(id);
        }
        while let Some((doc_id, _)) = doc {
            self.found(Kind::Extra, doc_id);
            doc = index.next().await?;
        }
        self.report.documents = index.seen;
        catalog.batch_execute("COMMIT").await?;
        Ok(())
    }

    /// N random rows looked up in the index, N random documents looked up in the table.
    async fn sample(&mut self, catalog: &Client, n: usize) -> anyhow::Result<()> {
        let sql = format!(
            "{} ORDER BY random() LIMIT {n}",
            self.plan.select(&self.plan.table.quoted(), None)
        );
        let mut ids = Vec::new();
        for row in rows(catalog, &sql).await? {
            match self.document(&row)? {
                Made::Document(id, _) => ids.push(id),
                Made::NoId => self.report.without_id += 1,
                Made::Nothing => {}
            }
        }
        self.report.rows = ids.len() as u64;
        let reply = self
            .search(json!({"size": n, "_source": false, "query": {"function_score": {"query": {"match_all": {}}, "random_score": {}}}}))
            .await?;
        let docs: Vec<String> = hits(&reply)
            .iter()
            .filter_map(|h| h["_id"].as_str().map(str::to_string))
            .collect();
        self.report.documents = docs.len() as u64;
        for chunk in ids.chunks(PAGE) {
            let (table, index) = (self.table_docs(catalog, chunk).await?, self.index_docs(chunk).await?);
            for id in chunk {
                match (table.get(id), index.get(id)) {
                    (Some(_), None) => self.found(Kind::Missing, id.clone()),
                    (Some(t), Some(i)) if differing_fields(t, i).is_some() => self.found(Kind::Different, id.clone()),
                    _ => {}
                }
            }
        }
        for chunk in docs.chunks(PAGE) {
            let table = self.table_docs(catalog, chunk).await?;
            for id in chunk {
                if !table.contains_key(id) {
                    self.found(Kind::Extra, id.clone());
                }
            }
        }
        Ok(())
    }

    /// Looks again at each difference found: the current row against the current document.
    async fn recheck(&mut self, catalog: &Client) -> anyhow::Result<()> {
        let suspects = std::mem::take(&mut self.suspects);
        if suspects.is_empty() {
            return Ok(());
        }
        tracing::info!(
            table = %self.plan.table,
            "{} difference(s) found; looking at them again",
            suspects.len()
        );
        self.refresh().await?;
        for chunk in suspects.chunks(PAGE) {
            let ids: Vec<String> = chunk.iter().map(|(_, id)| id.clone()).collect();
            let (table, index) = (self.table_docs(catalog, &ids).await?, self.index_docs(&ids).await?);
            for id in &ids {
                match (table.get(id), index.get(id)) {
                    (Some(_), None) => self.report.missing.add(id.clone()),
                    (None, Some(_)) => self.report.extra.add(id.clone()),
                    (Some(t), Some(i)) => {
                        if let Some(fields) = differing_fields(t, i) {
                            self.report.different.add(format!("{id}: {}", fields.join(", ")));
                        }
                    }
                    (None, None) => {}
                }
            }
        }
        Ok(())
    }

    /// A difference on the first look: held for the second look, or counted when too many.
    fn found(&mut self, kind: Kind, id: String) {
        if self.suspects.len() < RECHECK_LIMIT {
            self.suspects.push((kind, id));
            return;
        }
        let findings = match kind {
            Kind::Missing => &mut self.report.missing,
            Kind::Extra => &mut self.report.extra,
            Kind::Different => &mut self.report.different,
        };
        findings.add(id);
    }

    /// What a selected row makes (its first columns are the plan's).
    fn document(&self, row: &SimpleQueryRow) -> anyhow::Result<Made> {
        let texts = (0..self.plan.columns.len()).map(|i| row.get(i));
        let Ok(actions) = self.plan.actions(texts, Lsn::ZERO) else {
            return Ok(Made::NoId);
        };
        let Some(action) = actions.into_iter().last() else {
            return Ok(Made::Nothing);
        };
        let Write::Index(bytes) = &action.write else {
            bail!("a row of {} made no document", self.plan.table);
        };
        Ok(Made::Document(action.doc.id, serde_json::from_slice(bytes)?))
    }

    /// The current documents of these ids, from the table.
    async fn table_docs(&self, catalog: &Client, ids: &[String]) -> anyhow::Result<HashMap<String, Json>> {
        let literals: Vec<String> = ids.iter().map(|id| quote_literal(id)).collect();
        let condition = format!("{} IN ({})", self.plan.id_sql(), literals.join(", "));
        let sql = self.plan.select(&self.plan.table.quoted(), Some(&condition));
        let mut out = HashMap::with_capacity(ids.len());
        for row in rows(catalog, &sql).await? {
            if let Made::Document(id, doc) = self.document(&row)? {
                out.insert(id, doc);
            }
        }
        Ok(out)
    }

    /// The current documents of these ids, from the index.
    async fn index_docs(&self, ids: &[String]) -> anyhow::Result<HashMap<String, Json>> {
        let reply = self
            .request(
                Method::Post,
                &format!("/{}/_mget", encode(&self.alias)),
                Some(json!({ "ids": ids })),
            )
            .await?;
        Ok(reply["docs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["found"].as_bool() == Some(true))
            .filter_map(|d| Some((d["_id"].as_str()?.to_string(), d["_source"].clone())))
            .collect())
    }

    async fn refresh(&self) -> anyhow::Result<()> {
        self.request(Method::Post, &format!("/{}/_refresh", encode(&self.alias)), None)
            .await
            .map(|_| ())
    }

    async fn search(&self, body: Json) -> anyhow::Result<Json> {
        search(self.service, &self.alias, body).await
    }

    async fn request(&self, method: Method, path: &str, body: Option<Json>) -> anyhow::Result<Json> {
        request(self.service, method, path, body).await
    }
}

/// What a row of the table makes.
enum Made {
    Document(String, Json),
    /// Nothing: the mapping's filter or ops leave the row out.
    Nothing,
    /// No document id (a NULL id column): a dead letter for the stream and the rebuild.
    NoId,
}

/// The index's documents in `_id` order, a page at a time.
struct IndexScan<'a> {
    service: &'a Service,
    alias: &'a str,
    page: VecDeque<(String, Json)>,
    after: Option<String>,
    done: bool,
    seen: u64,
}

impl<'a> IndexScan<'a> {
    fn new(service: &'a Service, alias: &'a str) -> IndexScan<'a> {
        IndexScan {
            service,
            alias,
            page: VecDeque::new(),
            after: None,
            done: false,
            seen: 0,
        }
    }

    async fn next(&mut self) -> anyhow::Result<Option<(String, Json)>> {
        if self.page.is_empty() && !self.done {
            // unmapped_type: an index no document was ever mapped in has no `_id` to sort on.
            let sort = json!([{"_id": {"order": "asc", "unmapped_type": "keyword"}}]);
            let mut body = json!({"size": PAGE, "sort": sort, "query": {"match_all": {}}});
            if let Some(after) = &self.after {
                body["search_after"] = json!([after]);
            }
            let reply = search(self.service, self.alias, body).await?;
            for hit in hits(&reply) {
                let id = hit["_id"].as_str().context("a search hit without _id")?.to_string();
                // The merge relies on the node sorting `_id` by bytes, as the table side is.
                if let Some(last) = self.page.back().map(|(id, _)| id).or(self.after.as_ref()) {
                    if *last >= id {
                        bail!("{} returned _id {id:?} after {last:?}: the node does not sort _id by bytes, so verify cannot merge; use --sample", self.alias);
                    }
                }
                self.page.push_back((id, hit["_source"].clone()));
            }
            self.done = self.page.len() < PAGE;
            self.after = self.page.back().map(|(id, _)| id.clone());
        }
        let next = self.page.pop_front();
        self.seen += u64::from(next.is_some());
        Ok(next)
    }
}

/// The top-level fields whose values differ (None: the documents are equal).
fn differing_fields(expected: &Json, actual: &Json) -> Option<Vec<String>> {
    if expected == actual {
        return None;
    }
    let (Some(e), Some(a)) = (expected.as_object(), actual.as_object()) else {
        return Some(vec!["(whole document)".to_string()]);
    };
    let mut fields: Vec<String> = e
        .iter()
        .filter(|(k, v)| a.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .chain(a.keys().filter(|k| !e.contains_key(*k)).cloned())
        .collect();
    fields.sort();
    Some(fields)
}

/// The rows of a query run with the simple protocol (text results, as pgoutput sends them).
async fn rows(catalog: &Client, sql: &str) -> anyhow::Result<Vec<SimpleQueryRow>> {
    Ok(catalog
        .simple_query(sql)
        .await?
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .collect())
}

/// A string literal (standard_conforming_strings, the default since Postgres 9.1).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn hits(reply: &Json) -> &[Json] {
    reply["hits"]["hits"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

async fn search(service: &Service, alias: &str, body: Json) -> anyhow::Result<Json> {
    request(
        service,
        Method::Post,
        &format!("/{}/_search", encode(alias)),
        Some(body),
    )
    .await
}

async fn request(service: &Service, method: Method, path: &str, body: Option<Json>) -> anyhow::Result<Json> {
    let body = body.map(|b| Bytes::from(b.to_string()));
    let reply = service.send(method, path, body).await?;
    if reply.status == 404 {
        bail!("{path}: the index does not exist (HTTP 404): run `cdc rebuild-index` or `cdc run` first");
    }
    if !reply.ok() {
        bail!("{path}: HTTP {}: {}", reply.status, reply.text());
    }
    Ok(reply.json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_compare_by_meaning_and_name_the_fields_that_differ() {
        assert_eq!(
            differing_fields(&json!({"a": 1.5, "b": "x"}), &json!({"b": "x", "a": 1.50})),
            None
        );
        assert_eq!(
            differing_fields(&json!({"a": 1, "b": "x"}), &json!({"a": 1, "b": "y", "c": true})),
            Some(vec!["b".to_string(), "c".to_string()])
        );
    }

    #[test]
    fn the_report_counts_and_shows_a_few_examples() {
        let mut report = Report {
            table: "public.events".into(),
            alias: "events".into(),
            rows: 3,
            documents: 3,
            ..Report::default()
        };
        assert!(report.is_clean());
        for i in 0..7 {
            report.missing.add(i.to_string());
        }
        assert!(!report.is_clean());
        assert_eq!(
            report.lines(),
            vec![
                "public.events → events: DIFFERS: 3 rows, 3 documents; missing 7, extra 0, different 0".to_string(),
                "  missing (7), e.g.: 0; 1; 2; 3; 4".to_string()
            ]
        );
    }
}
