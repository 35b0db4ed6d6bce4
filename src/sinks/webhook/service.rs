//! One HTTP attempt: POST the body with the Standard Webhooks headers, within the timeout,
//! paced by the endpoint's rate limit. Both the direct path and the outbox sender go through
//! here, so the rate limit holds across them.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use tokio::time::Instant;

use super::config::{RateLimit, WebhookConfig};
use super::signing::Signer;

/// How much of a response body an attempt keeps (for logs and `cdc webhook test`).
const BODY_START: usize = 200;

pub struct Service {
    client: reqwest::Client,
    url: reqwest::Url,
    /// The URL as messages show it (`crate::redact::url`): no credentials, no query values.
    shown: String,
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
            // A 3xx is a failure (see `retry`): following it would turn the POST into a
            // body-less GET on 301/302/303, whose 2xx would count as a delivery, or send the
            // signed body to a URL nobody configured on 307/308.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_max_idle_per_host(config.lanes.get() + 1)
            .build()
            .context("building the HTTP client")?;
        Ok(Service {
            client,
            url: reqwest::Url::parse(&config.url).context("url")?,
            shown: crate::redact::url(&config.url),
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
            let location = response
                .headers()
                .get(LOCATION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            // Reading the body to its end lets the connection be reused.
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, retry_after, location, body))
        }
        .await;
        let latency = started.elapsed();
        match result {
            Ok((status, retry_after, location, body)) => Response {
                status: Some(status),
                retry_after,
                latency,
                error: match status {
                    200..=299 => None,
                    300..=399 => Some(self.redirected(status, location.as_deref())),
                    _ => Some(format!("HTTP {status}")),
                },
                body_start: String::from_utf8_lossy(&body[..body.len().min(BODY_START)]).into_owned(),
            },
            Err(e) => Response {
                status: None,
                retry_after: None,
                latency,
                error: Some(self.describe(e)),
                body_start: String::new(),
            },
        }
    }

    /// An `OPTIONS` request to the endpoint, unsigned and carrying no event: whether anything
    /// answers there (`cdc check`). Any HTTP status counts as an answer but a redirect: the
    /// endpoint moved, and deliveries, which follow no redirect, would all fail. The error says
    /// why not.
    pub async fn probe(&self) -> Result<u16, String> {
        match self
            .client
            .request(reqwest::Method::OPTIONS, self.url.clone())
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status().as_u16();
                if !(300..400).contains(&status) {
                    return Ok(status);
                }
                let location = response
                    .headers()
                    .get(LOCATION)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                Err(self.redirected(status, location.as_deref()))
            }
            Err(e) => Err(self.describe(e)),
        }
    }

    /// The endpoint, redacted: what every message names.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// A 3xx, in words that say what to do: the user configured a URL that moved.
    fn redirected(&self, status: u16, location: Option<&str>) -> String {
        let Some(location) = location else {
            return format!("HTTP {status}: a redirect (without a Location), which cdc does not follow");
        };
        // Named in full (it is usually relative) and redacted like the configured URL.
        let target = self
            .url
            .join(location)
            .map_or_else(|_| crate::redact::url(location), |u| crate::redact::url(u.as_str()));
        format!(
            "HTTP {status}: the endpoint answered a redirect to {target}, which cdc does not follow; \
             configure the final URL as the sink's url"
        )
    }

    fn describe(&self, e: reqwest::Error) -> String {
        if e.is_timeout() {
            return format!("no response within {:?}", self.timeout);
        }
        // reqwest's own message hides the cause (refused, reset, DNS): the whole chain, without
        // the URL (its query string may hold a token).
        crate::redact::http_error(&e.without_url())
    }
}

/// Spaces requests evenly: at most `requests` per `per`, with no burst.
///
/// Each request waits until `interval` after the previous one was released, measured from when
/// that one really left the pacer (not from when it was scheduled), so a late wake-up on a busy
/// machine never lets the next request follow it closer: any window of `per` holds at most
/// `requests` releases. The lock is tokio's fair mutex, held across the wait, so lanes take
/// their turns in arrival order.
struct Pacer {
    interval: Duration,
    last: tokio::sync::Mutex<Option<Instant>>,
}

impl Pacer {
    fn new(limit: RateLimit) -> Pacer {
        Pacer {
            interval: limit.interval(),
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// Waits for this request's turn; returns the instant it was released.
    async fn wait(&self) -> Instant {
        let mut last = self.last.lock().await;
        if let Some(previous) = *last {
            tokio::time::sleep_until(previous + self.interval).await;
        }
        let now = Instant::now();
        *last = Some(now);
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pacer_releases_at_most_the_limit_in_any_window() {
        let pacer = std::sync::Arc::new(Pacer::new(RateLimit::parse("10/1s").unwrap()));
        let t0 = Instant::now();
        // Two lanes asking at once, as the direct path and the outbox sender can.
        let lanes: Vec<_> = (0..2)
            .map(|_| {
                let pacer = pacer.clone();
                tokio::spawn(async move {
                    let mut at = Vec::new();
                    for _ in 0..6 {
                        at.push(pacer.wait().await);
                    }
                    at
                })
            })
            .collect();
        let mut at = Vec::new();
        for lane in lanes {
            at.extend(lane.await.unwrap());
        }
        at.sort();
        assert!(
            at[0] - t0 < Duration::from_millis(500),
            "the first request goes at once"
        );
        for (i, pair) in at.windows(2).enumerate() {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(100),
                "releases {i} and {} only {:?} apart under 10 per second",
                i + 1,
                pair[1] - pair[0]
            );
        }
        // So no window of one second holds more than 10: the 1st and the 11th are ≥ 1 s apart.
        assert!(at[10] - at[0] >= Duration::from_secs(1));
    }
}
