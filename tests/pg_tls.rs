//! PostgreSQL over TLS (`sslmode`, `sslrootcert`), against a throwaway server of its own started
//! with `ssl=on` and a certificate made here: a CA, and a server certificate it signed for the
//! name `localhost` only. The shared test server (AIRLOCK_TEST_POSTGRES) has no TLS and is not
//! touched. Without PostgreSQL's server binaries (initdb, pg_ctl) the test prints SKIPPED (and
//! fails instead when AIRLOCK_TEST_PG_TLS=required, as .ci/run sets).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use airlock::store::postgres::tls;
use common::Daemon;
use serde_json::json;

/// The newest `/usr/lib/postgresql/*/bin` holding initdb and pg_ctl.
fn server_bindir() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").is_file() && b.join("pg_ctl").is_file())
        .collect();
    found.sort();
    found.pop()
}

fn is_root() -> bool {
    // SAFETY: getuid has no failure modes.
    unsafe { libc::getuid() == 0 }
}

/// A PostgreSQL cluster with ssl=on in a temporary directory; stopped and removed when dropped.
struct TlsServer {
    bindir: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    ca_pem: PathBuf,
}

impl TlsServer {
    /// `pg_ctl` and friends, as the postgres user when we are root (initdb refuses root).
    fn command(bindir: &Path, tool: &str) -> Command {
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bindir.join(tool));
            c
        } else {
            Command::new(bindir.join(tool))
        }
    }

    fn start(bindir: PathBuf) -> TlsServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path();
        // The CA, and a server certificate for `localhost` it signed.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "airlock test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let server_cert = server_params.signed_by(&server_key, &ca).unwrap();
        let ca_pem = base.join("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        std::fs::write(base.join("server.crt"), server_cert.pem()).unwrap();
        std::fs::write(base.join("server.key"), server_key.serialize_pem()).unwrap();

        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(base.join("ca.pem"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        std::fs::set_permissions(
            base.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        if is_root() {
            let out = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(base)
                .output()
                .expect("chown");
            assert!(out.status.success(), "chown: {out:?}");
        }
        let data = base.join("data");
        let out = Self::command(&bindir, "initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .output()
            .expect("initdb");
        assert!(out.status.success(), "initdb failed: {out:?}");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={dir} \
             -c ssl=on -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key \
             -c max_connections=50 -c fsync=off",
            dir = base.display()
        );
        let out = Self::command(&bindir, "pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(base.join("log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .stdin(Stdio::null())
            .output()
            .expect("pg_ctl start");
        let server = TlsServer {
            bindir,
            dir,
            port,
            ca_pem,
        };
        if !out.status.success() {
            let log = std::fs::read_to_string(server.dir.path().join("log")).unwrap_or_default();
            panic!("pg_ctl start failed: {out:?}\n{log}");
        }
        server
    }

    fn url(&self, host: &str, params: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres?{params}", self.port)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = Self::command(&self.bindir, "pg_ctl")
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Connects with the daemon's own reading of `url` and says whether the session is encrypted.
async fn connect(url: &str) -> Result<bool, String> {
    let target = tls::parse(url)?;
    let (client, conn) = target
        .config
        .connect(target.tls)
        .await
        .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get::<_, bool>(0))
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_over_tls_follows_libpq_sslmodes() {
    let Some(bindir) = server_bindir() else {
        // CI installs the server (.ci/pg-start) and sets this, so a skip there is a failure.
        assert_ne!(
            std::env::var("AIRLOCK_TEST_PG_TLS").as_deref(),
            Ok("required"),
            "AIRLOCK_TEST_PG_TLS=required, but there are no PostgreSQL server binaries"
        );
        use std::io::Write;
        let _ = std::io::stderr().lock().write_all(
            b"SKIPPED: postgres_over_tls_follows_libpq_sslmodes: no PostgreSQL server binaries \
              (initdb, pg_ctl) under /usr/lib/postgresql/*/bin; install Debian's postgresql to \
              run it\n",
        );
        return;
    };
    let server = tokio::task::spawn_blocking(move || TlsServer::start(bindir))
        .await
        .unwrap();
    let ca = server.ca_pem.display().to_string();

    // require: encrypted, certificate unchecked (the test CA is in no trust store).
    assert_eq!(
        connect(&server.url("127.0.0.1", "sslmode=require")).await,
        Ok(true)
    );
    // prefer (libpq's default) takes TLS when offered; disable does not.
    assert_eq!(connect(&server.url("127.0.0.1", "")).await, Ok(true));
    assert_eq!(
        connect(&server.url("127.0.0.1", "sslmode=disable")).await,
        Ok(false)
    );
    // verify-ca: the chain is checked, the name is not (the certificate names localhost only).
    assert_eq!(
        connect(&server.url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}"))).await,
        Ok(true)
    );
    // verify-full: the chain and the name.
    assert_eq!(
        connect(&server.url(
            "localhost",
            &format!("sslmode=verify-full&sslrootcert={ca}")
        ))
        .await,
        Ok(true)
    );
    let wrong_name = connect(&server.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .expect_err("verify-full must refuse a certificate for another name");
    assert!(wrong_name.contains("not valid for name"), "{wrong_name}");
    // require with sslrootcert checks the chain: a CA that did not sign it is refused.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let other_ca = server.dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let unknown = connect(&server.url(
        "localhost",
        &format!("sslmode=require&sslrootcert={}", other_ca.display()),
    ))
    .await
    .expect_err("a chain to an untrusted root must be refused");
    assert!(unknown.to_lowercase().contains("unknown"), "{unknown}");

    // The daemon itself: require connects and serves.
    let d = Daemon::start_on(&server.url("127.0.0.1", "sslmode=require")).await;
    d.call("set_note", json!({"key": "k", "value": "over tls"}))
        .await;
    let got = d.call("get_note", json!({"key": "k"})).await;
    assert_eq!(got["value"], json!("over tls"));
    drop(d);

    // The daemon with verify-full and the wrong host name refuses to start, and says why: given
    // in the URL, and given as PGSSLMODE/PGSSLROOTCERT (libpq's variables) to a plain URL.
    let url = server.url(
        "127.0.0.1",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let stderr = serve_refused(&server, &url, &[]).await;
    println!("verify-full, wrong host name: {stderr}");
    assert!(
        stderr.contains("does not name the host") && stderr.contains("verify-ca"),
        "{stderr}"
    );
    let plain = server.url("127.0.0.1", "");
    let stderr = serve_refused(
        &server,
        &plain,
        &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", &ca)],
    )
    .await;
    assert!(stderr.contains("does not name the host"), "{stderr}");
}

/// Runs `airlock serve --store URL` expecting it to refuse to start; returns its stderr.
async fn serve_refused(server: &TlsServer, url: &str, env: &[(&str, &str)]) -> String {
    let home = tempfile::tempdir_in(server.dir.path()).unwrap();
    let child = Command::new(common::airlock_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--store", url])
        .env("AIRLOCK_HOME", home.path())
        .env_remove("AIRLOCK_STORE")
        .env_remove("AIRLOCK_TOKEN")
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = common::within(60, async {
        tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap()
    })
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "serve started anyway: {stderr}");
    stderr
}
