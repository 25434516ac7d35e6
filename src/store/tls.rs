//! TLS for PostgreSQL connections with libpq's meaning of each `sslmode`:
//! `require` (and `prefer`, `allow`) encrypt without checking the certificate
//! unless a root file is known, in which case the chain is checked as with
//! `verify-ca`; `verify-ca` checks the chain against `sslrootcert`;
//! `verify-full` also checks the host name. A hosted Supabase database
//! chains to Supabase's own CA, never to a public root, which is why the
//! roots come from the user's file and not from a built-in list.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::conninfo::{ConnInfo, ConnInfoError, RootCert, SslMode};

/// What the TLS layer will check, for `doctor` and the start-up warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Encrypted if the server agrees, the certificate not checked.
    None,
    /// The chain is checked against the root certificates.
    Chain,
    /// The chain and the host name are checked.
    ChainAndHost,
}

impl Verification {
    pub fn of(info: &ConnInfo) -> Verification {
        match (info.ssl_mode, &info.root_cert) {
            (SslMode::Disable, _) | (_, RootCert::None) => Verification::None,
            (SslMode::VerifyFull, _) => Verification::ChainAndHost,
            _ => Verification::Chain,
        }
    }
}

/// The connector for `info`'s TLS settings; the root file is read here, so a
/// garbage or expired CA is reported before any connection is tried.
pub fn connector(info: &ConnInfo) -> Result<MakeRustlsConnect, ConnInfoError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match Verification::of(info) {
        Verification::None => {
            warn_unverified_once(info.ssl_mode);
            Arc::new(AcceptAnyCertificate(Arc::clone(&provider)))
        }
        verification => {
            let roots = Arc::new(roots(&info.root_cert)?);
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                roots,
                Arc::clone(&provider),
            )
            .build()
            .map_err(|e| ConnInfoError::RootCert {
                path: root_name(&info.root_cert),
                reason: e.to_string(),
            })?;
            if verification == Verification::ChainAndHost {
                inner
            } else {
                Arc::new(ChainOnly(inner))
            }
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnInfoError::Syntax(format!("TLS set-up: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// `require` without a root file is what most users paste from a tutorial;
/// say once, at start-up, what it does not protect against.
fn warn_unverified_once(mode: SslMode) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if matches!(mode, SslMode::Require) && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "sslmode=require: the connection is encrypted but the server's certificate is not checked; use sslmode=verify-full with sslrootcert (Supabase's CA from the dashboard's database settings)"
        );
    }
}

fn root_name(root: &RootCert) -> String {
    match root {
        RootCert::File(path) => path.display().to_string(),
        RootCert::System => "system".into(),
        RootCert::None => "(none)".into(),
    }
}

/// Reads the PEM certificates of the root file; none, garbage or only
/// expired ones is a configuration error naming the file.
pub fn roots(root: &RootCert) -> Result<RootCertStore, ConnInfoError> {
    let path = match root {
        RootCert::System => {
            return Ok(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            });
        }
        RootCert::None => return Ok(RootCertStore::empty()),
        RootCert::File(path) => path,
    };
    let fail = |reason: String| ConnInfoError::RootCert {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot be read ({e})")))?;
    let mut store = RootCertStore::empty();
    let mut expired = 0;
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|e| fail(format!("is not a PEM certificate file ({e})")))?;
        if is_expired(&cert) {
            expired += 1;
            continue;
        }
        store
            .add(cert)
            .map_err(|e| fail(format!("holds a certificate that cannot be used ({e})")))?;
    }
    if store.is_empty() {
        return Err(fail(if expired > 0 {
            "its CA certificate has expired: download the current one (for Supabase, from the dashboard's database settings)".into()
        } else {
            "holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)".into()
        }));
    }
    Ok(store)
}

fn is_expired(cert: &CertificateDer<'_>) -> bool {
    use x509_cert::der::Decode;
    let Ok(parsed) = x509_cert::Certificate::from_der(cert.as_ref()) else {
        return false;
    };
    let not_after = parsed.tbs_certificate.validity.not_after.to_unix_duration();
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .is_ok_and(|now| now > not_after)
}

/// verify-ca: the chain must lead to a root, whatever name the certificate
/// carries.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
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
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// require/prefer/allow without a root file: any certificate, as libpq.
/// The handshake's signatures are still checked, so the session is bound to
/// the key the server presented.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The rustls error inside a failed connection, if TLS is what failed.
pub fn tls_failure(error: &tokio_postgres::Error) -> Option<rustls::Error> {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(tls.clone());
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && let Some(tls) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            return Some(tls.clone());
        }
        source = cause.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_empty_root_files_are_refused_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.crt");
        std::fs::write(&garbage, "not a certificate at all \0\u{1}").unwrap();
        let broken = dir.path().join("broken.crt");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for path in [garbage, broken] {
            let err = roots(&RootCert::File(path.clone()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn system_roots_are_the_public_ones() {
        assert!(roots(&RootCert::System).unwrap().len() > 50);
    }
}
