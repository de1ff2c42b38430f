//! Outgoing TLS and proxy policy, through the real `batchd` binary: an HTTPS
//! model server with a certificate of a private CA works when `SSL_CERT_FILE`
//! names the CA (and fails with a clear per-line error when it does not),
//! webhooks are delivered over HTTPS with a valid Standard Webhooks
//! signature, and a dead proxy in the environment changes nothing.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use batchd::testing::fake_backend::{FakeBackend, FakeOptions, tls};
use common::{KillOnDrop, chat_line, create_batch_at, lines_at, spawn_batchd_with_env, wait_terminal_at};
use hmac::{Hmac, Mac};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use serde_json::Value;
use sha2::Sha256;

const SECRET: &str = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0";
const PROXY_VARS: [&str; 6] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// A private CA (its certificate in `ca_pem`) and a server identity it
/// signed for 127.0.0.1 and localhost, made fresh for each test.
struct Pki {
    ca_pem: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

fn pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "batchd test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    leaf.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let ca_pem = dir.join("ca.pem");
    std::fs::write(&ca_pem, ca_cert.pem()).unwrap();
    let chain = format!("{}{}", cert.pem(), ca_cert.pem());
    let server = tls::server_config_from_pem(chain.as_bytes(), key.serialize_pem().as_bytes()).unwrap();
    Pki { ca_pem, server }
}

async fn https_backend(pki: &Pki) -> FakeBackend {
    let options = FakeOptions {
        tls: Some(pki.server.clone()),
        ..FakeOptions::default()
    };
    let backend = FakeBackend::start_with("127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap();
    assert!(backend.url().starts_with("https://127.0.0.1:"));
    backend
}

type Received = Arc<Mutex<Vec<(HeaderMap, Bytes)>>>;

/// A webhook endpoint on 127.0.0.1 that records what it is sent; HTTPS with
/// `tls`, plain HTTP without.
async fn receiver(tls: Option<Arc<rustls::ServerConfig>>) -> (String, Received) {
    let received: Received = Arc::default();
    let store = received.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let store = store.clone();
            async move {
                store.lock().unwrap().push((headers, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    match tls {
        Some(config) => {
            let listener = tls::TlsListener::new(listener, config).unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            (format!("https://{addr}/hook"), received)
        }
        None => {
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            (format!("http://{addr}/hook"), received)
        }
    }
}

fn webhook_toml(url: &str) -> String {
    format!(
        "[webhook_delivery]\nallow_private_addresses = true\nretry_initial_secs = 0.2\n\
         [[webhooks]]\nproject = \"default\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n"
    )
}

/// Few, fast retries: a line that cannot be sent fails quickly.
const FAST_RETRIES: &str = "[execution]\nmax_attempts = 2\nretry_initial_backoff_ms = 10\nretry_max_backoff_ms = 20\n";

fn lines(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{}\n",
                chat_line(&format!("line-{i}"), "fake-model", &format!("hello {i}"))
            )
        })
        .collect()
}

fn serve(config: &Path, env: impl FnOnce(&mut std::process::Command)) -> (KillOnDrop, String) {
    let (child, url) = spawn_batchd_with_env(["serve", "--config", config.to_str().unwrap()], env);
    (child, format!("{url}/v1"))
}

/// Checks the Standard Webhooks signature independently of batchd's code:
/// `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
fn assert_signed(headers: &HeaderMap, body: &[u8]) {
    let key = STANDARD.decode(SECRET.strip_prefix("whsec_").unwrap()).unwrap();
    let id = headers["webhook-id"].to_str().unwrap();
    let timestamp = headers["webhook-timestamp"].to_str().unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    let signatures = headers["webhook-signature"].to_str().unwrap();
    assert!(
        signatures.split(' ').any(|s| s == expected),
        "no signature matches: {signatures}"
    );
    let sent: i64 = timestamp.parse().unwrap();
    assert!(
        (batchd::ids::now() - sent).abs() < 300,
        "timestamp {sent} is not current"
    );
}

async fn wait_received(received: &Received, n: usize) -> Vec<(HeaderMap, Bytes)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = received.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "only {} webhook(s) arrived", got.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_https_backend_of_a_private_ca_in_ssl_cert_file_answers_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let backend = https_backend(&pki).await;
    let config = common::write_config(dir.path(), &backend.url(), FAST_RETRIES, "");
    let (_server, api) = serve(&config, |c| {
        c.env("SSL_CERT_FILE", &pki.ca_pem);
    });
    let http = batchd::http_client::client();
    let id = create_batch_at(&http, &api, None, lines(5)).await;
    let batch = wait_terminal_at(&http, &api, &id).await;
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["request_counts"]["completed"], 5, "{batch}");
    assert_eq!(batch["request_counts"]["failed"], 0, "{batch}");
    let output = lines_at(&http, &api, &batch["output_file_id"]).await;
    assert_eq!(output.len(), 5);
    for line in &output {
        assert_eq!(line["response"]["status_code"], 200, "{line}");
        assert!(line["error"].is_null(), "{line}");
    }
}

#[tokio::test]
async fn without_the_private_ca_lines_fail_with_a_certificate_error_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let backend = https_backend(&pki).await;
    let config = common::write_config(dir.path(), &backend.url(), FAST_RETRIES, "");
    let (_server, api) = serve(&config, |c| {
        c.env_remove("SSL_CERT_FILE");
    });
    let http = batchd::http_client::client();
    let id = create_batch_at(&http, &api, None, lines(3)).await;
    let batch = wait_terminal_at(&http, &api, &id).await;
    assert_eq!(batch["request_counts"]["failed"], 3, "{batch}");
    let errors = lines_at(&http, &api, &batch["error_file_id"]).await;
    assert_eq!(errors.len(), 3);
    for line in &errors {
        assert_eq!(line["error"]["code"], "backend_unavailable", "{line}");
        let message = line["error"]["message"].as_str().unwrap();
        assert!(message.contains("certificate"), "not a clear TLS error: {message}");
    }
    // No request got past the handshake, and the server still serves.
    assert_eq!(backend.stats.requests.load(std::sync::atomic::Ordering::Relaxed), 0);
    let models = http.get(format!("{api}/models")).send().await.unwrap();
    assert_eq!(models.status(), 200);
    let again = create_batch_at(&http, &api, None, lines(1)).await;
    let again = wait_terminal_at(&http, &api, &again).await;
    assert_eq!(again["request_counts"]["failed"], 1, "{again}");
}

#[tokio::test]
async fn a_webhook_is_delivered_over_https_with_a_valid_signature() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let backend = FakeBackend::start("127.0.0.1:0".parse().unwrap(), Duration::ZERO)
        .await
        .unwrap();
    let (hook_url, received) = receiver(Some(pki.server.clone())).await;
    assert!(hook_url.starts_with("https://"));
    let config = common::write_config(dir.path(), &backend.url(), &webhook_toml(&hook_url), "");
    let (_server, api) = serve(&config, |c| {
        c.env("SSL_CERT_FILE", &pki.ca_pem);
    });
    let http = batchd::http_client::client();
    let id = create_batch_at(&http, &api, None, lines(1)).await;
    assert_eq!(wait_terminal_at(&http, &api, &id).await["status"], "completed");
    let got = wait_received(&received, 1).await;
    let (headers, body) = &got[0];
    assert_signed(headers, body);
    let event: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(event["type"], "batch.completed");
    assert_eq!(event["data"]["id"], id.as_str());
}

#[tokio::test]
async fn a_dead_proxy_in_the_environment_breaks_neither_backends_nor_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let remote = https_backend(&pki).await;
    let (hook_url, received) = receiver(None).await;
    let dead_proxy = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    // A remote HTTPS model (HTTPS_PROXY), a managed model on loopback that
    // the manager health-checks (HTTP_PROXY), and a plain-HTTP webhook.
    let fake = env!("CARGO_BIN_EXE_batchd-fake-backend");
    let config = dir.path().join("batchd.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{data}\"\n{FAST_RETRIES}{hooks}\n\
             [[models]]\nname = \"fake-model\"\nurl = \"{url}\"\n\n\
             [[models]]\nname = \"managed\"\ncommand = \"exec {fake} --listen 127.0.0.1:{{port}}\"\n",
            data = dir.path().join("data").display(),
            hooks = webhook_toml(&hook_url),
            url = remote.url(),
        ),
    )
    .unwrap();
    let (_server, api) = serve(&config, |c| {
        c.env("SSL_CERT_FILE", &pki.ca_pem)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy");
        for var in PROXY_VARS {
            c.env(var, &dead_proxy);
        }
    });
    let http = batchd::http_client::client();
    let remote_batch = create_batch_at(&http, &api, None, lines(2)).await;
    let managed_lines = format!("{}\n", chat_line("m", "managed", "hi"));
    let managed_batch = create_batch_at(&http, &api, None, managed_lines).await;
    for id in [&remote_batch, &managed_batch] {
        let batch = wait_terminal_at(&http, &api, id).await;
        assert_eq!(batch["status"], "completed", "{batch}");
        assert_eq!(batch["request_counts"]["failed"], 0, "{batch}");
    }
    let got = wait_received(&received, 2).await;
    for (headers, body) in &got {
        assert_signed(headers, body);
    }
}

#[tokio::test]
async fn an_unusable_ssl_cert_file_stops_the_server_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not-a-bundle.txt");
    std::fs::write(&not_pem, "no certificates here\n").unwrap();
    let config = common::write_config(dir.path(), "https://127.0.0.1:1/v1", "", "");
    for bundle in [dir.path().join("missing.pem"), not_pem] {
        let mut child = KillOnDrop(
            std::process::Command::new(env!("CARGO_BIN_EXE_batchd"))
                .args(["serve", "--config"])
                .arg(&config)
                .env("SSL_CERT_FILE", &bundle)
                .env("BATCHD_LOG", "warn")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "started with SSL_CERT_FILE={}",
                bundle.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(!status.success());
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains("SSL_CERT_FILE="), "{stderr}");
    }
}
