//! What `cdc check` asks a webhook endpoint: does anything answer at its URL (an unsigned
//! `OPTIONS` request that carries no event), or, with `--send-test`, does it take a signed test
//! event with a 2xx (the same request as `cdc webhook test`).

use super::config::WebhookConfig;
use super::service::Service;
use super::test_event;
use crate::sinks::Finding;

/// Checks the endpoint of sink `name`.
pub async fn check(name: &str, config: &WebhookConfig, send_test: bool) -> Finding {
    if send_test {
        return match test_event::send(name, config).await {
            Err(e) => Finding::Problem(format!("sink {name}: {e:#}")),
            Ok((_, response)) => match (response.status, response.error) {
                (Some(status), None) => Finding::Ok(format!(
                    "sink {name}: {} took a signed test event (HTTP {status})",
                    crate::redact::url(&config.url)
                )),
                (_, error) => Finding::Problem(format!(
                    "sink {name}: {} did not take the test event: {}; `cdc webhook test {name}` shows the response",
                    crate::redact::url(&config.url),
                    error.unwrap_or_default()
                )),
            },
        };
    }
    let service = match Service::new(config) {
        Ok(s) => s,
        Err(e) => return Finding::Problem(format!("sink {name}: {e:#}")),
    };
    match service.probe().await {
        Ok(status) => Finding::Ok(format!(
            "sink {name}: {} answers (HTTP {status} to OPTIONS; `cdc check --send-test` sends a signed test event)",
            crate::redact::url(&config.url)
        )),
        // It answered, with a redirect: the message says what to configure.
        Err(e) if e.starts_with("HTTP ") => Finding::Problem(format!(
            "sink {name}: {} answered OPTIONS with {e}",
            crate::redact::url(&config.url)
        )),
        Err(e) => Finding::Problem(format!(
            "sink {name}: cannot reach {}: {e} — is the receiver running, and is url right?",
            crate::redact::url(&config.url)
        )),
    }
}
