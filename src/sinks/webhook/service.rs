//! One HTTP attempt: POST the body with the Standard Webhooks headers, within the timeout,
//! paced by the endpoint's rate limit. Both the direct path and the outbox sender go through
//! here, so the rate limit holds across them.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use tokio::time::Instant;

use super::config::{RateLimit, WebhookConfig};
use super::signing::Signer;

/// How much of a response body an attempt keeps (for logs and `cdc webhook test`).
const BODY_START: usize = 200;

pub struct Service {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    signer: Signer,
    timeout: Duration,
    pacer: Option<Pacer>,
}

/// What came back from one attempt.
#[derive(Debug, Clone)]
pub struct Response {
    /// None when no response came (refused, reset, timed out).
    pub status: Option<u16>,
    pub retry_after: Option<String>,
    pub latency: Duration,
    /// Why it is not a delivery, in words; None for a 2xx.
    pub error: Option<String>,
    pub body_start: String,
}

impl Service {
    pub fn new(config: &WebhookConfig) -> anyhow::Result<Service> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in &config.headers {
            let name = HeaderName::try_from(name.as_str())
                .with_context(|| format!("headers: {name:?} is not a valid header name"))?;
            let value = HeaderValue::try_from(value.as_str())
                .with_context(|| format!("headers: the value of {name} is not a valid header value"))?;
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("cdc/", env!("CARGO_PKG_VERSION")))
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_max_idle_per_host(config.lanes.get() + 1)
            .build()
            .context("building the HTTP client")?;
        Ok(Service {
            client,
            url: reqwest::Url::parse(&config.url).context("url")?,
            headers,
            signer: Signer::new(&config.secret).map_err(anyhow::Error::msg)?,
            timeout: config.timeout,
            pacer: config.rate_limit.map(Pacer::new),
        })
    }

    /// POSTs `body` as message `id`; never fails: a failure is a [`Response`] without a 2xx.
    pub async fn post(&self, id: &str, body: Bytes) -> Response {
        if let Some(pacer) = &self.pacer {
            pacer.wait().await;
        }
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string());
        if let Some(signature) = self.signer.sign(id, timestamp, &body) {
            request = request.header("webhook-signature", signature);
        }
        let started = Instant::now();
        let result = async {
            let response = request.body(body).send().await?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            // Reading the body to its end lets the connection be reused.
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, retry_after, body))
        }
        .await;
        let latency = started.elapsed();
        match result {
            Ok((status, retry_after, body)) => Response {
                status: Some(status),
                retry_after,
                latency,
                error: (!(200..300).contains(&status)).then(|| format!("HTTP {status}")),
                body_start: String::from_utf8_lossy(&body[..body.len().min(BODY_START)]).into_owned(),
            },
            Err(e) => Response {
                status: None,
                retry_after: None,
                latency,
                error: Some(self.describe(&e)),
                body_start: String::new(),
            },
        }
    }

    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    fn describe(&self, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            return format!("no response within {:?}", self.timeout);
        }
        // reqwest's own message hides the cause (refused, reset, DNS): walk the chain.
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    }
}

/// Spaces requests evenly: at most `requests` per `per`, with no burst.
struct Pacer {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    fn new(limit: RateLimit) -> Pacer {
        Pacer {
            interval: limit.interval(),
            next: Mutex::new(None),
        }
    }

    /// Reserves the next free slot, then waits for it.
    async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().expect("the pacer's lock is never poisoned");
            let now = Instant::now();
            let slot = next.map_or(now, |n| n.max(now));
            *next = Some(slot + self.interval);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pacer_spaces_requests_by_the_interval() {
        let pacer = Pacer::new(RateLimit::parse("4/1s").unwrap());
        let t0 = Instant::now();
        let mut at = Vec::new();
        for _ in 0..3 {
            pacer.wait().await;
            at.push(t0.elapsed().as_millis());
        }
        assert!(at[0] < 200, "the first request goes at once: {at:?}");
        for pair in at.windows(2) {
            assert!(pair[1] - pair[0] >= 249, "requests 250 ms apart: {at:?}");
        }
    }
}
