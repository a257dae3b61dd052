//! TLS for SSL_GET.
//!
//! keepalived's SSL_GET does not verify the real server's certificate unless an `SSL { ca
//! … }` block is configured (the context is "auto generated" otherwise), so neither do
//! we: any certificate chain and any name is accepted. The handshake signature is still
//! checked against the presented certificate (rustls requires that), which costs nothing
//! and proves the peer holds the key it shows. The check is about the service answering,
//! not about authenticating it; a real server is reached by its address on a network the
//! operator controls. Verifying against a CA is left for when the model grows an `SSL`
//! block.
//!
//! Crypto comes from *ring* (aws-lc-rs would need cmake and a C toolchain at build time).

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio_rustls::TlsConnector;

#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
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
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The process-wide SSL_GET connector (built once; cheap to clone).
pub fn connector() -> TlsConnector {
    static CONNECTOR: OnceLock<TlsConnector> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth();
            TlsConnector::from(Arc::new(config))
        })
        .clone()
}

/// Name for SNI: `virtualhost` when it is a DNS name, else the address (rustls sends no
/// SNI for an address).
pub fn server_name(virtualhost: Option<&str>, addr: IpAddr) -> ServerName<'static> {
    virtualhost
        .and_then(|v| ServerName::try_from(v.to_string()).ok())
        .unwrap_or(ServerName::IpAddress(addr.into()))
}
