//! End to end: SIGTERM drains without losing requests. Remora runs with `--drain-time-s 5` under
//! steady HTTP/1.1 keep-alive load (each request takes ~20 ms upstream) plus a few 1 s requests;
//! SIGTERM arrives mid-run. Then:
//! * no request sent on a connection Remora had accepted fails or gets a 5xx (only connecting
//!   after the listener closed may fail);
//! * the slow requests in flight at the signal complete with 200;
//! * `/ready` reports 503 `DRAINING` while draining;
//! * the process exits by itself within the drain time + 2 s.

mod support;
#[path = "e2e/util.rs"]
mod util;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::json;
use support::{free_port, Upstream};
use util::{bootstrap, cluster, get, http_listener, local, route, vhost, Proxy};

const DRAIN_TIME_S: u64 = 5;
const WORKERS: usize = 8;

#[derive(Default, Debug)]
struct Tally {
    ok: u64,
    ok_after_signal: u64,
    /// Connections refused (or accepted into the backlog and dropped unanswered) after SIGTERM.
    refused_after_signal: u64,
    /// Requests that failed on a connection Remora had accepted, or got a 5xx: must stay empty.
    lost: Vec<String>,
}

/// One client: keep-alive connections, one request at a time, reconnecting whenever the proxy
/// closes the connection (e.g. after `connection: close`). Stops at `stop`, or once a connection
/// attempt fails after `signaled`.
async fn worker(id: usize, port: u16, signaled: Arc<AtomicBool>, stop: Arc<AtomicBool>, tally: Arc<Mutex<Tally>>) {
    'connections: while !stop.load(Ordering::SeqCst) {
        let opened_after_signal = signaled.load(Ordering::SeqCst);
        let stream = match tokio::net::TcpStream::connect(local(port)).await {
            Ok(s) => s,
            Err(e) => {
                let mut t = tally.lock().unwrap();
                if opened_after_signal || signaled.load(Ordering::SeqCst) {
                    t.refused_after_signal += 1;
                    return;
                }
                t.lost.push(format!("worker {id}: connect failed before SIGTERM: {e}"));
                return;
            }
        };
        let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await else {
            continue;
        };
        tokio::spawn(conn);
        let mut answered_on_conn = 0u64;
        loop {
            if stop.load(Ordering::SeqCst) {
                break 'connections;
            }
            if sender.ready().await.is_err() {
                // The proxy closed this (idle) connection: nothing was sent on it; reconnect.
                continue 'connections;
            }
            let req = Request::get("/work")
                .header("host", "drain.test")
                .header("x-test-delay-ms", "20")
                .body(Full::<Bytes>::default())
                .unwrap();
            let sent_after_signal = signaled.load(Ordering::SeqCst);
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    let close = resp
                        .headers()
                        .get("connection")
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                    let body = resp.into_body().collect().await;
                    let mut t = tally.lock().unwrap();
                    match body {
                        Ok(_) if status == StatusCode::OK => {
                            t.ok += 1;
                            if sent_after_signal {
                                t.ok_after_signal += 1;
                            }
                        }
                        Ok(b) => t.lost.push(format!(
                            "worker {id}: status {status} (after signal: {sent_after_signal}): {}",
                            String::from_utf8_lossy(&b.to_bytes())
                        )),
                        Err(e) => t.lost.push(format!("worker {id}: response body failed: {e}")),
                    }
                    answered_on_conn += 1;
                    if close {
                        continue 'connections;
                    }
                }
                Err(e) => {
                    let unsent = e.message().is_some();
                    let err = e.into_error();
                    let mut t = tally.lock().unwrap();
                    if unsent {
                        // Never written: the connection closed first. Reconnect.
                        drop(t);
                        continue 'connections;
                    }
                    if opened_after_signal && answered_on_conn == 0 {
                        // Connected after SIGTERM into the listen backlog of a listener that was
                        // then closed: the proxy never accepted this connection.
                        t.refused_after_signal += 1;
                        return;
                    }
                    t.lost.push(format!(
                        "worker {id}: request #{} on an accepted connection failed (sent after signal: \
                         {sent_after_signal}): {err}",
                        answered_on_conn + 1
                    ));
                    continue 'connections;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_request_and_exits_in_time() {
    let upstream = Upstream::start("backend").await.expect("upstream");
    let (admin, port) = (free_port(), free_port());
    let config = bootstrap(
        admin,
        vec![http_listener("main", port, "ingress", vhost(json!([route("/", "backend", json!({}))])))],
        vec![cluster("backend", &[upstream.port()])],
    );
    let drain = DRAIN_TIME_S.to_string();
    let mut proxy = Proxy::start_with(&config, &[port], 2, &["--drain-time-s", &drain]).await;

    let signaled = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let workers: Vec<_> =
        (0..WORKERS).map(|id| tokio::spawn(worker(id, port, signaled.clone(), stop.clone(), tally.clone()))).collect();

    // Steady load for a while, then three slow requests that will be in flight at the signal.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let slow: Vec<_> =
        (0..3).map(|_| tokio::spawn(async move { get(port, "/slow", &[("x-test-delay-ms", "1000")]).await })).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ok_before = tally.lock().unwrap().ok;
    assert!(ok_before >= 50, "too little load before the signal: {ok_before} requests");

    signaled.store(true, Ordering::SeqCst);
    let signal_at = Instant::now();
    proxy.signal(libc::SIGTERM);

    // While draining, the admin API says so.
    tokio::time::sleep(Duration::from_millis(100)).await;
    if let Ok(r) = proxy.admin_get("/ready").await {
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "/ready while draining: {}", r.text());
        assert_eq!(r.text().trim(), "DRAINING");
    }

    for s in slow {
        let r = s.await.expect("slow request task");
        assert_eq!(r.status, StatusCode::OK, "slow in-flight request: {}", r.text());
    }

    let exit = proxy.wait_exit(Duration::from_secs(DRAIN_TIME_S + 2)).await;
    let exited_after = signal_at.elapsed();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.expect("worker task");
    }
    let t = std::mem::take(&mut *tally.lock().unwrap());
    eprintln!("drain tally: {t:?}; exited {exited_after:?} after SIGTERM");
    let status = exit.unwrap_or_else(|| panic!("still running {exited_after:?} after SIGTERM; log:\n{}", proxy.logs()));
    assert!(status.success(), "exit status after SIGTERM: {status}; log:\n{}", proxy.logs());
    assert!(t.lost.is_empty(), "{} request(s) lost during the drain:\n{}", t.lost.len(), t.lost.join("\n"));
    assert!(t.refused_after_signal >= 1, "the listener never closed: {t:?}");
    assert!(
        tokio::net::TcpStream::connect(local(port)).await.is_err(),
        "the listener still accepts after the process exited"
    );
}
