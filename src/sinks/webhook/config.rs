//! What the user writes under `[sinks.NAME]` with `type = "webhook"`.
//!
//! Defaults come from our users: 25 events or 30 s per request, 3 s timeout, a ten-step retry
//! schedule reaching 24 h, then a dead letter. Every value is checked while deserializing, so
//! the loader reports a bad one with its file and line.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::config::{parse_duration, Problem, SinkSettings};
use crate::event::Op;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where batches are POSTed (http or https).
    #[serde(deserialize_with = "url")]
    pub url: String,
    /// Standard Webhooks secrets (`whsec_` + base64). Several during a rotation: every request
    /// then carries one signature per secret. None: requests are not signed.
    #[serde(default, deserialize_with = "secrets")]
    pub secret: Vec<String>,
    /// Extra request headers, e.g. `Authorization = "Bearer ..."`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The ops this endpoint receives; the tables come from the `[[tables]]` mappings.
    #[serde(default = "all_ops", deserialize_with = "ops")]
    pub events: Vec<Op>,
    #[serde(default)]
    pub payload: Payload,
    #[serde(default = "default_batch_max_events")]
    pub batch_max_events: NonZeroUsize,
    /// How long the first event of a batch may wait for others. 0: send what is at hand at once.
    #[serde(default = "default_batch_max_wait", deserialize_with = "duration")]
    pub batch_max_wait: Duration,
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    #[serde(default, deserialize_with = "rate_limit")]
    pub rate_limit: Option<RateLimit>,
    /// Changes to one row within this window become one event.
    #[serde(default, deserialize_with = "optional_duration")]
    pub coalesce: Option<Duration>,
    /// Delays between attempts of an undelivered batch, jittered. Its length is the number of retries.
    #[serde(default = "default_retry", deserialize_with = "durations")]
    pub retry: Vec<Duration>,
    #[serde(default)]
    pub on_exhausted: OnExhausted,
    /// Requests in flight at once; rows are spread over the lanes by key so each row stays in order.
    #[serde(default = "one_lane")]
    pub lanes: NonZeroUsize,
}

impl SinkSettings for WebhookConfig {
    fn validate(&mut self, _config_dir: &std::path::Path) -> Vec<Problem> {
        let mut problems = Vec::new();
        for (name, value) in &self.headers {
            if reqwest::header::HeaderName::try_from(name.as_str()).is_err() {
                problems.push(Problem::new(format!("headers.{name}"), "not a valid HTTP header name"));
            } else if reqwest::header::HeaderValue::try_from(value.as_str()).is_err() {
                problems.push(Problem::new(
                    format!("headers.{name}"),
                    "not a valid HTTP header value (control characters?)",
                ));
            }
        }
        problems
    }
}

/// What an update carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    /// Whole rows, with the old row when Postgres sent it.
    #[default]
    Full,
    /// Updates carry only the changed columns and the key. When Postgres did not send the old
    /// row (the table lacks REPLICA IDENTITY FULL) the changed columns are unknown and the update
    /// carries the whole new row; `cdc setup --replica-identity-full TABLE` makes them exact.
    Changed,
}

/// What happens to a batch after the last retry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExhausted {
    /// It becomes a dead letter (`cdc dead-letters`) and later batches go on.
    #[default]
    DeadLetter,
    /// It is retried forever at the last step of the schedule and holds the slot: strict order.
    Block,
}

/// At most `requests` requests per `per`, e.g. `"1/2s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
}

impl RateLimit {
    /// The spacing between two requests.
    pub fn interval(&self) -> Duration {
        self.per / self.requests
    }

    pub fn parse(s: &str) -> Result<RateLimit, String> {
        let bad = || format!("rate_limit {s:?} is not REQUESTS/DURATION, e.g. \"1/2s\" or \"10/1s\"");
        let (n, per) = s.split_once('/').ok_or_else(bad)?;
        let requests: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = parse_duration(per.trim()).map_err(|_| bad())?;
        if requests == 0 || per.is_zero() {
            return Err(bad());
        }
        Ok(RateLimit { requests, per })
    }
}

fn default_batch_max_events() -> NonZeroUsize {
    NonZeroUsize::new(25).unwrap()
}

fn default_batch_max_wait() -> Duration {
    Duration::from_secs(30)
}

fn default_timeout() -> Duration {
    Duration::from_secs(3)
}

fn one_lane() -> NonZeroUsize {
    NonZeroUsize::MIN
}

fn all_ops() -> Vec<Op> {
    Op::ALL.to_vec()
}

/// 5s, 30s, 2m, 10m, 30m, 1h, 3h, 6h, 12h, 24h: about 47 hours in all.
pub fn default_retry() -> Vec<Duration> {
    [5, 30, 120, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600]
        .into_iter()
        .map(Duration::from_secs)
        .collect()
}

fn url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let url = String::deserialize(d)?;
    match reqwest::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(url),
        _ => Err(serde::de::Error::custom(format!(
            "url {:?} is not an http:// or https:// URL",
            crate::redact::url(&url)
        ))),
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    list.iter()
        .map(|s| parse_duration(s).map_err(serde::de::Error::custom))
        .collect()
}

fn rate_limit<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RateLimit>, D::Error> {
    RateLimit::parse(&String::deserialize(d)?)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn ops<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Op>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    names
        .iter()
        .map(|n| {
            Op::parse(n).ok_or_else(|| {
                serde::de::Error::custom(format!("events: {n:?} is not one of create, update, delete, truncate"))
            })
        })
        .collect()
}

/// One secret or a list; each must decode, so a typo fails at start-up, not at the receiver.
fn secrets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let list = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    for secret in &list {
        super::signing::decode_secret(secret).map_err(serde::de::Error::custom)?;
    }
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<WebhookConfig, toml::de::Error> {
        toml::from_str(toml)
    }

    #[test]
    fn defaults_are_our_users_numbers() {
        let c = parse(r#"url = "http://127.0.0.1:9/hook""#).unwrap();
        assert_eq!(c.batch_max_events.get(), 25);
        assert_eq!(c.batch_max_wait, Duration::from_secs(30));
        assert_eq!(c.timeout, Duration::from_secs(3));
        assert_eq!(c.retry.len(), 10);
        assert_eq!(c.retry[9], Duration::from_secs(86_400));
        assert_eq!(c.on_exhausted, OnExhausted::DeadLetter);
        assert_eq!(c.lanes.get(), 1);
        assert_eq!(c.events, Op::ALL.to_vec());
        assert_eq!(c.payload, Payload::Full);
        assert!(c.secret.is_empty() && c.rate_limit.is_none() && c.coalesce.is_none());
    }

    #[test]
    fn the_issue_example_parses() {
        let c = parse(
            r#"
            url = "https://example.org/hooks/opinions"
            secret = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_c2Vjb25k"]
            headers = { Authorization = "Bearer t" }
            events = ["create", "update"]
            payload = "changed"
            batch_max_wait = "0"
            rate_limit = "1/2s"
            coalesce = "10s"
            retry = ["5s", "500ms"]
            on_exhausted = "block"
            lanes = 4
            "#,
        )
        .unwrap();
        assert_eq!(c.secret.len(), 2);
        assert_eq!(c.events, vec![Op::Create, Op::Update]);
        assert_eq!(c.payload, Payload::Changed);
        assert_eq!(c.batch_max_wait, Duration::ZERO);
        assert_eq!(c.rate_limit.unwrap().interval(), Duration::from_secs(2));
        assert_eq!(c.coalesce, Some(Duration::from_secs(10)));
        assert_eq!(c.retry, vec![Duration::from_secs(5), Duration::from_millis(500)]);
        assert_eq!(c.on_exhausted, OnExhausted::Block);
        assert_eq!(c.lanes.get(), 4);
    }

    #[test]
    fn mistakes_are_refused_with_what_was_expected() {
        let err = |toml: &str| parse(toml).unwrap_err().to_string();
        assert!(err(r#"url = "ftp://x""#).contains("http"));
        assert!(err("url = \"http://x\"\nsecret = \"whsec_!!\"").contains("secret"));
        assert!(err("url = \"http://x\"\nevents = [\"insert\"]").contains("create, update"));
        assert!(err("url = \"http://x\"\nrate_limit = \"2 per s\"").contains("REQUESTS/DURATION"));
        assert!(err("url = \"http://x\"\nlanes = 0").contains("nonzero"));
        assert!(err("url = \"http://x\"\ntimeout = \"3 seconds\"").contains("duration"));
        assert!(err("url = \"http://x\"\nbatch_size = 3").contains("unknown field"));
    }
}
