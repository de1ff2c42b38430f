//! Every outgoing HTTP client batchd builds (model servers, the model
//! manager's health and sleep calls, webhooks) starts from `builder()`, so the
//! TLS and proxy policy lives in this one place:
//!
//! - TLS is rustls on the `ring` provider. The trusted roots are the system's
//!   CA bundle **plus** the PEM bundle named by `SSL_CERT_FILE`, if set (a
//!   private CA for an internal vLLM). Note that OpenSSL and
//!   rustls-native-certs / rustls-platform-verifier *replace* the system roots
//!   with `SSL_CERT_FILE`; batchd adds it instead, so public HTTPS endpoints
//!   (webhooks) keep working next to a private CA.
//! - No proxy, ever: `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` are ignored.
//!   Managed model servers listen on loopback and must not be sent through a
//!   proxy, and a proxy would resolve webhook hosts again, defeating the SSRF
//!   pin in `webhooks::dispatcher`.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The environment variable that names extra trusted roots (PEM).
pub const EXTRA_ROOTS_ENV: &str = "SSL_CERT_FILE";

/// Where Linux distributions keep the system CA bundle (the list Go and
/// openssl-probe use), read without looking at `SSL_CERT_FILE`.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",                // Debian, Ubuntu, Gentoo, Arch
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // Fedora, RHEL, CentOS
    "/etc/pki/tls/certs/ca-bundle.crt",                  // older Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",                            // openSUSE
    "/etc/ssl/cert.pem",                                 // Alpine, macOS
];

/// The TLS settings every client shares, built once per process: reading and
/// parsing a few hundred roots for every webhook attempt would be wasted work.
struct Tls {
    config: rustls::ClientConfig,
    /// Why `SSL_CERT_FILE` could not be used (the server refuses to start).
    extra_roots_error: Option<String>,
}

static TLS: LazyLock<Tls> = LazyLock::new(load_tls);

/// A client builder with batchd's TLS roots and no proxy. Callers add their
/// timeouts (and the webhook client its address pin and redirect policy).
#[allow(clippy::disallowed_methods)] // the one place that may start from reqwest's own builder
pub fn builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(TLS.config.clone())
}

/// A client with batchd's TLS roots, no proxy and no timeouts: what tests,
/// benchmarks and the CLI use to talk to a batchd. `reqwest::Client::new()`
/// would panic unless some code installed a default rustls provider first
/// (clippy.toml forbids it for that reason).
pub fn client() -> reqwest::Client {
    builder().build().expect("a client with batchd's TLS settings builds")
}

/// Fails when `SSL_CERT_FILE` is set but names no readable PEM bundle with
/// at least one certificate: an operator who set it relies on it, and every
/// request to the private CA's servers would fail later with a vaguer error.
pub fn check_roots() -> anyhow::Result<()> {
    match &TLS.extra_roots_error {
        Some(why) => anyhow::bail!("{why}"),
        None => Ok(()),
    }
}

/// Makes ring the process's default rustls provider. reqwest is built with
/// `rustls-no-provider` (aws-lc needs cmake), so a `reqwest::Client` built
/// *without* `builder()` panics unless a default is installed; batchd's own
/// clients never depend on it, but tests and benchmarks that build plain
/// clients call this (it is idempotent, and a provider installed earlier
/// stays).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn load_tls() -> Tls {
    let mut roots = RootCertStore::empty();
    match SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file()) {
        Some(path) => match read_pem_certs(path) {
            Ok(certs) => {
                let (added, ignored) = roots.add_parsable_certificates(certs);
                tracing::debug!(path = %path.display(), added, ignored, "loaded the system CA bundle");
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot read the system CA bundle"),
        },
        None => tracing::warn!("no system CA bundle found; only SSL_CERT_FILE roots are trusted"),
    }
    let extra_roots_error = std::env::var_os(EXTRA_ROOTS_ENV).and_then(|path| {
        let path = Path::new(&path);
        let result = read_pem_certs(path).and_then(|certs| match roots.add_parsable_certificates(certs) {
            (0, _) => Err("it holds no usable PEM certificate".to_owned()),
            (added, _) => Ok(added),
        });
        match result {
            Ok(added) => {
                tracing::info!(path = %path.display(), added, "trusting extra CA certificates from SSL_CERT_FILE");
                None
            }
            Err(e) => Some(format!("{EXTRA_ROOTS_ENV}={}: {e}", path.display())),
        }
    });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Tls {
        config,
        extra_roots_error,
    }
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    // Other PEM blocks (keys, CRLs) and text between blocks are skipped; a
    // broken block is an error rather than a silently shorter trust list.
    CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("it is not a valid PEM bundle: {e}"))
}
