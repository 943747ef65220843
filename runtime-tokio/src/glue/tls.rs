//! TLS on both sides, with rustls (on ring) over `futures-io`, so that every runtime shares it:
//!
//! - the relay's listener ([`ServerTls`]): a certificate and key from PEM files, read again
//!   when either file changes, so that a renewed certificate needs no restart;
//! - the app-server SDK's connections to an `https` endpoint ([`client_config`]): the
//!   platform's roots, plus any private CA the operator names.
//!
//! A plain HTTP request that reaches a TLS listener is answered in plain HTTP (400, saying to
//! use `https://`), as nginx does, rather than with a TLS alert no HTTP client can read.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_io::{AsyncRead, AsyncWrite};
use futures_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use futures_util::{AsyncReadExt, AsyncWriteExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::glue::Runtime;

/// The rustls this TLS is built on, for its types ([`ClientConfig`] in particular).
pub use futures_rustls::rustls;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The relay's TLS: its certificate, read again from its files when they change (see
/// [`watch`](Self::watch)). Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    files: Arc<CertFiles>,
    config: Arc<ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.files.cert)
            .field("key", &self.files.key)
            .finish_non_exhaustive()
    }
}

/// The certificate files, and the pair read from them last.
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// What the files looked like when last read (loaded or not).
    seen: Mutex<Option<Stamp>>,
}

/// Modification time and length of both files: a change in either is a new pair to read.
type Stamp = [(Option<SystemTime>, u64); 2];

fn stamp(cert: &Path, key: &Path) -> Option<Stamp> {
    let one = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    Some([one(cert)?, one(key)?])
}

impl std::fmt::Debug for CertFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertFiles").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertFiles {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(read_lock(&self.current).clone())
    }
}

fn read_lock<T: Clone>(lock: &RwLock<T>) -> T {
    match lock.read() {
        Ok(v) => v.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// A certificate chain and its private key, from PEM files; an error says which file and why.
fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let in_file = |path: &Path, e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| in_file(cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| in_file(cert, &e))?;
    if chain.is_empty() {
        return Err(in_file(cert, &"no PEM certificate in it"));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| in_file(key, &e))?;
    let signing = provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| in_file(key, &e))?;
    let pair = CertifiedKey::new(chain, signing);
    pair.keys_match().map_err(|e| {
        format!(
            "{} is not the key of {}: {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(pair)
}

impl ServerTls {
    /// TLS with the certificate chain in `cert` (PEM, the server's certificate first) and the
    /// private key in `key` (PEM: PKCS#8, PKCS#1 or SEC1).
    ///
    /// # Errors
    /// When a file cannot be read or parsed, or the key is not the certificate's.
    pub fn load(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Self, String> {
        let (cert, key) = (cert.into(), key.into());
        let seen = stamp(&cert, &key);
        let pair = load_pair(&cert, &key)?;
        let files = Arc::new(CertFiles {
            cert,
            key,
            current: RwLock::new(Arc::new(pair)),
            seen: Mutex::new(seen),
        });
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(files.clone());
        // WebSockets ride HTTP/1.1: offering h2 would break them.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            files,
            config: Arc::new(config),
        })
    }

    /// Reads the files again if either changed since they were last read. `Ok(true)`: the new
    /// pair serves from the next handshake on. A pair that does not load (a file half
    /// written, a key that is not the certificate's) leaves the old one serving, and is tried
    /// again when a file changes again.
    ///
    /// # Errors
    /// Why the changed files could not be used.
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let files = &self.files;
        let now = stamp(&files.cert, &files.key);
        {
            let mut seen = files.seen.lock().unwrap_or_else(|p| p.into_inner());
            if now.is_none() || *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let pair = load_pair(&files.cert, &files.key)?;
        *files.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pair);
        Ok(true)
    }

    /// Checks the files every second, for as long as this TLS (or a clone of it) is in use,
    /// and logs each reload and each failed one.
    pub fn watch<R: Runtime>(&self, runtime: &R) {
        let weak: Weak<CertFiles> = Arc::downgrade(&self.files);
        let config = self.config.clone();
        let task_runtime = runtime.clone();
        runtime.spawn(async move {
            loop {
                task_runtime
                    .sleep_until(task_runtime.now() + Duration::from_secs(1))
                    .await;
                let Some(files) = weak.upgrade() else { return };
                let tls = Self {
                    files,
                    config: config.clone(),
                };
                match tls.reload_if_changed() {
                    Ok(true) => {
                        tracing::info!(cert = %tls.files.cert.display(), "TLS certificate reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(
                        "TLS certificate not reloaded (the old one still serves): {e}"
                    ),
                }
            }
        });
    }
}

/// What came of a TLS handshake on an accepted socket.
pub(crate) enum Accepted<S> {
    /// A TLS session.
    Tls(Box<futures_rustls::server::TlsStream<Rewound<S>>>),
    /// The peer spoke plain HTTP; it was told to use TLS.
    Plain,
    /// The peer went, or its handshake failed.
    Failed(io::Error),
}

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// What a plain HTTP request on the TLS listener is told.
const USE_TLS: &str = "This port speaks TLS: connect with https:// or wss://, not http://.\n";

/// Takes a TLS handshake on `stream`. A peer that speaks plain HTTP instead is answered in
/// plain HTTP and closed. The caller bounds the time it takes.
pub(crate) async fn accept<S>(tls: &ServerTls, mut stream: S) -> Accepted<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut first = [0u8; 1];
    match stream.read(&mut first).await {
        Ok(1) => {}
        Ok(_) => return Accepted::Failed(io::ErrorKind::UnexpectedEof.into()),
        Err(e) => return Accepted::Failed(e),
    }
    if first[0] != TLS_HANDSHAKE {
        refuse_plain(stream).await;
        return Accepted::Plain;
    }
    let acceptor = futures_rustls::TlsAcceptor::from(tls.config.clone());
    let rewound = Rewound {
        first: Some(first[0]),
        inner: stream,
    };
    match acceptor.accept(rewound).await {
        Ok(session) => Accepted::Tls(Box::new(session)),
        Err(e) => Accepted::Failed(e),
    }
}

/// Writes the plain answer, then reads (and drops) what the peer sent, up to a bound, until it
/// closes: closing with its request unread would reset the connection before it read the
/// answer.
async fn refuse_plain<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{USE_TLS}",
        USE_TLS.len()
    );
    if stream.write_all(answer.as_bytes()).await.is_err() || stream.close().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    let mut left = 64 * 1024;
    while left > 0 {
        match stream.read(&mut sink).await {
            Ok(0) | Err(_) => return,
            Ok(n) => left -= n.min(left),
        }
    }
}

/// A stream with its first byte, already read, put back in front.
pub(crate) struct Rewound<S> {
    first: Option<u8>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if let (Some(byte), Some(slot)) = (self.first, buf.first_mut()) {
            *slot = byte;
            self.first = None;
            return Poll::Ready(Ok(1));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // rustls writes its sealed records so; one, or a few small ones, go in one `send`.
        super::gather::poll_write_parts(&mut self.inner, bufs, cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// The TLS settings of an app server's connections to `https` relays: the platform's roots,
/// and the certificates in `ca_file` (PEM) besides, for a private CA.
///
/// # Errors
/// When `ca_file` cannot be read or holds no certificate.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let in_file = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| in_file(&e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| in_file(&e))?;
        if certs.is_empty() {
            return Err(in_file(&"no PEM certificate in it"));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| in_file(&e))?;
        }
    } else if added == 0 {
        tracing::warn!("no trusted root certificates found on this system: https relays will be refused (give a CA file)");
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client's connection: plain, or TLS (to an `https` endpoint).
#[derive(Debug)]
pub enum ClientStream<S> {
    /// Plain TCP.
    Plain(S),
    /// A TLS session over it.
    Tls(Box<futures_rustls::client::TlsStream<S>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> ClientStream<S> {
    /// A TLS session to `host` (a name or an IP address) over `stream`, verified against
    /// `config`'s roots.
    ///
    /// # Errors
    /// When the handshake fails, or the certificate is not trusted or not `host`'s.
    pub async fn tls(config: &Arc<ClientConfig>, host: &str, stream: S) -> io::Result<Self> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let session = futures_rustls::TlsConnector::from(config.clone())
            .connect(name, stream)
            .await?;
        Ok(Self::Tls(Box::new(session)))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ClientStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_close(cx),
            Self::Tls(s) => Pin::new(s).poll_close(cx),
        }
    }
}
