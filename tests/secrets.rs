//! Secrets never leave cdc: with a password in the Postgres URL, a search node's password, a
//! webhook signing secret, an Authorization header and a stream token configured, credentials in the sinks' own
//! `url`s (user and password, a token in a webhook's query string), and every server failing so
//! that errors are logged (unreachable, or a real receiver answering 410 Gone, whose disabled
//! state names the URL), no output (debug logs, `/ready`, `/metrics`, `/events` refusals, `cdc status`, `cdc check`,
//! `cdc webhook test`, `cdc dead-letters list`) contains any of them.

mod support;

use std::time::{Duration, Instant};

use support::{stderr_of, stdout_of};

const PG_PASSWORD: &str = "PgPass-Zx81q";
const ES_PASSWORD: &str = "EsPass-Qw77z";
/// base64 of "secret-webhook-Key99".
const WEBHOOK_KEY: &str = "c2VjcmV0LXdlYmhvb2stS2V5OTk=";
const HEADER_TOKEN: &str = "HdrTok-Pp55";
/// In the search sink's url: `http://user:PASSWORD@host`.
const ES_URL_PASSWORD: &str = "EsUrlPass-Kk31";
/// In the webhook sinks' urls: a password and a query-string token.
const HOOK_URL_PASSWORD: &str = "HookUrlPass-Mm42";
const HOOK_QUERY_TOKEN: &str = "HookQueryTok-Nn53";
const STREAM_TOKEN: &str = "StrTok-Kk31";
const SECRETS: [&str; 8] = [
    PG_PASSWORD,
    ES_PASSWORD,
    WEBHOOK_KEY,
    HEADER_TOKEN,
    ES_URL_PASSWORD,
    HOOK_URL_PASSWORD,
    HOOK_QUERY_TOKEN,
    STREAM_TOKEN,
];

fn both(out: &std::process::Output) -> String {
    format!("{}{}", stdout_of(out), stderr_of(out))
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} contains the secret {secret}:\n{text}");
    }
}

/// `gone`: the address of a receiver answering 410 Gone.
fn config(url: &str, slot: &str, search: u16, hook: u16, gone: &str, admin: u16) -> String {
    let with_credentials =
        |address: &str| format!("http://hookuser:{HOOK_URL_PASSWORD}@{address}/hook?token={HOOK_QUERY_TOKEN}&v=1");
    format!(
        "[source]\nurl = \"{url}\"\nslot = \"{slot}\"\npublication = \"{slot}\"\n\n\
         [sinks.search]\ntype = \"elasticsearch\"\nurl = \"http://urluser:{ES_URL_PASSWORD}@127.0.0.1:{search}\"\n\
         flush_interval = \"100ms\"\n\n\
         [sinks.search2]\ntype = \"elasticsearch\"\nurl = \"http://127.0.0.1:{search}\"\nusername = \"elastic\"\npassword = \"{ES_PASSWORD}\"\nflush_interval = \"100ms\"\n\n\
         [sinks.hook]\ntype = \"webhook\"\nurl = \"{hook}\"\nsecret = \"whsec_{WEBHOOK_KEY}\"\n\
         headers = {{ Authorization = \"Bearer {HEADER_TOKEN}\" }}\nbatch_max_wait = \"0\"\n\n\
         [sinks.gone]\ntype = \"webhook\"\nurl = \"{gone}\"\nbatch_max_wait = \"0\"\n\n\
         [sinks.feed]\ntype = \"stream\"\ntoken = \"{STREAM_TOKEN}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
         [[tables]]\ntable = \"items\"\nsinks = [\"search\", \"search2\", \"hook\", \"gone\", \"feed\"]\n",
        hook = with_credentials(&format!("127.0.0.1:{hook}")),
        gone = with_credentials(gone),
    )
}

#[tokio::test]
async fn no_output_of_a_failing_run_contains_a_configured_secret() {
    let db = support::new_database("secrets").await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY, title text)").await;
    let pg = support::pg();
    // The shared cluster trusts the superuser over TCP: the password is configured, not needed.
    let url = format!("postgres://postgres:{PG_PASSWORD}@{}:{}/{}", pg.host, pg.port, db.name);
    let (search, hook, admin) = (support::free_port(), support::free_port(), support::free_port());
    let gone = support::receiver::Receiver::start();
    gone.answer(support::receiver::Answer::Status(410, None));
    let gone_address = gone
        .url()
        .trim_start_matches("http://")
        .trim_end_matches("/hook")
        .to_string();
    let dir = support::temp_dir();
    let path = support::write_config(dir.path(), &config(&url, &db.name, search, hook, &gone_address, admin));
    let path = path.to_str().unwrap();

    let mut outputs: Vec<(String, String)> = Vec::new();
    let setup = support::cdc(&["--config", path, "setup"]);
    assert!(setup.status.success(), "{}", stderr_of(&setup));
    outputs.push(("cdc setup".into(), both(&setup)));
    let check = support::cdc(&["--config", path, "check", "--send-test"]);
    assert!(!check.status.success(), "the sinks are down: {}", stdout_of(&check));
    outputs.push(("cdc check --send-test".into(), both(&check)));
    outputs.push((
        "cdc webhook test".into(),
        both(&support::cdc(&["--config", path, "webhook", "test", "hook"])),
    ));

    let mut cdc = support::CdcProcess::start(&["--config", path, "run"], &[]);
    db.exec("INSERT INTO items VALUES (1, 'a'), (2, 'b')").await;
    // Every sink fails and says so in /ready (the 410 one as disabled, naming its URL).
    let base = format!("http://127.0.0.1:{admin}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let ready = loop {
        let body = match reqwest::get(format!("{base}/ready")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let both: bool = serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|b| {
            b["sinks"].as_array().is_some_and(|s| {
                s.len() == 5 && s.iter().filter(|s| s["name"] != "feed").all(|s| s["error"].is_string())
            })
        });
        if both {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the sinks never reported errors: {body}\n{}",
            cdc.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    outputs.push(("/ready".into(), ready));
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    outputs.push(("/metrics".into(), metrics));
    for token in [None, Some("wrong"), Some(STREAM_TOKEN)] {
        let mut request = reqwest::Client::new().get(format!("{base}/events?sink=feed&op=nope"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        outputs.push((
            format!("/events ({})", response.status()),
            response.text().await.unwrap(),
        ));
    }
    outputs.push(("cdc status".into(), both(&support::cdc(&["--config", path, "status"]))));
    outputs.push((
        "cdc status --json".into(),
        both(&support::cdc(&["--config", path, "status", "--json"])),
    ));
    outputs.push((
        "cdc dead-letters list".into(),
        both(&support::cdc(&["--config", path, "dead-letters", "list"])),
    ));
    cdc.kill9();
    let log = cdc.stderr_text();
    assert!(
        log.contains("endpoint DISABLED") && log.contains("@127.0.0.1"),
        "the 410 is in the log, naming the redacted URL: {log}"
    );
    // The receiver got the URL's credentials as Basic authentication and the token in the query:
    // redacting the messages did not change what is sent.
    let request = &gone.requests()[0];
    assert!(request.header("authorization").is_some_and(|a| a.starts_with("Basic ")));
    for port in [search, hook] {
        assert!(
            log.contains(&format!("127.0.0.1:{port}")),
            "the failures are in the log: {log}"
        );
    }
    outputs.push(("cdc run's debug log".into(), log));

    // Postgres unreachable: the errors name the server, never the password.
    let dead = format!(
        "postgres://postgres:{PG_PASSWORD}@127.0.0.1:{}/{}",
        support::free_port(),
        db.name
    );
    let path = support::write_config(dir.path(), &config(&dead, &db.name, search, hook, &gone_address, admin));
    let path = path.to_str().unwrap();
    outputs.push((
        "cdc status (Postgres down)".into(),
        both(&support::cdc(&["--config", path, "status"])),
    ));
    outputs.push((
        "cdc check (Postgres down)".into(),
        both(&support::cdc(&["--config", path, "check"])),
    ));

    for (what, text) in &outputs {
        assert_no_secret(what, text);
    }
    let down = &outputs.last().unwrap().1;
    assert!(down.contains("127.0.0.1"), "the failure names the server: {down}");
}
