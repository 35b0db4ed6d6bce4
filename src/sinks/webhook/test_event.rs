//! `cdc webhook test NAME`: one signed request carrying one event with `op: "test"`, in the same
//! envelope and with the same headers as real batches, so a subscriber can check its endpoint
//! (reachability, signature verification, parsing) before real data flows.

use bytes::Bytes;

use super::config::WebhookConfig;
use super::encoder;
use super::service::{Response, Service};
use crate::event::format_timestamp_us;

/// The test request's batch id and body.
pub fn request(sink: &str, now_us: i64) -> (String, Bytes) {
    let event_id = format!("test:{now_us}");
    let id = encoder::batch_id(sink, &event_id, &event_id, 1);
    let now = format_timestamp_us(now_us);
    let event = serde_json::json!({
        "id": event_id, "op": "test", "schema": null, "table": null, "key": null, "old": null, "new": null,
        "changed": null, "lsn": null, "commit_lsn": null, "xid": null, "committed_at": now,
    });
    let event = Bytes::from(serde_json::to_vec(&event).expect("a JSON value always serializes"));
    let body = encoder::body("cdc.batch", &id, sink, &now, &[event]);
    (id, body)
}

/// Sends the test event; returns its batch id and what came back.
pub async fn send(sink: &str, config: &WebhookConfig) -> anyhow::Result<(String, Response)> {
    let service = Service::new(config)?;
    let (id, body) = request(sink, chrono::Utc::now().timestamp_micros());
    let response = service.post(&id, body).await;
    Ok((id, response))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_request_is_a_batch_of_one_test_event() {
        let (id, body) = request("hook", 1_700_000_000_000_000);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["id"], id.as_str());
        assert_eq!(v["sink"], "hook");
        assert_eq!(v["events"].as_array().unwrap().len(), 1);
        assert_eq!(v["events"][0]["op"], "test");
        assert_eq!(v["events"][0]["committed_at"], "2023-11-14T22:13:20.000000Z");
    }
}
