//! Reaching a relay for the monitor's probes: TCP to the addresses our own resolver found (so
//! the DNS facts and the probes agree), SOCKS5 for overlay networks (the proxy resolves the
//! name), and TLS with the monitor's trust roots: the webpki roots plus an optional extra CA.

use crate::model::Network;
use crate::relay::transport::{Io, TransportConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The monitor's TLS trust: one verifier shared by every probe.
#[derive(Clone)]
pub(crate) struct Tls {
    provider: Arc<CryptoProvider>,
    verifier: Arc<WebPkiServerVerifier>,
    strict: Arc<ClientConfig>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Trusts the webpki roots plus every certificate in `extra_ca_pem` (PEM text).
    pub(crate) fn new(extra_ca_pem: Option<&[u8]>) -> Result<Tls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = extra_ca_pem {
            let mut added = 0usize;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("bad PEM certificate: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("unusable CA certificate: {e}"))?;
                added += 1;
            }
            if added == 0 {
                return Err("no PEM certificate found".into());
            }
        }
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("cannot build the certificate verifier: {e}"))?;
        let strict = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        Ok(Tls {
            provider,
            verifier,
            strict: Arc::new(strict),
        })
    }

    /// A client configuration that refuses certificates that do not verify, as a relay's
    /// users would.
    pub(crate) fn strict(&self) -> Arc<ClientConfig> {
        self.strict.clone()
    }

    /// A client configuration that completes the handshake whatever the certificate, and
    /// records the chain and whether it verifies: the TLS probe reports on bad certificates
    /// instead of failing on them.
    pub(crate) fn capturing(&self) -> Result<(Arc<ClientConfig>, Arc<Capture>), String> {
        let capture = Arc::new(Capture {
            inner: self.verifier.clone(),
            seen: Mutex::new(None),
        });
        let cfg = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS configuration: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(capture.clone())
            .with_no_client_auth();
        Ok((Arc::new(cfg), capture))
    }
}

/// What the capturing verifier saw: the presented chain (leaf first) and the verdict.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// Leaf first, then the intermediates, as presented.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// `Err(reason)` when the chain does not verify for the name against our roots.
    pub(crate) verdict: Result<(), String>,
}

/// A verifier that accepts every certificate but remembers the verdict of the real one.
#[derive(Debug)]
pub(crate) struct Capture {
    inner: Arc<WebPkiServerVerifier>,
    seen: Mutex<Option<Seen>>,
}

impl Capture {
    /// The chain and verdict of the last handshake, if one got that far.
    pub(crate) fn take(&self) -> Option<Seen> {
        self.seen.lock().ok().and_then(|mut s| s.take())
    }
}

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map(|_| ())
            .map_err(|e| e.to_string());
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        if let Ok(mut s) = self.seen.lock() {
            *s = Some(Seen { chain, verdict });
        }
        Ok(ServerCertVerified::assertion())
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

/// Opens a byte stream to `host:port`: through the SOCKS5 proxy for overlay networks (or
/// everything when `proxy_all`), else TCP to each of `addrs` in turn, or to the name through
/// the system resolver when `addrs` is empty.
pub(crate) async fn dial(
    host: &str,
    port: u16,
    network: Network,
    addrs: &[IpAddr],
    transport: &TransportConfig,
) -> Result<Box<dyn Io>, String> {
    let proxied = network.is_overlay() || transport.proxy_all;
    match (&transport.socks5, proxied) {
        (Some(proxy), true) => {
            let s = tokio_socks::tcp::Socks5Stream::connect(proxy.as_str(), (host, port))
                .await
                .map_err(|e| format!("socks5 {proxy}: {e}"))?;
            Ok(Box::new(s))
        }
        (None, true) if network.is_overlay() => Err(format!(
            "{} needs a SOCKS5 proxy (net.socks5)",
            network.as_str()
        )),
        _ => {
            if addrs.is_empty() {
                let s = tokio::net::TcpStream::connect((host, port))
                    .await
                    .map_err(|e| format!("tcp {host}:{port}: {e}"))?;
                let _ = s.set_nodelay(true);
                return Ok(Box::new(s));
            }
            let mut last = String::from("no address");
            for ip in addrs {
                match tokio::net::TcpStream::connect(SocketAddr::new(*ip, port)).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        return Ok(Box::new(s));
                    }
                    Err(e) => last = format!("tcp {}: {e}", SocketAddr::new(*ip, port)),
                }
            }
            Err(last)
        }
    }
}

/// Runs a TLS client handshake over `stream` for `host` (a name or an IP literal).
pub(crate) async fn tls_connect(
    stream: Box<dyn Io>,
    host: &str,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<Box<dyn Io>>, String> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("not a TLS server name {host:?}: {e}"))?;
    TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| format!("tls: {e}"))
}

/// Runs `fut` for at most `limit`, turning a timeout into an error naming `what`.
pub(crate) async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{what} timed out after {:.1}s",
            limit.as_secs_f64()
        )),
    }
}

/// Milliseconds of `d`, rounded up so that a probe that ran is never reported as 0 ms.
pub(crate) fn millis_ceil(d: Duration) -> u32 {
    let us = d.as_micros();
    u32::try_from(us.div_ceil(1000)).unwrap_or(u32::MAX).max(1)
}
