//! `/metrics` of `cdc run`'s admin server in tests: one scrape parsed as Prometheus text, and
//! the value of a sample picked by name and labels.

pub use prometheus_parse::Sample;

/// The samples of a Prometheus text exposition; panics with the text when it is not one.
pub fn parse(text: &str) -> Vec<Sample> {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not Prometheus text ({e}):\n{text}"))
        .samples
}

/// The samples of one scrape of `{base}/metrics` (`base`: the admin server, e.g.
/// `http://127.0.0.1:PORT`); panics unless it answers 200 with Prometheus text.
pub async fn scrape(base: &str) -> Vec<Sample> {
    let url = format!("{base}/metrics");
    let response = reqwest::get(&url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(status, 200, "GET {url} answered {status}: {text}");
    parse(&text)
}

/// The value of the first sample `name` whose labels include all of `labels` (it may have
/// more); `None` when there is none, or when it is a histogram or summary (whose parts, such
/// as `NAME_count` and `NAME_sum`, are samples of their own).
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .and_then(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}
