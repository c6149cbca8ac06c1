//! Throwaway databases for the tests of the PostgreSQL backend (the store's own, the model test,
//! the multi-daemon stories). Not used by the daemon.
//!
//! Tests find the server through [`ENV`], an admin URL (a role that may CREATE DATABASE). Each
//! test makes its own database `airlock_t_<random hex>` there and drops it when the guard goes,
//! even when the test panics.

use tokio_postgres::{Client, Config, NoTls};

use super::{migrate, PgStore};
use crate::store::{StoreError, StoreResult};

/// The environment variable holding the admin URL, e.g.
/// `postgres://postgres@127.0.0.1:55432/postgres`.
pub const ENV: &str = "AIRLOCK_TEST_POSTGRES";

/// The admin URL, or `None` after printing a loud `SKIPPED:` line naming `test` (uncaptured, so
/// it shows in `cargo test` output even when the test passes).
pub fn admin_url_or_skip(test: &str) -> Option<String> {
    match std::env::var(ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            // Written to the stderr handle, not with eprintln!: the test harness captures
            // eprintln! output of passing tests, and a skip must be seen.
            use std::io::Write;
            // One write, so the line is not interleaved with the harness's own.
            let line = format!(
                "SKIPPED: {test}: {ENV} is not set (set it to a PostgreSQL admin URL, e.g. \
                 postgres://postgres@127.0.0.1:55432/postgres, to run the PostgreSQL tests)\n"
            );
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
            None
        }
    }
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
        // Drop may run inside a runtime (an async test) or during a panic: do the async work on a
        // thread of its own with a runtime of its own.
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
             WHERE schemaname = $1 AND tablename <> 'schema_version' ORDER BY tablename",
            &[&super::SCHEMA],
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
