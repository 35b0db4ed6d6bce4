//! A small HTTP/1.1 proxy in front of a real search node, for tests that need the network to
//! misbehave in a controlled way:
//! - [`Proxy::hold_containing`]: requests whose body contains a marker are held (not forwarded)
//!   until [`Proxy::release`]; then they are forwarded as they are, however late;
//! - [`Proxy::limit_body`]: requests with a body above a byte size are answered 413, as a node
//!   answers a body over its `http.max_content_length`, without reaching the node;
//! - [`Proxy::down`]: the node is gone, as when it is stopped: every connection is closed
//!   without an answer until [`Proxy::up`];
//! - every forwarded `_bulk` body is recorded (its first 64 kB) in arrival order.
//!
//! It runs on a runtime thread of its own, so a test blocked on a `cdc` command or a node
//! restart does not stall it. Forwarding errors (the node is down) are answered 502.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

#[derive(Default)]
struct State {
    hold_marker: Option<String>,
    /// Requests held so far (released or not).
    held: usize,
    limit: Option<usize>,
    /// Requests answered 413.
    too_large: usize,
    bulk_bodies: Vec<String>,
    down: bool,
}

#[derive(Clone)]
pub struct Proxy {
    pub url: String,
    state: Arc<Mutex<State>>,
    release: Arc<tokio::sync::watch::Sender<bool>>,
}

const RECORDED_BYTES: usize = 64 * 1024;

impl Proxy {
    /// Starts a proxy forwarding to `node` (`http://host:port`).
    pub fn start(node: &str) -> Proxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let proxy = Proxy {
            url: format!("http://{}", listener.local_addr().unwrap()),
            state: Arc::default(),
            release: Arc::new(tokio::sync::watch::channel(false).0),
        };
        let (node, serving) = (node.trim_end_matches('/').to_string(), proxy.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(serving.serve(listener, node));
        });
        proxy
    }

    /// Holds every request whose body contains `marker` from now on, until [`Proxy::release`].
    pub fn hold_containing(&self, marker: &str) {
        self.release.send_replace(false);
        self.state.lock().unwrap().hold_marker = Some(marker.to_string());
    }

    /// Forwards the held requests and stops holding.
    pub fn release(&self) {
        self.state.lock().unwrap().hold_marker = None;
        self.release.send_replace(true);
    }

    /// From now on, closes every connection (new or open) without answering.
    pub fn down(&self) {
        self.state.lock().unwrap().down = true;
    }

    /// Forwards again.
    pub fn up(&self) {
        self.state.lock().unwrap().down = false;
    }

    fn is_down(&self) -> bool {
        self.state.lock().unwrap().down
    }

    /// Answers 413 to every request whose body is over `bytes`.
    pub fn limit_body(&self, bytes: usize) {
        self.state.lock().unwrap().limit = Some(bytes);
    }

    /// How many requests were answered 413.
    pub fn too_large(&self) -> usize {
        self.state.lock().unwrap().too_large
    }

    /// The `_bulk` bodies forwarded so far (each cut at 64 kB), oldest first.
    pub fn bulk_bodies(&self) -> Vec<String> {
        self.state.lock().unwrap().bulk_bodies.clone()
    }

    /// Waits until `n` requests have been held; panics after `timeout`.
    pub async fn wait_held(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let held = self.state.lock().unwrap().held;
            if held >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy held {held} requests within {timeout:?}, expected {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether a forwarded `_bulk` body satisfying `pred` shows up within `within`.
    pub async fn bulk_forwarded(&self, pred: impl Fn(&str) -> bool, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.bulk_bodies().iter().any(|b| pred(b)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn serve(self, listener: std::net::TcpListener, node: String) {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let client = reqwest::Client::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            if self.is_down() {
                drop(stream);
                continue;
            }
            let (proxy, client, node) = (self.clone(), client.clone(), node.clone());
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut read = BufReader::new(read);
                while let Some((method, path, content_type, body)) = read_request(&mut read).await {
                    if proxy.is_down() {
                        return;
                    }
                    let (status, answer) = proxy.answer(&client, &node, method, &path, content_type, body).await;
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        answer.len()
                    );
                    if write.write_all(head.as_bytes()).await.is_err() || write.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    async fn answer(
        &self,
        client: &reqwest::Client,
        node: &str,
        method: String,
        path: &str,
        content_type: Option<String>,
        body: Vec<u8>,
    ) -> (u16, Vec<u8>) {
        let hold = {
            let mut state = self.state.lock().unwrap();
            if state.limit.is_some_and(|limit| body.len() > limit) {
                state.too_large += 1;
                return (413, Vec::new());
            }
            let hold = state
                .hold_marker
                .as_ref()
                .is_some_and(|m| String::from_utf8_lossy(&body).contains(m.as_str()));
            state.held += usize::from(hold);
            hold
        };
        if hold {
            let mut released = self.release.subscribe();
            let _ = released.wait_for(|r| *r).await;
        }
        if path.split('?').next().is_some_and(|p| p.ends_with("_bulk")) {
            let recorded = String::from_utf8_lossy(&body[..body.len().min(RECORDED_BYTES)]).into_owned();
            self.state.lock().unwrap().bulk_bodies.push(recorded);
        }
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = client.request(method, format!("{node}{path}")).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.bytes().await.map(|b| b.to_vec()).unwrap_or_default())
            }
            Err(e) => (502, format!("{{\"error\":\"proxy: {e}\"}}").into_bytes()),
        }
    }
}

/// One request: method, path, content type, body (by content-length). None at EOF.
async fn read_request<R: tokio::io::AsyncRead + Unpin>(
    read: &mut BufReader<R>,
) -> Option<(String, String, Option<String>, Vec<u8>)> {
    let mut head = Vec::new();
    let mut line = String::new();
    while read.read_line(&mut line).await.unwrap_or(0) > 2 {
        head.push(std::mem::take(&mut line));
    }
    let request_line = head.first()?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let header = |name: &str| {
        head.iter().find_map(|h| {
            h.split_once(':')
                .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        })
    };
    let mut body = vec![0; header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0)];
    read.read_exact(&mut body).await.ok()?;
    Some((method, path, header("content-type"), body))
}
