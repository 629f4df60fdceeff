//! TLS for tokio-postgres on rustls, with libpq's `sslmode` semantics.
//!
//! tokio-postgres only knows disable/prefer/require and leaves certificate
//! checking to the TLS connector, so this module decides *what* to verify the
//! way libpq does: `require` verifies nothing unless a root certificate file
//! exists (then it acts as `verify-ca`), `verify-ca` checks the chain but not
//! the name, `verify-full` checks both. The ring provider is passed explicitly
//! so the library never depends on a process-wide default being installed.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

use crate::config::{EndpointConfig, SslMode};

/// How much of the server certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Encrypt only (libpq `require`/`prefer`/`allow` without a root certificate).
    None,
    /// Chain to a trusted root, any host name (`verify-ca`).
    Chain,
    /// Chain and host name (`verify-full`).
    Full,
}

/// Why a TLS client configuration could not be built (missing or unreadable
/// root certificate, bad client key, ...). The message is meant for a DBA.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsSetupError(pub String);

/// Where trusted roots come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    None,
    File(PathBuf),
    System,
}

/// libpq's per-user directory for default certificate files.
fn user_pg_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(|h| PathBuf::from(h).join(".postgresql"))
}

/// Decide what to verify and against which roots, exactly as libpq does.
fn resolve_verification(ep: &EndpointConfig) -> Result<(Verification, Roots), TlsSetupError> {
    let mode = ep.sslmode;
    let explicit = ep.sslrootcert.as_deref().filter(|s| !s.is_empty());
    if explicit == Some("system") {
        // libpq refuses to pair the system store with a mode that would not
        // check the host name: any public CA could then vouch for a MITM.
        if mode != SslMode::VerifyFull && mode != SslMode::Disable {
            return Err(TlsSetupError(format!(
                "weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\")",
                mode.as_str()
            )));
        }
        return Ok((Verification::Full, Roots::System));
    }
    let file = match explicit {
        Some(p) => Some(PathBuf::from(p)),
        None => user_pg_dir().map(|d| d.join("root.crt")),
    };
    let exists = file.as_deref().is_some_and(Path::exists);
    let strict = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
    if strict && !exists {
        let shown = file
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "~/.postgresql/root.crt".into());
        return Err(TlsSetupError(format!(
            "root certificate file \"{shown}\" does not exist; either provide the file, \
             use the system's trusted roots with sslrootcert=system, \
             or change sslmode to disable server certificate verification"
        )));
    }
    match (mode, file) {
        (SslMode::VerifyFull, Some(f)) => Ok((Verification::Full, Roots::File(f))),
        // libpq: once a root certificate file is present, every TLS mode
        // verifies the chain against it.
        (_, Some(f)) if exists => Ok((Verification::Chain, Roots::File(f))),
        _ => Ok((Verification::None, Roots::None)),
    }
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let bytes = std::fs::read(path)
        .map_err(|e| TlsSetupError(format!("could not read {what} \"{}\": {e}", path.display())))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            TlsSetupError(format!(
                "could not parse {what} \"{}\": {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(TlsSetupError(format!(
            "{what} \"{}\" contains no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn root_store(roots: &Roots) -> Result<RootCertStore, TlsSetupError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::None => {}
        Roots::File(path) => {
            let certs = read_certs(path, "root certificate file")?;
            let (added, _ignored) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsSetupError(format!(
                    "root certificate file \"{}\" holds no usable certificate",
                    path.display()
                )));
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(TlsSetupError(format!(
                    "sslrootcert=system: no trusted certificates found in the system store{why}"
                )));
            }
        }
    }
    Ok(store)
}

/// The client certificate and key, from `sslcert`/`sslkey` or libpq's default
/// files. An explicitly named certificate that is missing is an error (libpq
/// silently ignores it, which turns a typo into a puzzling auth failure).
fn client_identity(
    ep: &EndpointConfig,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, TlsSetupError> {
    let dir = user_pg_dir();
    let cert = match &ep.sslcert {
        Some(p) if !p.as_os_str().is_empty() => {
            if !p.exists() {
                return Err(TlsSetupError(format!(
                    "client certificate file \"{}\" does not exist",
                    p.display()
                )));
            }
            p.clone()
        }
        Some(_) => return Ok(None),
        None => match dir.as_ref().map(|d| d.join("postgresql.crt")) {
            Some(p) if p.exists() => p,
            _ => return Ok(None),
        },
    };
    let key = match &ep.sslkey {
        Some(p) if !p.as_os_str().is_empty() => p.clone(),
        _ => match dir.as_ref().map(|d| d.join("postgresql.key")) {
            Some(p) => p,
            None => {
                return Err(TlsSetupError(format!(
                    "client certificate \"{}\" given but no sslkey",
                    cert.display()
                )))
            }
        },
    };
    let certs = read_certs(&cert, "client certificate file")?;
    let key_bytes = std::fs::read(&key).map_err(|e| {
        TlsSetupError(format!(
            "could not read private key file \"{}\": {e}",
            key.display()
        ))
    })?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
        TlsSetupError(format!(
            "could not parse private key file \"{}\" (unencrypted PEM expected): {e}",
            key.display()
        ))
    })?;
    Ok(Some((certs, key_der)))
}

/// Build the rustls client configuration for an endpoint. Only called when
/// TLS may be used, so `sslmode=disable` never trips over certificate files.
pub fn client_config(ep: &EndpointConfig) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = Arc::new(ring::default_provider());
    let (verification, roots) = resolve_verification(ep)?;
    let verifier: Arc<dyn ServerCertVerifier> = match verification {
        Verification::None => Arc::new(AcceptAnyCert {
            provider: provider.clone(),
        }),
        Verification::Chain | Verification::Full => {
            let store = Arc::new(root_store(&roots)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(store, provider.clone())
                .build()
                .map_err(|e| TlsSetupError(format!("cannot build certificate verifier: {e}")))?;
            if verification == Verification::Full {
                webpki
            } else {
                Arc::new(IgnoreHostName { inner: webpki })
            }
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError(format!("TLS setup: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_identity(ep)? {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| TlsSetupError(format!("client certificate/key rejected: {e}")))?,
        None => builder.with_no_client_auth(),
    };
    // What libpq 17 sends; servers before 17 ignore it, 17+ with direct TLS require it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(config))
}

/// What a given endpoint will verify; exposed so callers can report it.
pub fn verification_for(ep: &EndpointConfig) -> Result<Verification, TlsSetupError> {
    if ep.sslmode == SslMode::Disable {
        return Ok(Verification::None);
    }
    resolve_verification(ep).map(|(v, _)| v)
}

/// `require` without a root certificate: the session is encrypted but the
/// peer is not authenticated. Handshake signatures are still checked so the
/// session key really belongs to whoever sent the certificate.
#[derive(Debug)]
struct AcceptAnyCert {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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

/// `verify-ca`: full webpki verification, except that a name mismatch is
/// forgiven. webpki checks the chain before the name, so a name error means
/// the chain was already accepted.
#[derive(Debug)]
struct IgnoreHostName {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for IgnoreHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The connector handed to `tokio_postgres::Config::connect`.
#[derive(Clone)]
pub struct MakeRustlsConnect {
    config: Arc<ClientConfig>,
    started: Option<Arc<AtomicBool>>,
}

impl fmt::Debug for MakeRustlsConnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MakeRustlsConnect")
    }
}

impl MakeRustlsConnect {
    pub fn new(config: Arc<ClientConfig>) -> Self {
        MakeRustlsConnect {
            config,
            started: None,
        }
    }

    /// A copy that raises `flag` when a handshake begins, i.e. when the
    /// server accepted the SSLRequest. libpq's `prefer` retries without TLS
    /// only when TLS was actually tried, and tokio-postgres does not say.
    pub fn observed(&self, flag: Arc<AtomicBool>) -> Self {
        MakeRustlsConnect {
            config: self.config.clone(),
            started: Some(flag),
        }
    }

    /// The connector for an endpoint, or why its TLS settings are unusable.
    pub fn for_endpoint(ep: &EndpointConfig) -> Result<Self, TlsSetupError> {
        client_config(ep).map(Self::new)
    }
}

impl<S> MakeTlsConnect<S> for MakeRustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        // An IP address becomes ServerName::IpAddress: rustls then sends no
        // SNI (RFC 6066 forbids literal addresses) and matches IP SANs.
        let name = ServerName::try_from(domain.to_string()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid host name for TLS: \"{domain}\""),
            )
        })?;
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
            started: self.started.clone(),
        })
    }
}

/// One pending handshake.
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    started: Option<Arc<AtomicBool>>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        if let Some(flag) = &self.started {
            flag.store(true, Ordering::Relaxed);
        }
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// An established TLS session; also supplies SCRAM channel binding data.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> RustlsStream<S> {
    /// The negotiated protocol version, e.g. for logging.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.0.get_ref().1.protocol_version()
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

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, conn) = self.0.get_ref();
        let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) else {
            return ChannelBinding::none();
        };
        match end_point_hash(cert.as_ref()) {
            Some(h) => ChannelBinding::tls_server_end_point(h),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929 `tls-server-end-point`: the certificate hashed with its signature
/// hash (MD5 and SHA-1 upgraded to SHA-256). For algorithms the RFC does not
/// cover (Ed25519, RSA-PSS with parameters) we offer no binding, and SCRAM
/// falls back to the unbound mechanism instead of failing authentication.
pub(crate) fn end_point_hash(der: &[u8]) -> Option<Vec<u8>> {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    let oid = signature_algorithm_oid(der)?;
    if oid == ECDSA_SHA1 {
        return Some(sha2::Sha256::digest(der).to_vec());
    }
    let (prefix, last) = oid.split_at(oid.len().checked_sub(1)?);
    let bits = match (prefix, last[0]) {
        (RSA, 0x04 | 0x05 | 0x0b) | (ECDSA, 0x02) => 256,
        (RSA, 0x0c) | (ECDSA, 0x03) => 384,
        (RSA, 0x0d) | (ECDSA, 0x04) => 512,
        _ => return None,
    };
    Some(match bits {
        256 => sha2::Sha256::digest(der).to_vec(),
        384 => sha2::Sha384::digest(der).to_vec(),
        _ => sha2::Sha512::digest(der).to_vec(),
    })
}

/// The OID of `Certificate.signatureAlgorithm`, by walking just enough DER.
fn signature_algorithm_oid(der: &[u8]) -> Option<&[u8]> {
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            first as usize
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let mut len = 0usize;
            for &b in &rest[..n] {
                len = (len << 8) | b as usize;
            }
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }
    let (tag, cert, _) = tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _tbs, rest) = tlv(cert)?;
    let (tag, alg, _) = tlv(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = tlv(alg)?;
    (tag == 0x06).then_some(oid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ep(mode: SslMode, root: Option<&str>) -> EndpointConfig {
        EndpointConfig {
            hosts: vec![crate::config::Host::Tcp("localhost".into())],
            ports: vec![5432],
            user: "u".into(),
            password: None,
            dbname: "d".into(),
            sslmode: mode,
            sslrootcert: root.map(str::to_string),
            sslcert: None,
            sslkey: None,
            application_name: None,
            connect_timeout: Duration::from_secs(10),
            options: None,
        }
    }

    #[test]
    fn strict_modes_need_a_root_file() {
        let missing = "/nonexistent/pg_dbmigrator/root.crt";
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let err = client_config(&ep(mode, Some(missing)))
                .unwrap_err()
                .to_string();
            assert!(err.contains("does not exist"), "{err}");
            assert!(err.contains(missing), "{err}");
            assert!(err.contains("change sslmode"), "{err}");
        }
        // require with a missing explicit file just encrypts, like libpq.
        assert_eq!(
            verification_for(&ep(SslMode::Require, Some(missing))).unwrap(),
            Verification::None
        );
    }

    #[test]
    fn system_roots_demand_verify_full() {
        let err = client_config(&ep(SslMode::Require, Some("system")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("weak sslmode \"require\""), "{err}");
        assert_eq!(
            verification_for(&ep(SslMode::VerifyFull, Some("system"))).unwrap(),
            Verification::Full
        );
    }

    #[test]
    fn existing_root_file_upgrades_require() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("root.crt");
        std::fs::write(&f, "x").unwrap();
        let f = f.to_str().unwrap();
        assert_eq!(
            verification_for(&ep(SslMode::Require, Some(f))).unwrap(),
            Verification::Chain
        );
        assert_eq!(
            verification_for(&ep(SslMode::VerifyCa, Some(f))).unwrap(),
            Verification::Chain
        );
        assert_eq!(
            verification_for(&ep(SslMode::VerifyFull, Some(f))).unwrap(),
            Verification::Full
        );
        // A file that is not PEM is reported, not silently ignored.
        let err = client_config(&ep(SslMode::VerifyCa, Some(f)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn channel_binding_hash_of_a_real_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::testkit::make_test_ca(dir.path(), "ca").unwrap();
        let certs = read_certs(&ca.cert, "test certificate").unwrap();
        let der = certs[0].as_ref();
        // ecdsa-with-SHA256 -> SHA-256 of the whole certificate.
        assert_eq!(
            end_point_hash(der),
            Some(sha2::Sha256::digest(der).to_vec())
        );
    }

    #[test]
    fn der_walk_finds_signature_oid() {
        // Minimal fake: SEQUENCE { SEQUENCE{} , SEQUENCE { OID sha256WithRSA } }
        let oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
        let mut alg = vec![0x06, oid.len() as u8];
        alg.extend_from_slice(&oid);
        let mut inner = vec![0x30, 0x00, 0x30, alg.len() as u8];
        inner.extend_from_slice(&alg);
        let mut der = vec![0x30, inner.len() as u8];
        der.extend_from_slice(&inner);
        assert_eq!(signature_algorithm_oid(&der), Some(&oid[..]));
        assert_eq!(end_point_hash(&der).map(|h| h.len()), Some(32));
        assert_eq!(end_point_hash(&[0x30, 0x00]), None);
    }
}
