//! Change webhooks against a local receiver that fails on purpose: debounced,
//! signed, retried with backoff, in order, and kept across a restart.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use support::*;
use tokio::sync::Notify;
use yrs::Doc;

const SECRET: &str = "webhook-test-secret";

#[derive(Default)]
struct Receiver {
    /// Answer 503 to this many more requests.
    fail_next: usize,
    attempts: usize,
    received: Vec<Value>,
}

/// The receiver's state, and an event each time a request arrives.
#[derive(Default)]
struct Hook {
    receiver: Mutex<Receiver>,
    arrived: Notify,
}

impl Hook {
    fn lock(&self) -> std::sync::LockResult<std::sync::MutexGuard<'_, Receiver>> {
        self.receiver.lock()
    }
}

type Shared = Arc<Hook>;

async fn hook(State(h): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let status = receive(&mut h.lock().expect("lock"), &headers, &body);
    h.arrived.notify_waiters();
    status
}

fn receive(r: &mut Receiver, headers: &HeaderMap, body: &[u8]) -> StatusCode {
    r.attempts += 1;
    if r.fail_next > 0 {
        r.fail_next -= 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let ts = headers["weft-timestamp"].to_str().expect("ascii");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(
        headers["weft-signature"].to_str().expect("ascii"),
        expected,
        "signature verifies"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    assert!(
        ts.parse::<u64>().expect("number").abs_diff(now) < 60,
        "fresh timestamp"
    );
    r.received.push(serde_json::from_slice(body).expect("json"));
    StatusCode::OK
}

async fn receiver(fail_next: usize) -> (String, Shared) {
    let shared: Shared = Arc::new(Hook {
        receiver: Mutex::new(Receiver {
            fail_next,
            ..Default::default()
        }),
        arrived: Notify::new(),
    });
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, shared)
}

async fn post_change(addr: &str, doc: &str, writer: &Doc, s: &str) {
    let (status, _) = request(
        addr,
        "POST",
        &format!("/docs/{doc}/updates"),
        &[],
        insert(writer, s),
    )
    .await;
    assert_eq!(status, 200);
}

/// Waits, request by request, until what the receiver got is `done`.
async fn wait_for(what: &str, hook: &Hook, mut done: impl FnMut(&Receiver) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let arrived = hook.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        if done(&hook.lock().expect("lock")) {
            return;
        }
        if tokio::time::timeout_at(deadline, arrived).await.is_err() {
            panic!("timed out waiting for {what}");
        }
    }
}

fn args(url: &str) -> Vec<String> {
    [
        "--webhook-url",
        url,
        "--webhook-secret",
        SECRET,
        "--webhook-debounce",
        "200ms",
        "--webhook-max-wait",
        "5s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_changes_is_one_signed_notification_retried_until_received() {
    let (url, r) = receiver(2).await;
    let args = args(&url);
    let weft = Weft::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let writer = Doc::new();
    for i in 0..5 {
        post_change(&weft.addr, "burst", &writer, &i.to_string()).await;
    }
    // Two refusals, retried after 1 s and 2 s, then received.
    wait_for("the notification", &r, |r| !r.received.is_empty()).await;
    let r = r.lock().expect("lock");
    assert_eq!(r.attempts, 3, "two failures, then success");
    assert_eq!(r.received.len(), 1, "five changes, one notification");
    let n = &r.received[0];
    assert_eq!(n["type"], "document.changed");
    assert_eq!(n["doc"], "burst");
    assert_eq!(n["last_seq"], 5);
    assert!(n["event_id"].as_str().is_some_and(|id| id.ends_with("-5")));
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_survive_a_restart_and_arrive_in_order() {
    let (url, r) = receiver(usize::MAX).await; // down until further notice
    let args = args(&url);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut weft = Weft::start(&args);
    let writer = Doc::new();
    post_change(&weft.addr, "kept", &writer, "a").await;
    wait_for("a failed attempt", &r, |r| r.attempts >= 1).await;
    // A second burst, and the server stops before its debounce is over:
    // its notification is queued on the way out.
    post_change(&weft.addr, "kept", &writer, "b").await;
    post_change(&weft.addr, "kept", &writer, "c").await;
    assert!(weft.terminate().success());

    // The receiver recovers; weft comes back and delivers what it queued.
    r.lock().expect("lock").fail_next = 0;
    let weft = weft.restart(&args);
    wait_for("both notifications after the restart", &r, |r| {
        r.received.len() >= 2
    })
    .await;
    let r = r.lock().expect("lock");
    let seqs: Vec<u64> = r
        .received
        .iter()
        .map(|n| n["last_seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, vec![1, 3], "in order, nothing lost, nothing twice");
    drop(weft);
}
