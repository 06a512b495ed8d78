//! TLS 1.3 with both certificates pinned by the fingerprints the PAKE confirmed: one
//! verifier ([`Pinned`]) for QUIC and for TLS over a punched TCP stream, on either side.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::net::punch::PunchError;
use crate::proto::punch::pake::fingerprint;

/// The signature checks both verifier traits ask for: the same for the server's and the
/// client's certificate (the provider's algorithms; only the certificate is pinned).
macro_rules! pinned_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(message, cert, dss, &self.algs)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.algs)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

/// Accepts exactly one certificate, by SHA-256 fingerprint.
#[derive(Debug)]
struct Pinned {
    fp: [u8; 32],
    algs: WebPkiSupportedAlgorithms,
}

impl Pinned {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if fingerprint(cert.as_ref()) == self.fp {
            Ok(())
        } else {
            Err(rustls::Error::General(
                "certificate does not match the one confirmed with the code".into(),
            ))
        }
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ServerCertVerified::assertion())
    }
    pinned_signatures!();
}

impl ClientCertVerifier for Pinned {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ClientCertVerified::assertion())
    }
    pinned_signatures!();
}

/// A transport error for the user.
pub(crate) fn terr(e: impl std::fmt::Display) -> PunchError {
    PunchError::Transport(e.to_string())
}

/// TLS 1.3 for the listener (server): our certificate, and the connector's pinned by the
/// fingerprint confirmed with the code. Shared by QUIC and by TLS over a punched TCP stream.
pub(crate) fn tls_server(
    cert: &rcgen::CertifiedKey,
    peer_fp: [u8; 32],
    alpn: &[u8],
) -> Result<rustls::ServerConfig, PunchError> {
    let (provider, pinned) = pinned(peer_fp);
    let (chain, key) = identity(cert);
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(terr)?
        .with_client_cert_verifier(pinned)
        .with_single_cert(chain, key)
        .map_err(terr)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// TLS 1.3 for the connector (client): the listener's certificate pinned, ours presented.
pub(crate) fn tls_client(
    cert: &rcgen::CertifiedKey,
    peer_fp: [u8; 32],
    alpn: &[u8],
) -> Result<rustls::ClientConfig, PunchError> {
    let (provider, pinned) = pinned(peer_fp);
    let (chain, key) = identity(cert);
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(terr)?
        .dangerous()
        .with_custom_certificate_verifier(pinned)
        .with_client_auth_cert(chain, key)
        .map_err(terr)?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// The crypto provider, and a verifier that accepts only the certificate the peer confirmed
/// with the code.
fn pinned(peer_fp: [u8; 32]) -> (Arc<rustls::crypto::CryptoProvider>, Arc<Pinned>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pinned = Arc::new(Pinned {
        fp: peer_fp,
        algs: provider.signature_verification_algorithms,
    });
    (provider, pinned)
}

fn identity(cert: &rcgen::CertifiedKey) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    (
        vec![cert.cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der())),
    )
}
