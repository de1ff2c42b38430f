//! A GPU fleet behind one model name: one external model whose `urls` are
//! several `batchd-fake-backend` processes in GPU mode (real processes, real
//! ports), and the real `batchd` binary in front of them. A batch spreads over
//! the backends by capacity; a backend killed mid-batch is taken out of
//! rotation, its lines finish elsewhere exactly once, and once it is back on
//! its port it gets work again.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{KillOnDrop, chat_line, create_batch_at, lines_at, spawn_batchd, wait_terminal_at};
use serde_json::{Value, json};

const MODEL: &str = "fleet";

/// A running `batchd-fake-backend` process.
struct Fake {
    child: KillOnDrop,
    /// `http://127.0.0.1:PORT`, without `/v1`.
    base: String,
}

impl Fake {
    /// Starts one in GPU mode on `listen`; `None` if it did not come up (its
    /// port is still taken, say).
    fn try_start(listen: &str, slots: usize, ms_per_token: f64) -> Option<Fake> {
        use std::io::{BufRead, BufReader};
        batchd::http_client::install_crypto_provider();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_batchd-fake-backend"))
            .args([
                "--listen",
                listen,
                "--gpu-slots",
                &slots.to_string(),
                "--ms-per-token",
                &ms_per_token.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if !line.contains("listening on") {
            return None;
        }
        let base = line.trim().rsplit(' ').next().unwrap().to_owned();
        Some(Fake { child, base })
    }

    fn start(listen: &str, slots: usize, ms_per_token: f64) -> Fake {
        Self::try_start(listen, slots, ms_per_token).expect("the fake backend starts")
    }

    /// The URL for batchd's config.
    fn url(&self) -> String {
        format!("{}/v1", self.base)
    }

    /// Chat requests this process has received, by its own count.
    async fn requests(&self, http: &reqwest::Client) -> u64 {
        let stats: Value = http
            .get(format!("{}/fake/stats", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["requests"].as_u64().unwrap()
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// `n` distinct free loopback ports (bound at once, then released), so a
/// backend can be restarted on the port batchd knows it by.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// Writes a `batchd serve` config with the one model `fleet` over `urls`.
fn fleet_config(dir: &std::path::Path, urls: &[String], model_extra: &str) -> std::path::PathBuf {
    let config = dir.join("batchd.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{data}\"\n\
             [execution]\npoll_interval_ms = 50\nretry_initial_backoff_ms = 10\nretry_max_backoff_ms = 50\n\
             max_attempts = 3\nrequest_timeout_secs = 10\n\
             [[models]]\nname = \"{MODEL}\"\nurls = {urls}\n{model_extra}\n",
            data = dir.join("data").display(),
            // A JSON array of plain strings is a TOML array too.
            urls = json!(urls),
        ),
    )
    .unwrap();
    config
}

fn serve(config: &std::path::Path) -> (KillOnDrop, String) {
    spawn_batchd([std::ffi::OsStr::new("serve"), "--config".as_ref(), config.as_os_str()])
}

/// `n` chat lines `{prefix}{i}`, each asking for `max_tokens`.
fn input(prefix: &str, n: usize, max_tokens: u64) -> String {
    (0..n)
        .map(|i| {
            let mut line = chat_line(&format!("{prefix}{i}"), MODEL, &format!("item {i}"));
            line["body"]["max_tokens"] = json!(max_tokens);
            format!("{line}\n")
        })
        .collect()
}

async fn batch(http: &reqwest::Client, api: &str, id: &str) -> Value {
    http.get(format!("{api}/batches/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The completed batch `id` has a 200 answer for each of its `n` lines
/// `{prefix}{i}`, each custom_id exactly once, and no error file lines.
async fn assert_all_once(http: &reqwest::Client, api: &str, done: &Value, prefix: &str, n: usize) {
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["request_counts"],
        json!({"total": n, "completed": n, "failed": 0}),
        "{done}"
    );
    let output = lines_at(http, api, &done["output_file_id"]).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for line in &output {
        assert_eq!(line["response"]["status_code"], 200, "{line}");
        *seen.entry(line["custom_id"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "custom_ids in the output more than once: {twice:?}");
    for i in 0..n {
        assert!(
            seen.contains_key(&format!("{prefix}{i}")),
            "{prefix}{i} has no output line"
        );
    }
    assert_eq!(output.len(), n);
    let errors = lines_at(http, api, &done["error_file_id"]).await;
    assert!(errors.is_empty(), "error file lines: {errors:?}");
}

/// The `backends` of model `fleet` in `GET /v1/models`.
async fn backends(http: &reqwest::Client, api: &str) -> Vec<Value> {
    let list: Value = http
        .get(format!("{api}/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let model = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == MODEL)
        .unwrap_or_else(|| panic!("no model {MODEL}: {list}"));
    model["backends"]
        .as_array()
        .unwrap_or_else(|| panic!("model {MODEL} lists no backends: {model}"))
        .clone()
}

fn backend(backends: &[Value], id: usize) -> &Value {
    backends
        .iter()
        // Ids are strings: the index in config order.
        .find(|b| b["id"].as_str() == Some(id.to_string().as_str()))
        .unwrap_or_else(|| panic!("no backend {id}: {backends:?}"))
}

fn lines_served(backends: &[Value]) -> u64 {
    backends.iter().map(|b| b["lines_served"].as_u64().unwrap()).sum()
}

/// Polls `GET /v1/models` until `done` holds for the backends (a deadline
/// turns a hang into a failure).
async fn wait_backends(http: &reqwest::Client, api: &str, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = backends(http, api).await;
        if done(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "{what}: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Prometheus page of the server at `url`.
async fn metrics(http: &reqwest::Client, url: &str) -> String {
    let response = http.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// Samples of `name` for model `fleet` on a Prometheus text page, by their
/// `backend` label.
fn samples(page: &str, name: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix('{')) else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let labels: HashMap<&str, &str> = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        if labels.get("model") != Some(&MODEL) {
            continue;
        }
        let (Some(backend), Some(value)) = (labels.get("backend"), value.split_whitespace().next()) else {
            continue;
        };
        out.insert((*backend).to_owned(), value.parse().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_spreads_over_four_backends_by_capacity() {
    const N: usize = 800;
    const TOKENS: u64 = 20;
    const SLOTS: usize = 4;
    // Equal slots, so a backend's share is its speed's share whether the
    // backends are saturated (lines go where slots free up) or batchd is the
    // bottleneck (least in flight: in flight = rate x latency, equal over
    // backends, so rate ~ 1 / latency). Expected shares 36%, 36%, 18%, 9%;
    // round-robin would give the last 25%, 2.75 times its share.
    let speeds = [3.0, 3.0, 6.0, 12.0];
    let fakes: Vec<Fake> = speeds.iter().map(|ms| Fake::start("127.0.0.1:0", SLOTS, *ms)).collect();
    let urls: Vec<String> = fakes.iter().map(Fake::url).collect();
    let dir = tempfile::tempdir().unwrap();
    // The per-backend bound keeps the lines dispatched at the end (when the
    // queue runs out and in-flight counts even out) a small part of the batch.
    let config = fleet_config(dir.path(), &urls, "min_concurrency = 1\nmax_concurrency = 32");
    let (_server, url) = serve(&config);
    let api = format!("{url}/v1");
    let http = batchd::http_client::client();

    let id = create_batch_at(&http, &api, None, input("c", N, TOKENS)).await;
    let done = wait_terminal_at(&http, &api, &id).await;
    assert_all_once(&http, &api, &done, "c", N).await;

    // The fakes' own counts are the truth about where lines went.
    let mut served = vec![];
    for fake in &fakes {
        served.push(fake.requests(&http).await);
    }
    assert_eq!(
        served.iter().sum::<u64>(),
        N as u64,
        "healthy backends, yet some line was sent more than once: {served:?}"
    );
    let capacity: Vec<f64> = speeds.iter().map(|ms| SLOTS as f64 / ms).collect();
    let total_capacity: f64 = capacity.iter().sum();
    for (i, (&got, cap)) in served.iter().zip(&capacity).enumerate() {
        let expected = cap / total_capacity;
        let share = got as f64 / N as f64;
        assert!(
            (share / expected - 1.0).abs() <= 0.5,
            "backend {i} ({} ms/token) got {got} lines ({:.1}%), its capacity share is {:.1}%: {served:?}",
            speeds[i],
            share * 100.0,
            expected * 100.0
        );
    }
    assert!(
        served[0].min(served[1]) > served[3],
        "the fastest backends got no more than the slowest: {served:?}"
    );

    // batchd's view agrees: four healthy backends in config order, idle now,
    // each having answered exactly the lines its fake counted.
    let list = wait_backends(&http, &api, "lines_served never added up to the batch", |b| {
        lines_served(b) == N as u64
    })
    .await;
    assert_eq!(list.len(), 4, "{list:?}");
    for (i, fake) in fakes.iter().enumerate() {
        let b = backend(&list, i);
        assert_eq!(b["url"], fake.url(), "{b}");
        assert_eq!(b["state"], "healthy", "{b}");
        assert_eq!(b["in_flight"], 0, "{b}");
        assert_eq!(b["lines_served"], served[i], "{b}");
        let limit = b["concurrency_limit"].as_u64().unwrap();
        assert!((1..=32).contains(&limit), "{b}");
    }

    let page = metrics(&http, &url).await;
    let metric_served = samples(&page, "batchd_backend_lines_served_total");
    let up = samples(&page, "batchd_backend_up");
    let in_flight = samples(&page, "batchd_backend_in_flight");
    let limits = samples(&page, "batchd_backend_concurrency_limit");
    for (i, &got) in served.iter().enumerate() {
        let id = i.to_string();
        assert_eq!(metric_served.get(&id), Some(&(got as f64)), "backend {i}: {page}");
        assert_eq!(up.get(&id), Some(&1.0), "backend {i}: {page}");
        assert_eq!(in_flight.get(&id), Some(&0.0), "backend {i}: {page}");
        assert!(limits.get(&id).is_some_and(|l| *l >= 1.0), "backend {i}: {page}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_is_failed_over_and_gets_work_again_after_restart() {
    const N: usize = 600;
    const TOKENS: u64 = 20;
    const SLOTS: usize = 4;
    const MS_PER_TOKEN: f64 = 5.0;
    const VICTIM: usize = 1;
    // 100 ms a line, 12 at once over three backends: about 5 s for the batch.
    let listens: Vec<String> = free_ports(3).iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut fakes: Vec<Fake> = listens.iter().map(|l| Fake::start(l, SLOTS, MS_PER_TOKEN)).collect();
    let urls: Vec<String> = fakes.iter().map(Fake::url).collect();
    let dir = tempfile::tempdir().unwrap();
    let config = fleet_config(dir.path(), &urls, "min_concurrency = 1\nmax_concurrency = 32");
    let (_server, url) = serve(&config);
    let api = format!("{url}/v1");
    let http = batchd::http_client::client();

    let id = create_batch_at(&http, &api, None, input("k", N, TOKENS)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let b = batch(&http, &api, &id).await;
        let completed = b["request_counts"]["completed"].as_u64().unwrap_or(0);
        assert!(b["status"] != "completed", "the batch finished before the kill: {b}");
        if completed >= 100 {
            break;
        }
        assert!(Instant::now() < deadline, "the batch made no progress: {b}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = fakes[VICTIM].requests(&http).await;
    assert!(before > 0, "the victim had no lines before it was killed");
    fakes[VICTIM].kill();

    wait_backends(&http, &api, "the killed backend was never taken out of rotation", |b| {
        backend(b, VICTIM)["state"] == "down"
    })
    .await;
    let up = samples(&metrics(&http, &url).await, "batchd_backend_up");
    assert_eq!(up.get(&VICTIM.to_string()), Some(&0.0), "{up:?}");
    let restart_deadline = Instant::now() + Duration::from_secs(10);
    fakes[VICTIM] = loop {
        if let Some(fake) = Fake::try_start(&listens[VICTIM], SLOTS, MS_PER_TOKEN) {
            break fake;
        }
        assert!(
            Instant::now() < restart_deadline,
            "the fake backend could not listen on {} again",
            listens[VICTIM]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    wait_backends(&http, &api, "the restarted backend was never healthy again", |b| {
        backend(b, VICTIM)["state"] == "healthy"
    })
    .await;

    let done = wait_terminal_at(&http, &api, &id).await;
    assert_all_once(&http, &api, &done, "k", N).await;
    let mut total = N;
    // The new process counts only what it got after the restart.
    if fakes[VICTIM].requests(&http).await == 0 {
        // The first batch's lines were all handed out before the backend
        // was back: a second batch shows it is in rotation again.
        const M: usize = 200;
        let second = create_batch_at(&http, &api, None, input("r", M, TOKENS)).await;
        let done = wait_terminal_at(&http, &api, &second).await;
        assert_all_once(&http, &api, &done, "r", M).await;
        total += M;
        let after = fakes[VICTIM].requests(&http).await;
        assert!(after > 0, "the restarted backend got no line of a new batch");
    }

    let list = wait_backends(&http, &api, "lines_served never added up to the batches", |b| {
        lines_served(b) == total as u64
    })
    .await;
    assert_eq!(list.len(), 3, "{list:?}");
    for (i, fake) in fakes.iter().enumerate() {
        let b = backend(&list, i);
        assert_eq!(b["url"], fake.url(), "{b}");
        assert_eq!(b["state"], "healthy", "{b}");
        assert_eq!(b["in_flight"], 0, "{b}");
    }
    let up = samples(&metrics(&http, &url).await, "batchd_backend_up");
    for i in 0..3 {
        assert_eq!(up.get(&i.to_string()), Some(&1.0), "backend {i}: {up:?}");
    }
}
