//! HTTPS for the fake backend and for test servers (webhook receivers): an
//! axum `Listener` that accepts TCP connections and completes each TLS
//! handshake in its own task, so one client that never finishes its
//! handshake (or fails it, like batchd refusing an untrusted certificate)
//! does not stop the others from being served.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A handshake that takes longer than this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A server identity from PEM: the certificate chain (leaf first) and its key.
pub fn server_config_from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> std::io::Result<Arc<rustls::ServerConfig>> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{what}: {e}"))
    };
    let certs = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid("private key", &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid("certificate and key", &e))?;
    Ok(Arc::new(config))
}

/// `server_config_from_pem` on the contents of two PEM files.
pub fn server_config_from_files(cert_chain: &Path, key: &Path) -> std::io::Result<Arc<rustls::ServerConfig>> {
    server_config_from_pem(&std::fs::read(cert_chain)?, &std::fs::read(key)?)
}

/// Serves TLS on a bound TCP listener: pass it to `axum::serve`.
pub struct TlsListener {
    addr: SocketAddr,
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let addr = tcp.local_addr()?;
        let (done, accepted) = mpsc::channel(64);
        tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), done));
        Ok(TlsListener { addr, accepted })
    }
}

async fn accept_loop(tcp: TcpListener, acceptor: TlsAcceptor, done: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>) {
    loop {
        let (stream, peer) = tokio::select! {
            // The server was dropped: stop listening.
            _ = done.closed() => return,
            accepted = tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: wait, as axum does.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (acceptor, done) = (acceptor.clone(), done.clone());
        tokio::spawn(async move {
            if let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                let _ = done.send((tls, peer)).await;
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept loop only ends once this receiver is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
