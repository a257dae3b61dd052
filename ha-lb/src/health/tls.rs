//! TLS for SSL_GET.
//!
//! keepalived's SSL_GET does not verify the real server's certificate unless an `SSL { ca
//! … }` block is configured (the context is "auto generated" otherwise), so neither do
//! we: any certificate chain and any name is accepted. The check is about the service
//! answering, not about authenticating it; a real server is reached by its address on a
//! network the operator controls. Verifying against a CA is left for when the model grows
//! an `SSL` block.
//!
//! What rustls still does, and what it costs against keepalived's OpenSSL:
//! - The handshake signature is checked against the presented certificate's key (rustls
//!   requires a verdict; with any certificate accepted it proves little). It is not free:
//!   the keys and algorithms are webpki's, which refuses RSA keys under 2048 bits (OpenSSL
//!   at its default security level takes 1024), so such a server fails with "invalid peer
//!   certificate: BadSignature".
//! - Only TLS 1.3, and TLS 1.2 with ECDHE key exchange and an AEAD suite (AES-GCM or
//!   ChaCha20-Poly1305), are spoken: a server that offers only TLS ≤ 1.1, CBC suites, or
//!   RSA / DHE key exchange ends the handshake with a `HandshakeFailure` or
//!   `ProtocolVersion` alert, where keepalived would connect.
//!
//! [`handshake_failed`] says which of these a failure is, for the check's detail.
//!
//! Crypto comes from *ring* (aws-lc-rs would need cmake and a C toolchain at build time).

use std::io;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{AlertDescription, ClientConfig, DigitallySignedStruct, SignatureScheme};
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

/// What SSL_GET cannot talk, said where a handshake fails for it.
pub const SUITES_HINT: &str =
    "SSL_GET needs TLS 1.3, or TLS 1.2 with an ECDHE AES-GCM / ChaCha20 suite";
/// Why a server's own certificate can fail although certificates are not verified.
pub const KEY_HINT: &str =
    "SSL_GET checks the handshake signature with the certificate's key: RSA keys need at least 2048 bits";

/// The check's detail for a failed handshake: rustls's error and, when it is one that
/// keepalived's OpenSSL would not have had (no common version or suite, a key webpki
/// refuses), what SSL_GET needs.
pub fn handshake_failed(e: &io::Error) -> String {
    let hint = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(
            rustls::Error::AlertReceived(
                AlertDescription::HandshakeFailure
                | AlertDescription::ProtocolVersion
                | AlertDescription::InsufficientSecurity,
            )
            | rustls::Error::PeerIncompatible(_),
        ) => Some(SUITES_HINT),
        // Any certificate is accepted: only the handshake signature's check is left.
        Some(rustls::Error::InvalidCertificate(_)) => Some(KEY_HINT),
        _ => None,
    };
    match hint {
        Some(h) => format!("TLS handshake failed: {e} ({h})"),
        None => format!("TLS handshake failed: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{CertificateError, PeerIncompatible};

    fn io(e: rustls::Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    /// Found by review: a server SSL_GET cannot talk to failed with a bare
    /// "HandshakeFailure", where keepalived (OpenSSL) connects; the detail now says what
    /// SSL_GET needs.
    #[test]
    fn failures_of_the_narrower_tls_stack_say_what_ssl_get_needs() {
        for e in [
            rustls::Error::AlertReceived(AlertDescription::HandshakeFailure),
            rustls::Error::AlertReceived(AlertDescription::ProtocolVersion),
            rustls::Error::PeerIncompatible(PeerIncompatible::Tls12NotOffered),
        ] {
            let d = handshake_failed(&io(e));
            assert!(
                d.starts_with("TLS handshake failed: ") && d.ends_with(&format!("({SUITES_HINT})")),
                "{d}"
            );
        }
        let d = handshake_failed(&io(rustls::Error::InvalidCertificate(
            CertificateError::BadSignature,
        )));
        assert_eq!(
            d,
            format!("TLS handshake failed: invalid peer certificate: BadSignature ({KEY_HINT})")
        );
        // Anything else as it is.
        let d = handshake_failed(&io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(
            d,
            format!("TLS handshake failed: {}", io::Error::from(io::ErrorKind::ConnectionReset))
        );
        let d =
            handshake_failed(&io(rustls::Error::AlertReceived(AlertDescription::InternalError)));
        assert!(!d.contains("SSL_GET needs"), "{d}");
    }
}
