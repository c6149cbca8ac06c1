//! TLS to PostgreSQL, with libpq's `sslmode` and `sslrootcert`.
//!
//! tokio-postgres knows only `sslmode=disable|prefer|require` and negotiates TLS through a
//! connector it is handed; it checks nothing itself. This module reads the connection string the
//! way libpq does, takes out what tokio-postgres does not know (`verify-ca`, `verify-full`,
//! `sslrootcert`), and builds a rustls connector (`tokio-postgres-rustls`, the ring provider)
//! whose certificate check is the one the mode asks for:
//!
//! | sslmode       | encrypted                  | certificate checked                          |
//! |---------------|----------------------------|----------------------------------------------|
//! | `disable`     | never                      | —                                            |
//! | `prefer`      | if the server offers it    | only if `sslrootcert` is given (chain)       |
//! | `require`     | always                     | only if `sslrootcert` is given (chain)       |
//! | `verify-ca`   | always                     | chain to a trusted root                      |
//! | `verify-full` | always                     | chain, and the host name (or IP) it names    |
//!
//! The trusted roots are the file `sslrootcert` names (PEM), or the system's store when it is
//! absent or `system` (as in libpq 16, `sslrootcert=system` asks for `verify-full`). `PGSSLMODE`
//! and `PGSSLROOTCERT` apply when the string does not say. The default mode is libpq's,
//! `prefer`.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as WireMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The connector every connection of a daemon uses (cheap to clone).
pub type Connector = MakeRustlsConnect;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            // libpq's `allow` tries without TLS first; nobody should want it for a database
            // that holds locks, and it would need a second connection attempt.
            other => {
                return Err(format!(
                    "sslmode must be one of disable, prefer, require, verify-ca, verify-full, \
                     got {other:?}"
                ))
            }
        })
    }

    fn wire(self) -> WireMode {
        match self {
            SslMode::Disable => WireMode::Disable,
            SslMode::Prefer => WireMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => WireMode::Require,
        }
    }
}

/// A connection string read: the tokio-postgres configuration, the connector, and the mode.
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: Connector,
    pub mode: SslMode,
}

/// Reads a PostgreSQL URL (`postgres://…?sslmode=…&sslrootcert=…`) or key=value string. The
/// error says what was wrong; it never shows a password.
pub fn parse(url: &str) -> Result<Target, String> {
    let (rest, taken) = take_tls_params(url)?;
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mode_text = taken.sslmode.or_else(|| env("PGSSLMODE"));
    let root = taken.sslrootcert.or_else(|| env("PGSSLROOTCERT"));
    let system_roots = root.as_deref() == Some("system");
    let mode = match mode_text.as_deref() {
        Some(m) => SslMode::parse(m)?,
        None if system_roots => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if system_roots && mode != SslMode::VerifyFull {
        // libpq's rule: the public roots vouch for anyone's certificate for *some* name, so only
        // the name check makes them mean anything.
        return Err(format!(
            "sslrootcert=system needs sslmode=verify-full (the system's roots prove only that \
             someone's certificate is valid, not that it is this server's), got sslmode={}",
            mode_text.unwrap_or_default()
        ));
    }
    let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
        format!(
            "{} is not a PostgreSQL connection string airlock can read: {e}",
            crate::config::redact_url(url)
        )
    })?;
    config.ssl_mode(mode.wire());
    let root_file = root.filter(|r| r != "system");
    let tls = connector(mode, root_file.as_deref().map(Path::new))?;
    Ok(Target { config, tls, mode })
}

/// The connector for `mode`, trusting `root_file` (PEM) or else the system's roots.
pub fn connector(mode: SslMode, root_file: Option<&Path>) -> Result<Connector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let check = match (mode, root_file) {
        (SslMode::Disable, _) | (SslMode::Prefer | SslMode::Require, None) => Check::Nothing,
        (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, _) => Check::Chain,
        (SslMode::VerifyFull, _) => Check::ChainAndName,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Nothing => Arc::new(AcceptAny(provider.clone())),
        Check::Chain | Check::ChainAndName => {
            let roots = match root_file {
                Some(path) => roots_from_file(path)?,
                None => system_roots()?,
            };
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("cannot build the certificate check: {e}"))?;
            if check == Check::Chain {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndName,
}

fn roots_from_file(path: &Path) -> Result<RootCertStore, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("sslrootcert {shown}: cannot read it: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("sslrootcert {shown}: not a PEM certificate file: {e}"))?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "sslrootcert {shown} holds no usable certificate (expected PEM \
             -----BEGIN CERTIFICATE----- blocks)"
        ));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(format!(
            "no trusted root certificates were found in the system's store{why}; give the \
             server's CA with sslrootcert=PATH"
        ));
    }
    Ok(roots)
}

/// `require` without `sslrootcert`: the traffic is encrypted, the peer unchecked (libpq's
/// meaning). The handshake's own signatures are still verified, so the session key belongs to
/// whoever holds the certificate's key.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
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
        rustls::crypto::verify_tls12_signature(
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
        rustls::crypto::verify_tls13_signature(
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

/// `verify-ca`: the chain must lead to a trusted root; the name in the certificate is not
/// compared with the host. webpki checks the chain first and the name last, so a name mismatch
/// is only ever reported for a certificate whose chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

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

/// A sentence to add to a failed connection's error when TLS is why, saying what to change.
pub fn hint(mode: SslMode, error: &str) -> Option<&'static str> {
    let e = error.to_ascii_lowercase();
    if e.contains("not valid for name") {
        Some(
            "the server's certificate does not name the host in the URL, which sslmode=verify-full \
             requires: connect by a name (or IP) the certificate holds, or use sslmode=verify-ca \
             to check the chain only",
        )
    } else if e.contains("unknownissuer") || e.contains("unknown issuer") {
        Some(
            "the server's certificate is not signed by a trusted root: give its CA with \
             sslrootcert=PATH (PEM)",
        )
    } else if e.contains("server does not support tls") && mode != SslMode::Prefer {
        Some(
            "the server does not offer TLS: turn on ssl in its postgresql.conf, or use \
             sslmode=prefer or disable on a trusted network",
        )
    } else {
        None
    }
}

/// The TLS parameters taken out of a connection string.
#[derive(Debug, Default, PartialEq, Eq)]
struct Taken {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

/// Splits `sslmode` and `sslrootcert` out of a URL's query or a key=value string; returns the
/// rest (for tokio-postgres) and what was taken. A later occurrence wins, as in libpq.
fn take_tls_params(url: &str) -> Result<(String, Taken), String> {
    let mut taken = Taken::default();
    let mut keep = |k: &str, v: String| -> bool {
        match k {
            "sslmode" => taken.sslmode = Some(v),
            "sslrootcert" => taken.sslrootcert = Some(v),
            _ => return true,
        }
        false
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((head, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        keep(k, percent_decode(v))
                    })
                    .collect();
                if kept.is_empty() {
                    head.to_string()
                } else {
                    format!("{head}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for (k, v, raw) in key_values(url)? {
            if keep(&k, v) {
                kept.push(raw);
            }
        }
        kept.join(" ")
    };
    Ok((rest, taken))
}

/// `%XX` sequences decoded (what tokio-postgres does to URL query values).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// libpq's key=value form: `key = value` pairs separated by spaces; a value may be single-quoted
/// with `\'` and `\\` escapes. Returns (key, value, the pair's original text).
fn key_values(s: &str) -> Result<Vec<(String, String, String)>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i >= chars.len() {
            return Ok(out);
        }
        let start = i;
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        skip_ws(&mut i);
        if i >= chars.len() || chars[i] != '=' {
            return Err(format!(
                "the connection string has {key:?} without `=value` (expected key=value pairs)"
            ));
        }
        i += 1;
        skip_ws(&mut i);
        let mut value = String::new();
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(format!(
                            "the connection string's value for {key} has no closing quote"
                        ))
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some('\\') if i + 1 < chars.len() => {
                        value.push(chars[i + 1]);
                        i += 2;
                    }
                    Some(c) => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
        }
        let raw: String = chars[start..i].iter().collect();
        out.push((key, value, raw));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(url: &str) -> (String, Option<String>, Option<String>) {
        let (rest, t) = take_tls_params(url).unwrap();
        (rest, t.sslmode, t.sslrootcert)
    }

    #[test]
    fn tls_parameters_are_taken_out_of_urls() {
        assert_eq!(
            taken("postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&a=b"),
            (
                "postgres://u@h/db?a=b".into(),
                Some("verify-full".into()),
                Some("/tmp/ca.pem".into())
            )
        );
        assert_eq!(
            taken("postgresql://h/db?sslmode=require"),
            ("postgresql://h/db".into(), Some("require".into()), None)
        );
        assert_eq!(
            taken("postgres://h/db"),
            ("postgres://h/db".into(), None, None)
        );
    }

    #[test]
    fn tls_parameters_are_taken_out_of_key_value_strings() {
        assert_eq!(
            taken("host=h sslmode = verify-ca  sslrootcert='/a b/c\\'s.pem' user=u"),
            (
                "host=h user=u".into(),
                Some("verify-ca".into()),
                Some("/a b/c's.pem".into())
            )
        );
        assert!(take_tls_params("host=h sslrootcert='/x").is_err());
        assert!(take_tls_params("host").is_err());
    }

    #[test]
    fn modes_map_to_what_tokio_postgres_sends() {
        let ca = rcgen::generate_simple_self_signed(vec!["db.test".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.cert.pem()).unwrap();
        let root = ca_path.display().to_string();
        for (text, wire) in [
            ("disable", WireMode::Disable),
            ("prefer", WireMode::Prefer),
            ("require", WireMode::Require),
            ("verify-ca", WireMode::Require),
            ("verify-full", WireMode::Require),
        ] {
            let t = parse(&format!(
                "postgres://u@h/db?sslmode={text}&sslrootcert={root}"
            ))
            .unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(t.config.get_ssl_mode(), wire, "{text}");
            assert_eq!(t.config.get_hosts().len(), 1);
        }
        let e = parse("postgres://u@h/db?sslmode=verify-ca&sslrootcert=/dev/null")
            .err()
            .unwrap();
        assert!(e.contains("no usable certificate"), "{e}");
        let e = parse("postgres://u@h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem")
            .err()
            .unwrap();
        assert!(e.contains("sslrootcert /nonexistent/ca.pem"), "{e}");
        let e = parse("postgres://u@h/db?sslmode=allow").err().unwrap();
        assert!(e.contains("sslmode must be one of"), "{e}");
        let e = parse("postgres://u@h/db?sslmode=require&sslrootcert=system")
            .err()
            .unwrap();
        assert!(e.contains("verify-full"), "{e}");
        let t = parse("postgres://u@h/db?sslmode=require").unwrap();
        assert_eq!(t.mode, SslMode::Require);
        let e = parse("postgres://u:hunter2@h/db?nonsense=1").err().unwrap();
        assert!(!e.contains("hunter2") && e.contains("nonsense"), "{e}");
    }

    #[test]
    fn hints_name_the_fix() {
        assert!(
            hint(SslMode::VerifyFull, "certificate not valid for name \"x\"")
                .unwrap()
                .contains("verify-ca")
        );
        assert!(hint(SslMode::Require, "server does not support TLS")
            .unwrap()
            .contains("ssl"));
        assert!(hint(SslMode::Prefer, "connection refused").is_none());
    }
}
