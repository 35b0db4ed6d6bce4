//! `/ready` of `cdc run`'s admin server in tests: one answer, or polling until it shows a state.

use std::time::{Duration, Instant};

use serde_json::Value;

/// GET `url`: (status, body). A refused connection is status 0 (the server is not up yet).
pub async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

/// `{base}/ready` (`base`: the admin server, e.g. `http://127.0.0.1:PORT`): (status, JSON body,
/// Null when there is none).
pub async fn ready(base: &str) -> (u16, Value) {
    let (status, body) = get(&format!("{base}/ready")).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Polls `/ready` until `pred` holds on (status, body); panics with the last answer after `timeout`.
pub async fn wait_ready(base: &str, timeout: Duration, what: &str, pred: impl Fn(u16, &Value) -> bool) -> (u16, Value) {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = ready(base).await;
        if pred(status, &body) {
            return (status, body);
        }
        assert!(
            Instant::now() < deadline,
            "/ready never showed {what} within {timeout:?}; last: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
