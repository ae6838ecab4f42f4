//! The elector against an API server that answers Lease reads slowly (a loaded test bed): it
//! must keep the lead while a read lands within its confirmation window, and step down when
//! none does. A fake Lease API (axum, plain HTTP) delays every GET of the Lease.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header::CONTENT_TYPE},
    routing::get,
};
use serde_json::{Value, json};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use super::{LeaderElector, LeaseTiming};

const PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases";

/// A status and a JSON body.
type Reply = (
    StatusCode,
    [(axum::http::HeaderName, &'static str); 1],
    String,
);

fn reply(status: StatusCode, body: &Value) -> Reply {
    (
        status,
        [(CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

#[derive(Clone)]
struct Fake {
    lease: Arc<Mutex<Option<Value>>>,
    read_delay: Duration,
}

fn not_found() -> Reply {
    reply(
        StatusCode::NOT_FOUND,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

/// The Lease as it was when the request arrived, answered `read_delay` later.
async fn read(State(f): State<Fake>) -> Reply {
    let now = f.lease.lock().unwrap().clone();
    sleep(f.read_delay).await;
    match now {
        Some(l) => reply(StatusCode::OK, &l),
        None => not_found(),
    }
}

/// Apply and strategic merge patches alike: `spec` fields merged, `null` removes one.
async fn write(State(f): State<Fake>, body: String) -> Reply {
    let body: Value = serde_json::from_str(&body).unwrap_or_default();
    let mut guard = f.lease.lock().unwrap();
    let lease = guard.get_or_insert_with(|| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "slow", "namespace": "default"}, "spec": {}})
    });
    if let Some(patch) = body.get("spec").and_then(Value::as_object) {
        for (k, v) in patch {
            if v.is_null() {
                lease["spec"].as_object_mut().unwrap().remove(k);
            } else {
                lease["spec"][k] = v.clone();
            }
        }
    }
    let version = lease["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    lease["metadata"]["resourceVersion"] = json!((version + 1).to_string());
    reply(StatusCode::OK, lease)
}

/// Serves the fake API; returns a client of it.
async fn serve(read_delay: Duration) -> kube::Client {
    let fake = Fake {
        lease: Arc::new(Mutex::new(None)),
        read_delay,
    };
    // List/watch (the fast handover) is refused: election works without it.
    let app = Router::new()
        .route(&format!("{PATH}/slow"), get(read).patch(write).put(write))
        .route(PATH, get(|| async { StatusCode::FORBIDDEN }).post(write))
        .with_state(fake);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

/// Leads from the first confirmation; returns (led at all, steps down after it led).
async fn lead_for(read_delay: Duration, watch: Duration) -> (bool, u32) {
    let client = serve(read_delay).await;
    let elector = LeaderElector::new(
        client,
        "default",
        "slow",
        "pod-a",
        LeaseTiming::new(4, 2).unwrap(),
    );
    let mut leading = elector.subscribe();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(elector.run(shutdown.clone()));
    let led = tokio::time::timeout(Duration::from_secs(10), leading.wait_for(|l| *l))
        .await
        .is_ok_and(|r| r.is_ok());
    let mut steps_down = 0;
    let until = Instant::now() + watch;
    while led && Instant::now() < until {
        if tokio::time::timeout_at(until, leading.changed())
            .await
            .is_err()
        {
            break;
        }
        if !*leading.borrow_and_update() {
            steps_down += 1;
        }
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    (led, steps_down)
}

#[tokio::test]
async fn reads_slower_than_a_quarter_grace_do_not_cost_the_lead() {
    // Lease 4 s, grace 2 s: every Lease read answered after 0.7 s (> grace/4, the old bound of
    // one confirming read). Five terms, never a step down.
    let (led, steps_down) = lead_for(Duration::from_millis(700), Duration::from_secs(20)).await;
    assert!(led, "never led");
    assert_eq!(
        steps_down, 0,
        "stepped down with reads landing inside the window"
    );
}

#[tokio::test]
async fn reads_that_never_land_in_time_end_the_lead() {
    // Reads answered after 3 s (longer than the whole grace): the leader cannot confirm a
    // renewal, so it must never lead, or step down within a term.
    let (led, steps_down) = lead_for(Duration::from_secs(3), Duration::from_secs(8)).await;
    assert!(
        !led || steps_down >= 1,
        "kept the lead without ever confirming a renewal"
    );
}
