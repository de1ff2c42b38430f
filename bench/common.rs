//! Helpers shared by the benchmarks.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// Starts a process and waits for its "... listening on http://ADDR" line;
/// returns the process and the URL.
pub fn spawn_listening(mut cmd: Command) -> (Child, String) {
    // The caller's plain `reqwest::Client`s need a default rustls provider.
    batchd::http_client::install_crypto_provider();
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    assert!(line.contains("listening on"), "process did not start: {line:?}");
    let url = line.trim().rsplit(' ').next().expect("listening line").to_owned();
    (child, url)
}
