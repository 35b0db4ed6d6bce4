//! The clients of `scripts/bench/stream.sh`: `--clients` connections to a stream sink's
//! `/events`, each reading until it has `--events` events, then one JSON line of figures.
//!
//! Events are counted by newlines (each event message is exactly four: `id:`, `event:`,
//! `data:` and the blank line; the JSON itself holds none), so counting costs the client far
//! less than the server's work and the figure is the server's. Each client's rate is measured
//! from its first byte to its last event; the aggregate from the first connect to the last
//! client done.
//!
//!   cargo run --release --example stream_bench_client -- --url 'http://127.0.0.1:9187/events?sink=feed&from=oldest' \
//!       --token T --clients 50 --events 200000

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| panic!("{name} is required"))
    };
    let url = arg("--url");
    let token = arg("--token");
    let clients: usize = arg("--clients").parse().expect("--clients N");
    let events: u64 = arg("--events").parse().expect("--events N");

    let http = reqwest::Client::new();
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let request = http.get(&url).bearer_auth(&token);
            tokio::spawn(async move {
                let mut response = request.send().await.expect("connecting");
                assert_eq!(response.status(), 200, "{:?}", response.text().await);
                let mut newlines = 0u64;
                let mut first = None;
                while newlines < events * 4 {
                    let chunk = tokio::time::timeout(Duration::from_secs(60), response.chunk())
                        .await
                        .expect("no data for 60 s")
                        .expect("reading")
                        .expect("the stream ended early");
                    first.get_or_insert_with(Instant::now);
                    newlines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
                }
                first.expect("data came").elapsed()
            })
        })
        .collect();
    let mut per_client = Vec::new();
    for task in tasks {
        per_client.push(events as f64 / task.await.expect("client").as_secs_f64());
    }
    let wall = started.elapsed().as_secs_f64();
    per_client.sort_by(f64::total_cmp);
    println!(
        "{{\"clients\":{clients},\"events\":{events},\"wall_s\":{wall:.3},\"aggregate_events_per_s\":{:.0},\"per_client_min\":{:.0},\"per_client_median\":{:.0},\"per_client_max\":{:.0}}}",
        (events * clients as u64) as f64 / wall,
        per_client[0],
        per_client[per_client.len() / 2],
        per_client[per_client.len() - 1],
    );
}
