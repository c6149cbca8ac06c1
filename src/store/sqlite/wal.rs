//! Pipelined commits on SQLite (see `core::engine::pipeline`).
//!
//! With `synchronous=OFF` a commit appends the transaction's frames to the WAL and returns
//! without an fsync; [`WalSync`], on the engine's syncing thread, fsyncs the WAL file through a
//! descriptor of its own (an fsync makes the file durable, whichever descriptor wrote it), which
//! makes every commit written before it durable. The WAL's frames carry a running checksum, so
//! after a crash SQLite replays a prefix of the commits and never a later one without an
//! earlier one.
//!
//! `synchronous=OFF` would also take the syncs out of checkpoints, which copy WAL frames into
//! the database file and let later commits overwrite the WAL from its start: a checkpoint that
//! did not first sync the WAL could copy frames never made durable, and one that did not sync
//! the database before the WAL is reused could lose committed state. So SQLite's automatic
//! checkpoint is off (our WAL hook replaces it), and [`Pipelined::checkpoint_if_due`] runs a
//! checkpoint on the engine thread with `synchronous=FULL` for that call, which syncs the WAL
//! before copying and the database before the WAL may be reused. Closing the connection
//! checkpoints too: `SqliteStore`'s `Drop` sets FULL first. A checkpoint that fails poisons
//! the syncer: no later sync reports success, and the daemon stops.

use std::cell::Cell;
use std::ffi::c_int;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use rusqlite::Connection;

use crate::store::{StoreError, StoreResult, Syncer};

/// WAL frames (pages) after which a commit is followed by a checkpoint: SQLite's own default.
const CHECKPOINT_FRAMES: i64 = 1000;

/// Test builds only: if the file this names exists, every WAL sync fails (for the fault test of
/// a failed fsync). Ignored by release builds.
#[cfg(debug_assertions)]
pub const FAIL_SYNC_IF_ENV: &str = "AIRLOCK_TEST_FSYNC_FAIL_IF";

/// The store's side of pipelined commits.
pub(super) struct Pipelined {
    /// Frames in the WAL after the last commit, as the WAL hook reports them.
    frames: Arc<AtomicI64>,
    /// Reports of the WAL hook: SQLite calls it when a statement ends outside a transaction
    /// (a COMMIT among them) and frames were committed since its last call. A commit that wrote
    /// nothing leaves it unchanged.
    writes: Arc<AtomicU64>,
    /// Frames at which the next checkpoint is due: [`CHECKPOINT_FRAMES`], or that many more
    /// than a checkpoint that could not finish left (a reader held frames back).
    due_at: Cell<i64>,
    /// A checkpoint failed: the syncer fails from now on.
    poisoned: Arc<AtomicBool>,
}

/// Fsyncs the WAL file.
struct WalSync {
    file: File,
    poisoned: Arc<AtomicBool>,
    #[cfg(debug_assertions)]
    fail_if: Option<PathBuf>,
}

impl Syncer for WalSync {
    fn sync(&mut self) -> std::io::Result<()> {
        #[cfg(debug_assertions)]
        if let Some(path) = &self.fail_if {
            if path.exists() {
                return Err(std::io::Error::other(format!(
                    "injected fsync failure ({FAIL_SYNC_IF_ENV}: {} exists)",
                    path.display()
                )));
            }
        }
        if self.poisoned.load(Ordering::SeqCst) {
            return Err(std::io::Error::other(
                "a checkpoint of the database failed, so its state on disk is unknown",
            ));
        }
        self.file.sync_data()
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Other(format!("{what} {}: {e}", path.display()))
}

impl Pipelined {
    /// Switches `conn` to pipelined commits; `None` if it is not a file database in WAL mode.
    pub(super) fn start(
        conn: &mut Connection,
    ) -> StoreResult<Option<(Pipelined, Box<dyn Syncer>)>> {
        let Some(db) = conn.path().filter(|p| !p.is_empty()).map(PathBuf::from) else {
            return Ok(None);
        };
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
        if mode != "wal" {
            return Ok(None);
        }
        let mut wal_path = db.clone().into_os_string();
        wal_path.push("-wal");
        let wal_path = PathBuf::from(wal_path);
        let file = match File::open(&wal_path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("cannot open", &wal_path, e)),
        };
        // Everything so far was committed with FULL. SQLite syncs the directory once, at the
        // first sync of a WAL it created; it may not have made one yet, and will not any more.
        file.sync_data()
            .map_err(|e| io("cannot sync", &wal_path, e))?;
        if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io("cannot sync the directory", dir, e))?;
        }
        let frames = Arc::new(AtomicI64::new(0));
        let writes = Arc::new(AtomicU64::new(0));
        // Replaces SQLite's automatic checkpoint, which is itself a WAL hook. Nothing may set
        // another hook on this connection (nor `PRAGMA wal_autocheckpoint`, which does): the
        // count above is how a commit is known to have written (`SqliteStore::commit` also
        // checks the rows changed, so a lost hook would cost fsyncs, not durability).
        conn.wal_hook(Some({
            let (frames, writes) = (frames.clone(), writes.clone());
            move |_: &mut rusqlite::hooks::Wal, n: c_int| {
                frames.store(i64::from(n), Ordering::Relaxed);
                writes.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }))?;
        conn.execute_batch("PRAGMA synchronous=OFF")?;
        let poisoned = Arc::new(AtomicBool::new(false));
        let syncer = WalSync {
            file,
            poisoned: poisoned.clone(),
            #[cfg(debug_assertions)]
            fail_if: std::env::var_os(FAIL_SYNC_IF_ENV).map(PathBuf::from),
        };
        let pipelined = Pipelined {
            frames,
            writes,
            due_at: Cell::new(CHECKPOINT_FRAMES),
            poisoned,
        };
        Ok(Some((pipelined, Box::new(syncer))))
    }

    /// How many commits so far wrote frames to the WAL: a commit that leaves it unchanged wrote
    /// nothing for an fsync to make durable.
    pub(super) fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Frames in the WAL after the last commit (0 after a checkpoint that finished).
    #[cfg(test)]
    pub(super) fn frames(&self) -> i64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// After a commit: once the WAL holds [`CHECKPOINT_FRAMES`], copies it into the database,
    /// with the syncs of `synchronous=FULL` (see the module's doc).
    pub(super) fn checkpoint_if_due(&self, conn: &Connection) {
        let frames = self.frames.load(Ordering::Relaxed);
        if frames < self.due_at.get() {
            return;
        }
        self.due_at.set(frames + CHECKPOINT_FRAMES);
        let pragma = |sql: &str| conn.prepare_cached(sql).and_then(|mut st| st.execute([]));
        if let Err(e) = pragma("PRAGMA synchronous=FULL") {
            // No checkpoint then: the WAL grows until a later one succeeds.
            tracing::warn!(error = %e, "could not prepare a checkpoint");
            return;
        }
        let done = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        match done {
            Ok((0, log, copied)) if log == copied => {
                self.frames.store(0, Ordering::Relaxed);
                self.due_at.set(CHECKPOINT_FRAMES);
            }
            Ok(partial) => tracing::warn!(?partial, "a checkpoint did not finish"),
            Err(e) => {
                tracing::error!(error = %e, "a checkpoint failed: the daemon stops at its next sync");
                self.poisoned.store(true, Ordering::SeqCst);
            }
        }
        // If this fails the store stays at FULL: every commit synced, which is safe.
        if let Err(e) = pragma("PRAGMA synchronous=OFF") {
            tracing::warn!(error = %e, "commits are synced one by one again");
        }
    }
}
