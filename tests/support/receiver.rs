//! A webhook receiver on 127.0.0.1 for the integration tests: a small but real HTTP/1.1 server
//! (keep-alive, Content-Length bodies) that records every request and answers as told: 2xx, a
//! status with an optional `Retry-After`, a redirect, slowly, or not at all (down: the port
//! refuses connections and open connections are cut, as when a service is stopped).
//!
//! It runs on its own runtime thread, so tests that block (waiting for a `cdc` process) never
//! stall it, and its API is synchronous.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// How the receiver answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// 200 with `{"ok":true}`.
    Ok,
    /// This status, with `Retry-After` when given.
    Status(u16, Option<String>),
    /// 200 after this long.
    Slow(Duration),
    /// A POST gets this 3xx status with `Location` (a moved endpoint); any other request gets
    /// 200, as the page a client following the redirect would fetch with a GET.
    Redirect(u16, String),
}

/// One received request.
#[derive(Debug, Clone)]
pub struct Request {
    pub received: Instant,
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// What the receiver answered.
    pub status: u16,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "request body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The envelope's events.
    pub fn events(&self) -> Vec<Value> {
        self.json()["events"].as_array().cloned().unwrap_or_default()
    }

    pub fn delivered(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

struct Shared {
    answer: Mutex<Answer>,
    requests: Mutex<Vec<Request>>,
    /// Requests read but not yet answered, and the most there ever were at once.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    control: tokio::sync::mpsc::UnboundedSender<Control>,
}

enum Control {
    Down(std::sync::mpsc::Sender<()>),
    Up(std::sync::mpsc::Sender<()>),
}

impl Receiver {
    /// Starts listening on a free port, answering 200.
    pub fn start() -> Receiver {
        let shared = Arc::new(Shared {
            answer: Mutex::new(Answer::Ok),
            requests: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let (control, commands) = tokio::sync::mpsc::unbounded_channel();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let server_shared = shared.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("receiver runtime");
            runtime.block_on(run(server_shared, commands, addr_tx));
        });
        let addr = addr_rx.recv().expect("the receiver thread reports its address");
        Receiver { addr, shared, control }
    }

    /// The URL to configure: `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn answer(&self, answer: Answer) {
        *self.shared.answer.lock().unwrap() = answer;
    }

    /// Stops listening and cuts open connections: clients get "connection refused".
    pub fn down(&self) {
        self.tell(Control::Down);
    }

    /// Listens again on the same port.
    pub fn up(&self) {
        self.tell(Control::Up);
    }

    fn tell(&self, command: fn(std::sync::mpsc::Sender<()>) -> Control) {
        let (done, wait) = std::sync::mpsc::channel();
        self.control.send(command(done)).expect("the receiver thread runs");
        wait.recv().expect("the receiver thread answers");
    }

    /// Every request received so far, in arrival order (whatever was answered).
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The most requests that were ever being answered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Forgets the concurrency seen so far (`max_in_flight` starts again from the next request).
    pub fn reset_max_in_flight(&self) {
        self.shared.max_in_flight.store(0, Ordering::SeqCst);
    }

    /// The requests answered with a 2xx.
    pub fn delivered(&self) -> Vec<Request> {
        self.requests().into_iter().filter(Request::delivered).collect()
    }

    /// The events of the delivered requests, in arrival order.
    pub fn delivered_events(&self) -> Vec<Value> {
        self.delivered().iter().flat_map(Request::events).collect()
    }

    /// Waits until at least `n` events were delivered; returns them. Panics after `timeout`.
    pub fn wait_for_events(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.delivered_events();
            if events.len() >= n {
                return events;
            }
            if Instant::now() > deadline {
                panic!(
                    "expected {n} delivered events within {timeout:?}, got {} in {} requests ({} received)",
                    events.len(),
                    self.delivered().len(),
                    self.requests().len()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until at least `n` requests arrived (delivered or not). Panics after `timeout`.
    pub fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            if Instant::now() > deadline {
                panic!("expected {n} requests within {timeout:?}, got {}", requests.len());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The receiver thread: serves until the `Receiver` is dropped, going down and up as told.
async fn run(
    shared: Arc<Shared>,
    mut commands: tokio::sync::mpsc::UnboundedReceiver<Control>,
    addr_tx: std::sync::mpsc::Sender<SocketAddr>,
) {
    let listener = bind("127.0.0.1:0".parse().unwrap()).await;
    let addr = listener.local_addr().unwrap();
    addr_tx.send(addr).unwrap();
    let mut server = Some(tokio::spawn(serve(listener, shared.clone())));
    while let Some(command) = commands.recv().await {
        match command {
            Control::Down(done) => {
                if let Some(s) = server.take() {
                    s.abort();
                    let _ = s.await;
                }
                let _ = done.send(());
            }
            Control::Up(done) => {
                if server.is_none() {
                    server = Some(tokio::spawn(serve(bind(addr).await, shared.clone())));
                }
                let _ = done.send(());
            }
        }
    }
    if let Some(s) = server {
        s.abort();
    }
}

async fn bind(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    // The same port again after `down`, while old connections linger in TIME_WAIT.
    socket.set_reuseaddr(true).unwrap();
    socket
        .bind(addr)
        .unwrap_or_else(|e| panic!("binding the receiver to {addr}: {e}"));
    socket.listen(128).unwrap()
}

/// Accepts connections until aborted; aborting it aborts every connection too.
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(connection(stream, shared.clone()));
                }
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn connection(stream: TcpStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    while let Some((method, path, headers, body)) = read_request(&mut read).await {
        let received = Instant::now();
        let now_in_flight = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now_in_flight, Ordering::SeqCst);
        let answer = shared.answer.lock().unwrap().clone();
        let (status, header) = match answer {
            Answer::Ok => (200, None),
            Answer::Status(status, retry_after) => (status, retry_after.map(|v| ("retry-after", v))),
            Answer::Slow(delay) => {
                tokio::time::sleep(delay).await;
                (200, None)
            }
            Answer::Redirect(status, location) if method != "GET" => (status, Some(("location", location))),
            Answer::Redirect(..) => (200, None),
        };
        shared.requests.lock().unwrap().push(Request {
            received,
            method,
            path,
            headers,
            body,
            status,
        });
        let body = if (200..300).contains(&status) {
            r#"{"ok":true}"#
        } else {
            r#"{"ok":false}"#
        };
        let mut response = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        );
        if let Some((name, value)) = header {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str("\r\n");
        response.push_str(body);
        let written = write.write_all(response.as_bytes()).await;
        shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        if written.is_err() {
            return;
        }
    }
}

/// One request's method, path, headers and Content-Length body; None at the end of the
/// connection.
async fn read_request(
    read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> Option<(String, String, HashMap<String, String>, Vec<u8>)> {
    let mut line = String::new();
    if read.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut request_line = line.split_whitespace();
    let method = request_line.next()?.to_string();
    let path = request_line.next()?.to_string();
    let mut headers = HashMap::new();
    loop {
        line.clear();
        read.read_line(&mut line).await.ok()?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    let length: usize = headers.get("content-length").and_then(|l| l.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    read.read_exact(&mut body).await.ok()?;
    Some((method, path, headers, body))
}

/// Standard Webhooks verification, written from the specification independently of cdc's
/// signing code: some `v1,` signature in the space-separated list must equal
/// base64(HMAC-SHA256(base64-decode(secret without "whsec_"), "id.timestamp.body")).
pub fn verify_signature(secret: &str, request: &Request) -> bool {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    let engine = base64::engine::general_purpose::STANDARD;
    let key = engine
        .decode(secret.trim_start_matches("whsec_"))
        .expect("a base64 secret");
    let (Some(id), Some(timestamp), Some(signatures)) = (
        request.header("webhook-id"),
        request.header("webhook-timestamp"),
        request.header("webhook-signature"),
    ) else {
        return false;
    };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&request.body);
    let expected = format!("v1,{}", engine.encode(mac.finalize().into_bytes()));
    signatures.split(' ').any(|s| s == expected)
}
