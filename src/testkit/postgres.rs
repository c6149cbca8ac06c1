//! Throwaway PostgreSQL databases, and which store the daemons under test use.
//!
//! Tests find the server through [`ENV`], an admin URL (a role that may CREATE DATABASE), e.g.
//! `postgres://postgres@127.0.0.1:55432/postgres` (`.ci/pg-start` prints one). Each database is
//! `airlock_t_<random hex>`, dropped (with any session still on it) when its [`TestDb`] goes,
//! even when the test panics; the ones a test keeps for its whole run ([`fresh_database`], a
//! home's database) are dropped when the test process exits.
//!
//! `AIRLOCK_TEST_BACKEND` picks the store of the daemons [`super::Daemon::start`] and its kin
//! start: `sqlite` (the default) or `postgres`, where every home gets its own fresh database,
//! reused when a daemon restarts on that home, so tests stay as independent as on SQLite.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tokio_postgres::{Client, Config, NoTls};

use crate::store::postgres::{migrate, PgStore, SCHEMA};
use crate::store::{StoreError, StoreResult};

/// The environment variable holding the admin URL.
pub const ENV: &str = "AIRLOCK_TEST_POSTGRES";

/// The admin URL of the test server, if one is configured.
pub fn admin_url() -> Option<String> {
    std::env::var(ENV)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The admin URL, or `None` after printing a loud `SKIPPED:` line naming `test` (uncaptured, so
/// it shows in `cargo test` output even when the test passes).
pub fn admin_url_or_skip(test: &str) -> Option<String> {
    let url = admin_url();
    if url.is_none() {
        // Written to the stderr handle, not with eprintln!: the test harness captures eprintln!
        // output of passing tests, and a skip must be seen. One write, so the line is not
        // interleaved with the harness's own.
        use std::io::Write;
        let line = format!(
            "SKIPPED: {test}: {ENV} is not set (CI always sets it; set it to a PostgreSQL admin \
             URL, e.g. postgres://postgres@127.0.0.1:55432/postgres, to run the PostgreSQL tests)\n"
        );
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
    url
}

/// For tests that need PostgreSQL whatever the backend: true (after saying so, loudly) when no
/// server is configured, and the test should return.
pub fn skip_without_postgres(test: &str) -> bool {
    admin_url_or_skip(test).is_none()
}

/// A fresh database, dropped (with any connections to it) when this guard is dropped.
pub struct TestDb {
    pub name: String,
    admin_url: String,
    url: String,
}

impl TestDb {
    /// Creates `airlock_t_<random hex>` on the server `admin_url` points at.
    pub async fn create(admin_url: &str) -> StoreResult<TestDb> {
        let name = format!("airlock_t_{}", hex::encode(rand::random::<[u8; 8]>()));
        let admin = connect(admin_url).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        Ok(TestDb {
            url: with_dbname(admin_url, &name),
            admin_url: admin_url.to_string(),
            name,
        })
    }

    /// A connection URL for this database (the admin URL with its database name replaced).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The admin URL this database was made through.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// A new connection to this database, driven by a task on the current runtime.
    pub async fn connect(&self) -> StoreResult<Client> {
        connect(&self.url).await
    }

    /// A migrated [`PgStore`] on a new connection, driven by `rt`, for use from a thread that is
    /// not one of `rt`'s (as the engine thread is not).
    pub fn store(&self, rt: &tokio::runtime::Runtime) -> StoreResult<PgStore> {
        rt.block_on(async {
            let mut client = self.connect().await?;
            migrate(&mut client).await?;
            PgStore::new(client, rt.handle().clone()).await
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop may run inside a runtime (an async test), during a panic or at exit: do the async
        // work on a thread of its own with a runtime of its own.
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let admin = connect(&admin_url).await.map_err(|e| e.to_string())?;
                admin
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
                    .map_err(|e| StoreError::from(e).to_string())
            })
        })
        .join();
        match dropped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("warning: dropping test database {} panicked", self.name),
        }
    }
}

/// Connects to `url` and drives the connection on a task of the current runtime.
pub async fn connect(url: &str) -> StoreResult<Client> {
    let config: Config = url.parse()?;
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        // The connection ends when the client is dropped or the server goes; either way the
        // client's calls report it.
        let _ = connection.await;
    });
    Ok(client)
}

/// Empties every airlock table except the schema version, and restarts the id sequences, so one
/// database can serve many cases of a property test as if each were fresh.
pub async fn reset(client: &Client) -> StoreResult<()> {
    let tables: Vec<String> = client
        .query(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables
             WHERE schemaname = $1 AND tablename NOT IN ('schema_version', 'usage')
             ORDER BY tablename",
            &[&SCHEMA],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    if !tables.is_empty() {
        client
            .batch_execute(&format!("TRUNCATE {} RESTART IDENTITY", tables.join(", ")))
            .await?;
    }
    // TRUNCATE fires no row or statement DELETE triggers: the usage gauge is set to match.
    client
        .batch_execute(
            "DO $$ BEGIN IF to_regclass('airlock.usage') IS NOT NULL THEN \
             UPDATE airlock.usage SET bytes = 0; END IF; END $$",
        )
        .await?;
    Ok(())
}

/// `url` with its database name replaced by `db`: URL form (`postgres://…/name?…`) or key=value
/// form (`host=… dbname=…`, where a later key wins).
pub fn with_dbname(url: &str, db: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return format!("{url} dbname={db}");
    };
    let after_scheme = scheme_end + 3;
    let query_at = url[after_scheme..]
        .find('?')
        .map_or(url.len(), |i| after_scheme + i);
    let path_at = url[after_scheme..query_at]
        .find('/')
        .map_or(query_at, |i| after_scheme + i);
    format!("{}/{}{}", &url[..path_at], db, &url[query_at..])
}

// ------------------------------------------------------------------ kept for the whole run

/// Databases kept until the test process exits: [`fresh_database`]'s, and each home's (by
/// home; a home deleted earlier takes its database with it, see [`forget_home_database`]).
/// Not held across anything that awaits.
static KEPT: Mutex<Kept> = Mutex::new(Kept {
    loose: Vec::new(),
    homes: None,
});

struct Kept {
    loose: Vec<TestDb>,
    homes: Option<HashMap<PathBuf, TestDb>>,
}

fn kept() -> std::sync::MutexGuard<'static, Kept> {
    KEPT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers, once, the exit handler that drops every kept database: a long CI run does not
/// pile up thousands of them.
fn drop_kept_at_exit() {
    static AT_EXIT: std::sync::Once = std::sync::Once::new();
    AT_EXIT.call_once(|| {
        extern "C" fn drop_kept() {
            let (loose, homes) = {
                let mut k = kept();
                (std::mem::take(&mut k.loose), k.homes.take())
            };
            drop(loose);
            drop(homes);
        }
        // SAFETY: registers a plain function with no captured state.
        unsafe {
            libc::atexit(drop_kept);
        }
    });
}

async fn create_kept_database() -> TestDb {
    let admin = admin_url().expect("checked by the caller");
    drop_kept_at_exit();
    TestDb::create(&admin)
        .await
        .unwrap_or_else(|e| panic!("cannot create a database through {ENV} ({admin}): {e}"))
}

/// Creates an empty database and returns its URL; None when no server is configured. Dropped
/// when the test process exits.
pub async fn fresh_database() -> Option<String> {
    admin_url()?;
    let db = create_kept_database().await;
    let url = db.url().to_string();
    kept().loose.push(db);
    Some(url)
}

/// Where the daemons under test keep their state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The backend selected by `AIRLOCK_TEST_BACKEND`. Panics on a misconfigured run: asking for
/// PostgreSQL without a server must not quietly test SQLite instead.
pub fn backend() -> Backend {
    let chosen = std::env::var("AIRLOCK_TEST_BACKEND").unwrap_or_default();
    match chosen.trim() {
        "" | "sqlite" => Backend::Sqlite,
        "postgres" | "postgresql" => {
            assert!(
                admin_url().is_some(),
                "AIRLOCK_TEST_BACKEND=postgres but {ENV} is not set: set it to the admin URL of \
                 a PostgreSQL server (e.g. the one `.ci/pg-start` prints)"
            );
            Backend::Postgres
        }
        other => panic!("AIRLOCK_TEST_BACKEND must be `sqlite` or `postgres`, got {other:?}"),
    }
}

/// The `--store` URL a daemon on `home` uses on the selected backend: None on SQLite; on
/// PostgreSQL the home's own database, created on first use.
pub async fn store_for_home(home: &Path) -> Option<String> {
    if backend() == Backend::Sqlite {
        return None;
    }
    let known = |home: &Path| {
        kept()
            .homes
            .as_ref()
            .and_then(|m| m.get(home).map(|db| db.url().to_string()))
    };
    if let Some(url) = known(home) {
        return Some(url);
    }
    let db = create_kept_database().await;
    let mut k = kept();
    let homes = k.homes.get_or_insert_with(HashMap::new);
    // Another task may have made one for this home meanwhile: the first stays, and this one is
    // dropped once the lock is released.
    if let Some(first) = homes.get(home) {
        let url = first.url().to_string();
        drop(k);
        drop(db);
        return Some(url);
    }
    let url = db.url().to_string();
    homes.insert(home.to_path_buf(), db);
    Some(url)
}

/// [`store_for_home`] as `serve` arguments (`--store URL`, or none), for tests that spawn
/// `airlock serve` themselves. Blocking: call it before spawning, from sync or async code.
pub fn store_args(home: &Path) -> Vec<String> {
    let home = home.to_path_buf();
    let store = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(store_for_home(&home))
    })
    .join()
    .expect("store_for_home");
    match store {
        Some(url) => vec!["--store".to_string(), url],
        None => Vec::new(),
    }
}

/// Drops the database of a home that is being deleted (none on SQLite).
pub fn forget_home_database(home: &Path) {
    let db = kept().homes.as_mut().and_then(|m| m.remove(home));
    drop(db);
}

#[cfg(test)]
mod tests {
    use super::with_dbname;

    #[test]
    fn the_database_name_is_replaced_in_every_url_form() {
        let cases = [
            ("postgres://u@h:5432/postgres", "postgres://u@h:5432/x"),
            ("postgres://u@h:5432", "postgres://u@h:5432/x"),
            (
                "postgresql://u:p@h/db?sslmode=disable",
                "postgresql://u:p@h/x?sslmode=disable",
            ),
            ("postgres://h?user=u", "postgres://h/x?user=u"),
            ("host=h user=u", "host=h user=u dbname=x"),
        ];
        for (url, want) in cases {
            assert_eq!(with_dbname(url, "x"), want, "{url}");
        }
    }
}
