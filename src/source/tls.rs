//! TLS for both kinds of connection: libpq's `sslmode` policy as a rustls configuration, the
//! SSLRequest handshake of the replication connection, and the tokio-postgres adaptor that
//! gives ordinary SQL connections the same policy.
//!
//! TLS follows libpq's `sslmode` table: `prefer` and `require` encrypt without checking the
//! certificate (but `require` with an `sslrootcert` checks the chain, as libpq does),
//! `verify-ca` checks the chain, `verify-full` the chain and the host name. A certificate that
//! is byte-for-byte one of the `sslrootcert` certificates is trusted as is: self-signed server
//! certificates are usually CA certificates, which webpki refuses as end-entity certificates.
//!
//! **SSLRequest.** We send it, read exactly one byte (`S` or `N`) and start TLS right away.
//! Nothing the server sent before the handshake may be trusted (CVE-2021-23222), which is
//! why the byte is read unbuffered.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::connection::{ConnectError, Socket};
use super::conninfo::{ConnInfo, SslMode};
use super::frame::unexpected;

/// Plain TCP, TLS over TCP, or a Unix-domain socket.
pub(super) enum Stream {
    /// No encryption (`sslmode=disable`, or `prefer` and the server said no).
    Plain(TcpStream),
    /// A Unix-domain socket: local, never encrypted (as in libpq, whatever the sslmode).
    Unix(UnixStream),
    /// TLS, with the certificate checked as the sslmode says.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// SSLRequest and the handshake, as the sslmode says. Returns the stream and, for TLS, the
/// channel binding data of the server certificate.
pub(super) async fn negotiate_tls(
    socket: Socket,
    info: &ConnInfo,
) -> Result<(Stream, Option<Vec<u8>>), ConnectError> {
    let mut tcp = match socket {
        Socket::Tcp(tcp) => tcp,
        Socket::Unix(unix) => return Ok((Stream::Unix(unix), None)),
    };
    let Some(config) = tls_config(info)? else {
        return Ok((Stream::Plain(tcp), None));
    };
    let mut request = BytesMut::with_capacity(8);
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await?;
    // Exactly one byte, unbuffered: see the module docs.
    match tcp.read_u8().await {
        Ok(b'S') => {}
        Ok(b'N') if info.sslmode == SslMode::Prefer => return Ok((Stream::Plain(tcp), None)),
        Ok(b'N') => return Err(ConnectError::TlsUnsupported(info.sslmode)),
        Ok(b'E') => {
            return Err(ConnectError::Protocol(
                "the server rejected the SSLRequest (a server older than 7.0?)".into(),
            ));
        }
        Ok(other) => return Err(unexpected(other, "in reply to SSLRequest")),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(ConnectError::Closed),
        Err(e) => return Err(e.into()),
    }
    let name = server_name(info)?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(tls_error)?;
    let end_point = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| tls_server_end_point(c.as_ref()));
    Ok((Stream::Tls(Box::new(tls)), end_point))
}

/// A rustls failure (bad certificate, ...) is permanent; a dropped socket is not.
fn tls_error(e: io::Error) -> ConnectError {
    let is_rustls = e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>());
    if is_rustls {
        ConnectError::Tls(format!("handshake failed: {e}"))
    } else {
        ConnectError::Io(e)
    }
}

/// The rustls configuration `info.sslmode` asks for; `None` for `disable` and for Unix-domain
/// sockets (libpq never uses TLS on them).
pub(crate) fn tls_config(info: &ConnInfo) -> Result<Option<Arc<ClientConfig>>, ConnectError> {
    if info.socket_path().is_some() {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (roots, check_name) = match (info.sslmode, &info.sslrootcert) {
        (SslMode::Disable, _) => return Ok(None),
        (SslMode::Prefer, _) | (SslMode::Require, None) => (None, false),
        (SslMode::Require | SslMode::VerifyCa, Some(path)) => (Some(load_roots(path)?), false),
        (SslMode::VerifyCa, None) => (Some(webpki_roots()), false),
        (SslMode::VerifyFull, Some(path)) => (Some(load_roots(path)?), true),
        (SslMode::VerifyFull, None) => (Some(webpki_roots()), true),
    };
    let verifier = PgVerifier {
        roots,
        check_name,
        provider: provider.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::Tls(format!("TLS set-up: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // PG 17+ checks ALPN when the client sends it; older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// The server name rustls gets: checked under verify-full, only SNI otherwise.
pub(crate) fn server_name(info: &ConnInfo) -> Result<ServerName<'static>, ConnectError> {
    match ServerName::try_from(info.host.clone()) {
        Ok(name) => Ok(name),
        Err(_) if info.sslmode != SslMode::VerifyFull => Ok(ServerName::DnsName(
            rustls::pki_types::DnsName::try_from("localhost")
                .map_err(|e| ConnectError::Tls(format!("TLS server name: {e}")))?,
        )),
        Err(e) => Err(ConnectError::Tls(format!(
            "host `{}` cannot be checked against a certificate: {e}",
            info.host
        ))),
    }
}

struct Roots {
    store: RootCertStore,
    /// The trusted certificates themselves, for self-signed servers.
    pinned: Vec<CertificateDer<'static>>,
}

fn webpki_roots() -> Roots {
    Roots {
        store: RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
        pinned: Vec::new(),
    }
}

fn load_roots(path: &std::path::Path) -> Result<Roots, ConnectError> {
    if path.as_os_str() == "system" {
        return Ok(webpki_roots());
    }
    let fail = |reason: String| ConnectError::RootCert {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(fail("contains no PEM certificates".into()));
    }
    let mut store = RootCertStore::empty();
    for cert in &certs {
        store
            .add(cert.clone())
            .map_err(|e| fail(format!("unusable certificate: {e}")))?;
    }
    Ok(Roots {
        store,
        pinned: certs,
    })
}

/// libpq's certificate policy on top of webpki.
struct PgVerifier {
    /// `None`: accept any certificate (prefer / require): encryption without authentication.
    roots: Option<Roots>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PgVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgVerifier")
            .field("verify_chain", &self.roots.is_some())
            .field("check_name", &self.check_name)
            .finish()
    }
}

impl ServerCertVerifier for PgVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        if !roots
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                &roots.store,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        if self.check_name {
            rustls::client::verify_server_name(&cert, server_name)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The `tls-server-end-point` channel binding data (RFC 5929): a hash of the server
/// certificate with its signature's hash, SHA-256 for MD5/SHA-1. `None` if the algorithm is
/// one we cannot map (the login then falls back to plain SCRAM).
pub(crate) fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    let (_, cert, _) = der_tlv(cert_der, 0x30)?;
    let (_, _tbs, rest) = der_tlv(cert, 0x30)?;
    let (_, alg, _) = der_tlv(rest, 0x30)?;
    let (_, oid, _) = der_tlv(alg, 0x06)?;
    const RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x01];
    let bits = match oid {
        [p @ .., 4 | 5 | 11] if p == RSA => 256,
        [p @ .., 12] if p == RSA => 384,
        [p @ .., 13] if p == RSA => 512,
        o if o == ECDSA_SHA1 => 256,
        [p @ .., 2] if p == ECDSA_SHA2 => 256,
        [p @ .., 3] if p == ECDSA_SHA2 => 384,
        [p @ .., 4] if p == ECDSA_SHA2 => 512,
        _ => return None,
    };
    Some(match bits {
        256 => sha2::Sha256::digest(cert_der).to_vec(),
        384 => sha2::Sha384::digest(cert_der).to_vec(),
        _ => sha2::Sha512::digest(cert_der).to_vec(),
    })
}

/// One DER element with the expected tag: (tag, contents, the bytes after it).
fn der_tlv(buf: &[u8], tag: u8) -> Option<(u8, &[u8], &[u8])> {
    let (&t, rest) = buf.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((t, &rest[..len], &rest[len..]))
}

/// tokio-postgres's TLS hook, backed by our rustls configuration.
#[derive(Clone)]
pub(super) struct MakeRustls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

impl MakeRustls {
    /// The hook for `config`, connecting to `server_name`.
    pub(super) fn new(config: Arc<ClientConfig>, server_name: ServerName<'static>) -> MakeRustls {
        MakeRustls {
            config,
            server_name,
        }
    }
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = MakeRustls;
    type Error = io::Error;

    fn make_tls_connect(&mut self, _domain: &str) -> Result<MakeRustls, io::Error> {
        Ok(self.clone())
    }
}

impl<S> tokio_postgres::tls::TlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.server_name, stream)
                .await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A rustls stream that reports its channel binding to tokio-postgres.
pub(super) struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        let cert = self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first());
        match cert.and_then(|c| tls_server_end_point(c.as_ref())) {
            Some(hash) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(hash),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_binding_hash_follows_the_signature_algorithm() {
        // A minimal DER shape: SEQ { SEQ {} , SEQ { OID sha384WithRSA } , BITSTRING }.
        let cert = [
            0x30, 0x13, 0x30, 0x00, 0x30, 0x0B, 0x06, 0x09, 0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D,
            0x01, 0x01, 0x0C, 0x03, 0x02, 0x00, 0x00,
        ];
        assert_eq!(tls_server_end_point(&cert).map(|h| h.len()), Some(48));
        assert_eq!(tls_server_end_point(&cert[..10]), None);
        assert_eq!(tls_server_end_point(&[]), None);
    }
}
