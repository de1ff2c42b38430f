//! The HTTP listener's limits, against the real server: slowloris clients,
//! idle keep-alive connections, stalled upload bodies, the upload cap, TLS.

mod common;

use std::time::{Duration, Instant};

use common::Harness;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NO_BACKEND: &str = "http://127.0.0.1:9/v1";

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Sends a request head one header line at a time, never finishing it.
/// Returns true once the server ends the connection (EOF, a reset, or an
/// error answer), false if it still holds it after a minute.
async fn trickle(addr: String) -> bool {
    let Ok(mut stream) = TcpStream::connect(&addr).await else {
        return true;
    };
    if stream.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.is_err() {
        return true;
    }
    let mut buf = [0u8; 1024];
    for _ in 0..600 {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return true,
                Ok(_) => {} // an error answer; EOF follows
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    return true;
                }
            }
        }
    }
    false
}

#[tokio::test]
async fn slowloris_clients_cannot_exhaust_descriptors_and_are_cut_off_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = common::write_config(
        dir.path(),
        NO_BACKEND,
        "header_read_timeout_secs = 1\nmax_connections = 8\n",
        "",
    );
    let (server, url) = common::spawn_batchd(["serve", "--config", config.to_str().unwrap()]);
    let pid = server.id();
    // No pooled keep-alive connection: it would hold one of the 8 slots (and
    // one descriptor) while the baseline is taken.
    let http = batchd::http_client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    assert_eq!(http.get(format!("{url}/health")).send().await.unwrap().status(), 200);
    // The fewest descriptors over a moment: the health check's connection
    // (and any other transient one) may take a little while to close.
    let mut baseline = usize::MAX;
    for _ in 0..20 {
        baseline = baseline.min(open_descriptors(pid));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let addr = url.trim_start_matches("http://").to_owned();
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..40 {
        attackers.spawn(trickle(addr.clone()));
    }
    // Wait until the trickling clients hold the server's connection slots.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut most = 0;
    while open_descriptors(pid) < baseline + 8 {
        most = most.max(open_descriptors(pid));
        assert!(
            Instant::now() < deadline,
            "the trickling clients never got connected: {most} descriptors at most, baseline {baseline}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let normal = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move { http.get(format!("{url}/health")).send().await.map(|r| r.status()) })
    };
    let mut most_descriptors = 0;
    while !attackers.is_empty() {
        most_descriptors = most_descriptors.max(open_descriptors(pid));
        tokio::select! {
            closed = attackers.join_next() => assert!(closed.unwrap().unwrap(), "a trickling client was never cut off"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    assert_eq!(normal.await.unwrap().unwrap(), 200, "a normal request was not answered");
    // 8 connection slots, plus a few descriptors of the database pool.
    assert!(
        most_descriptors <= baseline + 8 + 6,
        "the server held {most_descriptors} descriptors (baseline {baseline}) for 40 trickling clients"
    );
    assert_eq!(http.get(format!("{url}/health")).send().await.unwrap().status(), 200);
}

/// Reads until the server closes the connection; None if it does not within 20 s.
async fn read_until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut received = vec![];
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| received)
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let h = Harness::start_with(|c| {
        c.server.idle_timeout_secs = 1;
        c.server.header_read_timeout_secs = 60;
    })
    .await;
    let mut stream = TcpStream::connect(h.server.as_ref().unwrap().addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let received = read_until_closed(&mut stream)
        .await
        .expect("the idle connection was kept open");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("ok"), "{text}");
}

const BOUNDARY: &str = "XBOUNDARYX";

/// Starts a `POST /v1/files` whose body stops half-way.
async fn stalled_upload(h: &Harness) -> TcpStream {
    let mut stream = TcpStream::connect(h.server.as_ref().unwrap().addr).await.unwrap();
    let body_start = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n{{\"custom_id\": "
    );
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n\
         Content-Length: 100000\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body_start.as_bytes()).await.unwrap();
    stream
}

#[tokio::test]
async fn an_upload_whose_body_stops_arriving_is_cut_off_and_stores_nothing() {
    let h = Harness::start_with(|c| c.server.request_body_timeout_secs = 1).await;
    let mut stream = stalled_upload(&h).await;
    let received = read_until_closed(&mut stream)
        .await
        .expect("the stalled upload was never cut off");
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 4"), "{text}");
    let (status, files) = h.get("/files").await;
    assert_eq!(status, 200);
    assert_eq!(files["data"], serde_json::json!([]), "{files}");
}

#[tokio::test]
async fn uploads_over_the_concurrency_cap_get_429_rate_limit_exceeded() {
    let h = Harness::start_with(|c| c.limits.max_concurrent_uploads = 1).await;
    let stalled = stalled_upload(&h).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        let response = h.upload(b"{}\n".to_vec(), "in.jsonl", "batch").await;
        if response.status() == 429 {
            break response;
        }
        assert!(Instant::now() < deadline, "a second upload was never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    assert_eq!(body["error"]["type"], "requests", "{body}");
    // Other requests are not limited, and the slot comes back with the upload.
    assert_eq!(h.get("/files").await.0, 200);
    drop(stalled);
    loop {
        let response = h.upload(b"{}\n".to_vec(), "in.jsonl", "batch").await;
        if response.status() == 200 {
            break;
        }
        assert_eq!(response.status(), 429);
        assert!(Instant::now() < deadline, "the upload slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn serves_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let h = Harness::start_with(|c| {
        c.server.tls_cert = Some(cert.clone());
        c.server.tls_key = Some(key.clone());
    })
    .await;
    let server = h.server.as_ref().unwrap();
    assert!(server.url().starts_with("https://"), "{}", server.url());

    let mut roots = rustls::RootCertStore::empty();
    roots.add(generated.cert.der().clone()).unwrap();
    let client =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut received = vec![];
    let _ = tls.read_to_end(&mut received).await;
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("ok"), "{text}");

    // Plain HTTP on the TLS port gets no answer from the API.
    let mut plain = TcpStream::connect(server.addr).await.unwrap();
    plain
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let received = read_until_closed(&mut plain).await.unwrap_or_default();
    assert!(!String::from_utf8_lossy(&received).contains("200 OK"));
}
