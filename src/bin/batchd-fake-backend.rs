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
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let backend =
        batchd::testing::fake_backend::FakeBackend::start(args.listen, Duration::from_millis(args.delay_ms)).await?;
    println!("fake backend listening on http://{}", backend.addr);
    std::io::stdout().flush()?;
    tokio::signal::ctrl_c().await?;
    Ok(())
}
