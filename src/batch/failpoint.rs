//! Failpoints for crash tests: `BATCHD_FAILPOINT=name` (or `name=arg`) makes
//! the named point fire. Honoured only in debug builds, so a release binary
//! can never be made to abort or panic through its environment.

/// The argument of failpoint `name` if it is set (`""` when given without one).
pub fn arg(name: &str) -> Option<String> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let value = std::env::var("BATCHD_FAILPOINT").ok()?;
    let (point, arg) = value.split_once('=').unwrap_or((value.as_str(), ""));
    (point == name).then(|| arg.to_owned())
}

/// Aborts the process (like SIGKILL: no cleanup, nothing flushed) if failpoint
/// `name` is set.
pub fn abort_if_set(name: &str) {
    if arg(name).is_some() {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
