//! Sending requests to the node, through the `elasticsearch` crate.
//!
//! The crate is pinned at 9.1.0-alpha.1 with rustls: checked against OpenSearch 2.19 (the node
//! the scripts start), whose bulk, alias and index APIs it speaks unchanged, and it sends no
//! compatibility headers unless asked. cdc only needs raw requests (bulk bodies it builds
//! itself, a few index/alias calls), so everything goes through `Elasticsearch::send`.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::headers::HeaderMap;
use elasticsearch::http::transport::{MultiNodeConnectionPool, SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, Url};
use elasticsearch::Elasticsearch;

use super::config::SearchConfig;

/// Bulk requests ask only for what `retry::classify` reads: with 1,000 documents a request, the
/// full response (index, id, version, shards, sequence number of every item) is built by the
/// node and parsed here for nothing.
const BULK_PATH: &str = "/_bulk?filter_path=errors,items.*.status,items.*.error";

/// A node's answer: status and body. Errors are only the ones before an answer (connect,
/// timeout, TLS): a [`SendError`].
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The body's start, for error messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(500)]).into_owned()
    }
}

/// No answer from the node: which node (by its redacted URL) and why, without the request's
/// URL as the HTTP client wrote it (which may carry credentials: see `crate::redact`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SendError(String);

#[derive(Clone)]
pub struct Service {
    client: Elasticsearch,
    /// How many node URLs the pool takes turns over.
    nodes: usize,
    timeout: Duration,
    /// The first URL, to name the node in messages; redacted (`crate::redact::url`).
    pub url: String,
}

impl Service {
    pub fn new(config: &SearchConfig) -> anyhow::Result<Service> {
        let urls = config
            .node_urls()
            .into_iter()
            .map(|u| Url::parse(u).with_context(|| format!("{} is not a URL", crate::redact::url(u))))
            .collect::<anyhow::Result<Vec<Url>>>()?;
        let first = crate::redact::url(urls.first().context("no node URL configured")?.as_str());
        let urls_count = urls.len();
        let mut builder = if urls.len() == 1 {
            TransportBuilder::new(SingleNodeConnectionPool::new(urls[0].clone()))
        } else {
            TransportBuilder::new(MultiNodeConnectionPool::round_robin(urls, None))
        };
        if let Some(user) = &config.username {
            builder = builder.auth(Credentials::Basic(
                user.clone(),
                config.password.clone().unwrap_or_default(),
            ));
        }
        if let Some(key) = &config.api_key {
            builder = builder.auth(Credentials::EncodedApiKey(key.clone()));
        }
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("reading ca_file {}", ca.display()))?;
            let cert = Certificate::from_pem(&pem)
                .with_context(|| format!("ca_file {} is not a PEM certificate", ca.display()))?;
            builder = builder.cert_validation(CertificateValidation::Full(cert));
        }
        let transport = builder
            .timeout(config.request_timeout)
            .build()
            .context("building the HTTP client")?;
        Ok(Service {
            client: Elasticsearch::new(transport),
            nodes: urls_count,
            timeout: config.request_timeout,
            url: first.trim_end_matches('/').to_string(),
        })
    }

    /// One request; `body` is JSON (or NDJSON for `_bulk`).
    pub async fn send(&self, method: Method, path: &str, body: Option<Bytes>) -> Result<Reply, SendError> {
        self.send_raw(method, path, body).await.map_err(|e| {
            if e.is_timeout() {
                SendError(format!("no response from {} within {:?}", self.url, self.timeout))
            } else {
                SendError(format!("cannot reach {}: {}", self.url, crate::redact::http_error(&e)))
            }
        })
    }

    /// With several nodes the pool hands each request to the next one in turn, so a node that
    /// refuses connections (stopped) is skipped at once by sending to the next, instead of
    /// costing every other request a retry's wait. Only refused connections: nothing reached the
    /// node, so sending again is safe for any request; a timeout is left to the caller's retry.
    async fn send_raw(&self, method: Method, path: &str, body: Option<Bytes>) -> Result<Reply, elasticsearch::Error> {
        let mut skips = 2 * self.nodes - 1; // concurrent requests move the pool too: go round twice
        loop {
            match self.send_once(method, path, body.clone()).await {
                Err(e) if skips > 0 && refused(&e) => {
                    skips -= 1;
                    tracing::debug!(
                        "a node refused the connection: {}; sending to the next node",
                        crate::redact::http_error(&e)
                    );
                }
                reply => return reply,
            }
        }
    }

    async fn send_once(&self, method: Method, path: &str, body: Option<Bytes>) -> Result<Reply, elasticsearch::Error> {
        let mut headers = HeaderMap::new();
        if path.starts_with(BULK_PATH) {
            headers.insert("content-type", "application/x-ndjson".parse().expect("a valid header"));
        }
        let response = self
            .client
            .send::<Bytes, ()>(method, path, headers, None, body, Some(self.timeout))
            .await?;
        let status = response.status_code().as_u16();
        let body = response.bytes().await?;
        Ok(Reply { status, body })
    }

    pub async fn bulk(&self, body: Bytes) -> Result<Reply, SendError> {
        self.send(Method::Post, BULK_PATH, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> Result<Reply, SendError> {
        self.send(Method::Get, path, None).await
    }
}

/// Whether the request never reached a node: the connection was refused. Read from the I/O
/// error at the bottom of the chain (the client's own HTTP crate is not the version cdc uses,
/// so its error type cannot be asked).
fn refused(e: &elasticsearch::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refused_connection_is_recognised_through_the_clients_error() {
        // Two ports nobody listens on: every attempt is refused, so the request fails after
        // going round the nodes, and the error is the refused connection.
        let closed = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let config: SearchConfig = toml::from_str(&format!(
            "urls = [\"http://127.0.0.1:{}\", \"http://127.0.0.1:{}\"]",
            closed(),
            closed()
        ))
        .unwrap();
        let service = Service::new(&config).unwrap();
        let e = service.send_raw(Method::Get, "/", None).await.unwrap_err();
        assert!(refused(&e), "{e:?}");
    }
}
