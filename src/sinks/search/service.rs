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

    async fn send_raw(&self, method: Method, path: &str, body: Option<Bytes>) -> Result<Reply, elasticsearch::Error> {
        let mut headers = HeaderMap::new();
        if path.ends_with("_bulk") {
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
        self.send(Method::Post, "/_bulk", Some(body)).await
    }

    pub async fn get(&self, path: &str) -> Result<Reply, SendError> {
        self.send(Method::Get, path, None).await
    }
}
