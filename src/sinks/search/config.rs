//! What the user writes under `[sinks.<name>] type = "elasticsearch"`.
//!
//! ```toml
//! [sinks.search]
//! type = "elasticsearch"            # Elasticsearch 8/9 and OpenSearch 2
//! url = "http://127.0.0.1:9200"     # or urls = ["http://a:9200", "http://b:9200"] (round robin)
//! username = "elastic"              # optional, with password = "${ES_PASSWORD}"
//! # api_key = "${ES_API_KEY}"       # or an API key (the base64 "id:key" Elasticsearch prints)
//! # ca_file = "certs/ca.pem"        # a PEM CA to trust for https, relative to the config file
//! batch_max_docs = 1000             # a bulk request holds at most this many documents...
//! batch_max_bytes = 5000000         # ...and about this many bytes...
//! flush_interval = "1s"             # ...and waits at most this long for more
//! concurrency = 2                   # bulk requests in flight at once
//! request_timeout = "30s"           # one bulk request; a timeout is retried
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{deserialize_duration, Problem, SinkSettings};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub urls: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "defaults::batch_max_docs")]
    pub batch_max_docs: usize,
    #[serde(default = "defaults::batch_max_bytes")]
    pub batch_max_bytes: usize,
    #[serde(default = "defaults::flush_interval", deserialize_with = "deserialize_duration")]
    pub flush_interval: Duration,
    #[serde(default = "defaults::concurrency")]
    pub concurrency: usize,
    #[serde(default = "defaults::request_timeout", deserialize_with = "deserialize_duration")]
    pub request_timeout: Duration,
}

mod defaults {
    use std::time::Duration;
    pub fn batch_max_docs() -> usize {
        1000
    }
    pub fn batch_max_bytes() -> usize {
        5_000_000
    }
    pub fn flush_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub fn concurrency() -> usize {
        2
    }
    pub fn request_timeout() -> Duration {
        Duration::from_secs(30)
    }
}

impl SearchConfig {
    /// The node URLs, whichever of `url` / `urls` was written.
    pub fn node_urls(&self) -> Vec<&str> {
        self.url.iter().chain(&self.urls).map(String::as_str).collect()
    }
}

impl SinkSettings for SearchConfig {
    fn validate(&mut self, config_dir: &Path) -> Vec<Problem> {
        let mut problems = Vec::new();
        match (&self.url, self.urls.is_empty()) {
            (None, true) => problems.push(Problem::new(
                "url",
                "required: the node's URL, like \"http://127.0.0.1:9200\" (or urls = [...])",
            )),
            (Some(_), false) => problems.push(Problem::new("urls", "write either url or urls, not both")),
            _ => {}
        }
        for (i, url) in self.node_urls().iter().enumerate() {
            let key = if self.url.is_some() {
                "url".to_string()
            } else {
                format!("urls[{i}]")
            };
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                problems.push(Problem::new(
                    key,
                    format!("expected an http:// or https:// URL, got {:?}", crate::redact::url(url)),
                ));
            }
        }
        if self.password.is_some() && self.username.is_none() {
            problems.push(Problem::new("password", "a password needs a username"));
        }
        if self.api_key.is_some() && self.username.is_some() {
            problems.push(Problem::new(
                "api_key",
                "write either api_key or username/password, not both",
            ));
        }
        for (key, value) in [
            ("batch_max_docs", self.batch_max_docs),
            ("batch_max_bytes", self.batch_max_bytes),
            ("concurrency", self.concurrency),
        ] {
            if value == 0 {
                problems.push(Problem::new(key, "expected a positive integer, got 0"));
            }
        }
        if self.request_timeout.is_zero() {
            problems.push(Problem::new("request_timeout", "expected a positive duration"));
        }
        if let Some(ca) = &mut self.ca_file {
            *ca = config_dir.join(&*ca);
            if !ca.is_file() {
                problems.push(Problem::new(
                    "ca_file",
                    format!("{} is not a readable file", ca.display()),
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> Result<SearchConfig, Vec<Problem>> {
        let mut config: SearchConfig = toml::from_str(toml_text).map_err(|e| vec![Problem::new("", e.to_string())])?;
        let problems = config.validate(Path::new("/etc/cdc"));
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }

    #[test]
    fn a_url_alone_takes_every_default() {
        let config = parse(r#"url = "http://127.0.0.1:9200""#).unwrap();
        assert_eq!(config.node_urls(), vec!["http://127.0.0.1:9200"]);
        assert_eq!(
            (config.batch_max_docs, config.batch_max_bytes, config.concurrency),
            (1000, 5_000_000, 2)
        );
        assert_eq!(
            (config.flush_interval, config.request_timeout),
            (Duration::from_secs(1), Duration::from_secs(30))
        );
        assert_eq!(
            (&config.username, &config.api_key, &config.ca_file),
            (&None, &None, &None)
        );
    }

    #[test]
    fn durations_and_limits_are_read() {
        let config =
            parse("urls = [\"http://a:9200\", \"https://b:9200\"]\nflush_interval = \"250ms\"\nbatch_max_docs = 10")
                .unwrap();
        assert_eq!(config.node_urls(), vec!["http://a:9200", "https://b:9200"]);
        assert_eq!(config.flush_interval, Duration::from_millis(250));
        assert_eq!(config.batch_max_docs, 10);
    }

    #[test]
    fn a_missing_url_and_mixed_credentials_are_problems() {
        let problems = parse(
            r#"api_key = "k"
username = "u""#,
        )
        .unwrap_err();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["url", "api_key"]);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(parse("url = \"http://a:9200\"\nbatch_size = 3").is_err());
    }
}
