//! The fast local receiver of `scripts/bench/webhook.sh`: answers every POST with 200 at once,
//! counts events and measures each event's commit-to-receipt latency (receipt time minus the
//! event's `committed_at`, both from this machine's clock). Once events have arrived and none
//! came for `--idle` seconds it prints one JSON line of figures and exits; when nothing came
//! within `--give-up` seconds it says so and exits 1.
//!
//!   cargo run --release --example webhook_bench_receiver -- --port 9099 --idle 3 --give-up 120

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Default)]
struct Tally {
    requests: u64,
    events: u64,
    first: Option<SystemTime>,
    last: Option<SystemTime>,
    latencies_us: Vec<i64>,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let port = arg("--port", 9099) as u16;
    let idle = Duration::from_secs(arg("--idle", 3));
    let give_up = std::time::Instant::now() + Duration::from_secs(arg("--give-up", 120));
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("binding the receiver");
    let tally = Arc::new(Mutex::new(Tally::default()));
    let counting = tally.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.expect("accept");
            tokio::spawn(connection(stream, counting.clone()));
        }
    });
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let t = tally.lock().unwrap();
        if t.last.is_none() && std::time::Instant::now() > give_up {
            eprintln!("webhook_bench_receiver: no request arrived; giving up");
            std::process::exit(1);
        }
        if t.last.is_some_and(|last| last.elapsed().unwrap_or_default() > idle) {
            report(&t);
            return;
        }
    }
}

fn report(t: &Tally) {
    let mut lat = t.latencies_us.clone();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    let span = t
        .last
        .unwrap()
        .duration_since(t.first.unwrap())
        .unwrap_or_default()
        .as_secs_f64();
    println!(
        "{{\"requests\":{},\"events\":{},\"seconds\":{span:.3},\"events_per_s\":{:.0},\"p50_ms\":{:.1},\"p99_ms\":{:.1},\"max_ms\":{:.1}}}",
        t.requests,
        t.events,
        if span > 0.0 { t.events as f64 / span } else { 0.0 },
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}

async fn connection(stream: tokio::net::TcpStream, tally: Arc<Mutex<Tally>>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0;
        loop {
            line.clear();
            if read.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if read.read_exact(&mut body).await.is_err() {
            return;
        }
        let now = SystemTime::now();
        count(&tally, &body, now);
        if write
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    }
}

fn count(tally: &Mutex<Tally>, body: &[u8], now: SystemTime) {
    let envelope: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let events = envelope["events"].as_array().cloned().unwrap_or_default();
    let now_us = now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_micros() as i64;
    let mut t = tally.lock().unwrap();
    t.requests += 1;
    t.events += events.len() as u64;
    t.first.get_or_insert(now);
    t.last = Some(now);
    for e in &events {
        if let Some(at) = e["committed_at"]
            .as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        {
            t.latencies_us.push(now_us - at.timestamp_micros());
        }
    }
}
