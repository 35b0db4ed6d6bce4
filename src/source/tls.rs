//! TLS to Postgres: libpq's `sslmode`, `sslrootcert`, `sslcert` and `sslkey` from the source URL,
//! applied to both connections cdc opens (the replication connection and the catalog one).
//!
//! Written here rather than left to tokio-postgres because its URL parser knows only
//! `disable`/`prefer`/`require` and refuses `verify-ca`, `verify-full` and the certificate
//! paths; so they are taken out of the URL first ([`split`]) and the rest goes to it. The modes
//! mean what they mean to libpq:
//!
//! | sslmode | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | no | - |
//! | `prefer` (default) | when the server offers it | no |
//! | `require` | yes | no |
//! | `verify-ca` | yes | signed by `sslrootcert` |
//! | `verify-full` | yes | signed by `sslrootcert` and issued for the host |

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// `sslmode`, as libpq spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The TLS settings of a source URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    pub mode: Mode,
    pub root_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

const KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Takes the TLS settings out of a libpq URL or key=value string; returns them and the rest,
/// for tokio-postgres.
pub fn split(url: &str) -> anyhow::Result<(Tls, String)> {
    let mut tls = Tls::default();
    let mut take = |key: &str, value: &str| -> anyhow::Result<()> {
        match key {
            "sslmode" => {
                tls.mode = match value {
                    "disable" => Mode::Disable,
                    "prefer" | "allow" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    other => bail!("sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"),
                }
            }
            "sslrootcert" => tls.root_cert = Some(PathBuf::from(value)),
            "sslcert" => tls.client_cert = Some(PathBuf::from(value)),
            _ => tls.client_key = Some(PathBuf::from(value)),
        }
        Ok(())
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else {
            return Ok((tls, url.to_string()));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if KEYS.contains(&key) {
                take(key, &percent_decode(value))?;
            } else {
                kept.push(pair);
            }
        }
        if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        // key=value pairs separated by spaces (values with spaces are quoted: kept as they are).
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            match word.split_once('=') {
                Some((key, value)) if KEYS.contains(&key) => take(key, value.trim_matches('\''))?,
                _ => kept.push(word),
            }
        }
        kept.join(" ")
    };
    if tls.client_cert.is_some() != tls.client_key.is_some() {
        bail!("sslcert and sslkey go together: give both (a client certificate and its key) or neither");
    }
    if matches!(tls.mode, Mode::VerifyCa | Mode::VerifyFull) && tls.root_cert.is_none() {
        bail!(
            "sslmode={} needs sslrootcert=PATH: the CA certificate (PEM) that signed the server's",
            tls.mode.name()
        );
    }
    Ok((tls, rest))
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Disable => "disable",
            Mode::Prefer => "prefer",
            Mode::Require => "require",
            Mode::VerifyCa => "verify-ca",
            Mode::VerifyFull => "verify-full",
        }
    }
}

impl Tls {
    /// tokio-postgres's own mode: whether to ask for TLS, and whether to insist.
    pub fn postgres_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode;
        match self.mode {
            Mode::Disable => SslMode::Disable,
            Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }

    /// The connector for the catalog connection.
    pub fn connector(&self) -> anyhow::Result<tokio_postgres_rustls::MakeRustlsConnect> {
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(self.client_config()?))
    }

    /// The same settings for the replication client.
    pub fn replication(&self) -> pgwire_replication::TlsConfig {
        use pgwire_replication::config::SslMode;
        let mut config = pgwire_replication::TlsConfig {
            mode: match self.mode {
                Mode::Disable => SslMode::Disable,
                Mode::Prefer => SslMode::Prefer,
                Mode::Require => SslMode::Require,
                Mode::VerifyCa => SslMode::VerifyCa,
                Mode::VerifyFull => SslMode::VerifyFull,
            },
            ca_pem_path: self.root_cert.clone(),
            ..Default::default()
        };
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            config = config.with_client_cert(cert, key);
        }
        config
    }

    fn client_config(&self) -> anyhow::Result<rustls::ClientConfig> {
        // ring, as the replication client uses: two providers are compiled in (reqwest brings
        // aws-lc-rs), so rustls cannot pick a process default by itself.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let verifier: Arc<dyn ServerCertVerifier> = match (&self.mode, &self.root_cert) {
            (Mode::VerifyCa | Mode::VerifyFull, Some(path)) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(path)? {
                    roots
                        .add(cert)
                        .with_context(|| format!("sslrootcert {}: not a usable CA certificate", path.display()))?;
                }
                let webpki =
                    rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .context("building the certificate verifier")?;
                Arc::new(Verifier {
                    webpki,
                    check_name: self.mode == Mode::VerifyFull,
                })
            }
            _ => Arc::new(NoVerification(provider)),
        };
        let builder = builder.dangerous().with_custom_certificate_verifier(verifier);
        match (&self.client_cert, &self.client_key) {
            (Some(cert), Some(key)) => {
                let key = PrivateKeyDer::from_pem_file(key)
                    .with_context(|| format!("sslkey {}: no private key in PEM form", key.display()))?;
                builder
                    .with_client_auth_cert(read_certs(cert)?, key)
                    .context("the client certificate and key do not go together")
            }
            _ => Ok(builder.with_no_client_auth()),
        }
    }
}

/// Whether the connection failed because the server's certificate did not verify.
pub fn is_certificate_error(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let rustls = cause.downcast_ref::<rustls::Error>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        matches!(rustls, Some(rustls::Error::InvalidCertificate(_)))
    })
}

fn read_certs(path: &PathBuf) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not PEM certificates", path.display()))?;
    if certs.is_empty() {
        bail!("{}: no certificate in it", path.display());
    }
    Ok(certs)
}

/// `%2F` and friends in a URL's query value (a certificate path written into a URL).
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// verify-ca and verify-full: the chain must lead to `sslrootcert`; the host name must match
/// only for verify-full (verify-ca, as in libpq, accepts a certificate issued for another name).
#[derive(Debug)]
struct Verifier {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// prefer and require: encrypted, the certificate not checked (libpq's meaning of these modes).
/// Signatures are still verified, so the handshake itself is sound.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_leave_the_url_and_the_rest_stays() {
        let (tls, rest) =
            split("postgres://cdc:pw@db:5432/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x")
                .unwrap();
        assert_eq!(tls.mode, Mode::VerifyFull);
        assert_eq!(tls.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(rest, "postgres://cdc:pw@db:5432/app?application_name=x");

        let (tls, rest) = split("host=db user=cdc sslmode=require dbname=app").unwrap();
        assert_eq!(tls.mode, Mode::Require);
        assert_eq!(rest, "host=db user=cdc dbname=app");

        let (tls, rest) = split("postgres://cdc@db/app").unwrap();
        assert_eq!((tls.mode, rest.as_str()), (Mode::Prefer, "postgres://cdc@db/app"));
    }

    #[test]
    fn a_setting_that_cannot_work_says_what_is_missing() {
        let e = split("postgres://db/app?sslmode=verify-full").unwrap_err().to_string();
        assert!(e.contains("needs sslrootcert"), "{e}");
        let e = split("postgres://db/app?sslmode=strict").unwrap_err().to_string();
        assert!(e.contains("not one of disable"), "{e}");
        let e = split("postgres://db/app?sslmode=require&sslcert=/c.pem")
            .unwrap_err()
            .to_string();
        assert!(e.contains("go together"), "{e}");
    }
}
