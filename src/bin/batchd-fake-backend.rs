//! A fake OpenAI-compatible backend for batchd's SDK compatibility tests and
//! benchmarks. See `batchd::testing::fake_backend` for its scripted behaviours.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(about = "A fake OpenAI-compatible model server for tests and benchmarks")]
struct Args {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Delay before every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Behave like a GPU with continuous batching: this many sequences at
    /// once (the rest queue), `--ms-per-token` per generated token.
    #[arg(long)]
    gpu_slots: Option<usize>,
    #[arg(long, default_value_t = 10.0)]
    ms_per_token: f64,
    /// Wait this long before listening, like a server loading its weights.
    #[arg(long, default_value_t = 0)]
    startup_ms: u64,
    /// Append `spawned`, `listening`, `request` and `response` events with
    /// Unix milliseconds to this file (benchmarks).
    #[arg(long)]
    timeline: Option<std::path::PathBuf>,
    /// Serve HTTPS with this PEM certificate chain (leaf first); needs `--tls-key`.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Exit at once on a request whose prompt holds `[crash_server]`, like a
    /// model server that a poison request crashes.
    #[arg(long)]
    exit_on_crash_marker: bool,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    use batchd::testing::fake_backend::{FakeBackend, FakeOptions, GpuModel, timeline_event, tls};
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(tls::server_config_from_files(cert, key)?),
        _ => None,
    };
    timeline_event(args.timeline.as_deref(), "spawned");
    tokio::time::sleep(Duration::from_millis(args.startup_ms)).await;
    let options = FakeOptions {
        delay: Duration::from_millis(args.delay_ms),
        gpu: args.gpu_slots.map(|slots| GpuModel {
            slots,
            ms_per_token: args.ms_per_token,
        }),
        timeline: args.timeline.clone(),
        tls,
        exit_on_crash_marker: args.exit_on_crash_marker,
    };
    let backend = FakeBackend::start_with(args.listen, options).await?;
    timeline_event(args.timeline.as_deref(), "listening");
    // The last word is the base URL without `/v1`, as the harnesses expect.
    println!("fake backend listening on {}", backend.url().trim_end_matches("/v1"));
    std::io::stdout().flush()?;
    tokio::signal::ctrl_c().await?;
    Ok(())
}
