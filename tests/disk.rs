//! Disk faults: an unwritable state directory, a full disk (a small tmpfs where mounting is
//! permitted, and a file-size limit everywhere), and a corrupt `state.db`. Each gets a clear error,
//! at start or per call, and nothing acknowledged is lost or corrupted.
//!
//! The full disk and the corrupt file are about SQLite's file, so those run on SQLite whatever
//! backend the suite is testing (`AIRLOCK_TEST_BACKEND`); the state directory exists on both.

mod common;

use std::io::{Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::Daemon;
use serde_json::json;

/// Runs `airlock serve` on `home` expecting it to refuse to start; returns (exit code, stderr).
async fn refused_start(home: &Path) -> (Option<i32>, String) {
    outcome(common::serve_refused(home, "127.0.0.1:0").await)
}

/// [`refused_start`] on the SQLite file, whatever the backend under test.
async fn refused_start_sqlite(home: &Path) -> (Option<i32>, String) {
    outcome(common::serve_refused_sqlite(home, "127.0.0.1:0").await)
}

fn outcome(out: std::process::Output) -> (Option<i32>, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A small tmpfs at `dir`, if this process may mount one (root, outside a locked-down container).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn an_unwritable_state_directory_is_a_clear_error_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    // The state directory cannot be created: its parent is a file.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let (code, err) = refused_start(&file.join("home")).await;
    assert_ne!(code, Some(0));
    assert!(
        err.contains("cannot create the state directory"),
        "stderr: {err}"
    );
    // A read-only file system (root ignores permission bits, so a mode is not enough). Mode
    // 0700: a tmpfs is 1777 by default, and a home other users can write to is refused first.
    match Tmpfs::mount(&tmp.path().join("ro"), "size=1m,ro,mode=0700") {
        Some(ro) => {
            let (code, err) = refused_start(&ro.0.join("home")).await;
            assert_ne!(code, Some(0));
            assert!(
                err.contains("cannot create the state directory") && err.contains("Read-only"),
                "stderr: {err}"
            );
            let (code, err) = refused_start(&ro.0).await;
            assert_ne!(code, Some(0));
            assert!(err.contains("Read-only"), "stderr: {err}");
        }
        None => eprintln!("mounting a tmpfs is not permitted here; read-only case skipped"),
    }
}

/// Fills the store with 200 KiB notes until a write fails; returns the keys acknowledged.
async fn fill(d: &Daemon) -> (Vec<String>, String) {
    let value = "v".repeat(200 * 1024);
    let mut acked = Vec::new();
    for i in 0..200 {
        let key = format!("fill-{i}");
        let body = d
            .call_raw("set_note", json!({"key": key, "value": value}))
            .await;
        if body["result"]["isError"] == json!(true) {
            let msg = body["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .to_string();
            return (acked, msg);
        }
        assert_eq!(body["result"]["structuredContent"]["saved"], json!(true));
        acked.push(key);
    }
    panic!("the disk never filled up");
}

/// Every acknowledged note is present and whole.
async fn all_present(d: &Daemon, keys: &[String]) {
    for key in keys {
        let got = d.call("get_note", json!({"key": key})).await;
        assert_eq!(
            got["value"].as_str().map(str::len),
            Some(200 * 1024),
            "{key} lost"
        );
    }
}

/// After a full disk: the daemon stays up, answers reads, recovers when space returns, and a
/// crash + restart finds every acknowledged write and a healthy database.
async fn full_disk_story(home: &Path, make_room: impl FnOnce()) {
    let mut d = Daemon::start_in_sqlite(home).await;
    d.call("set_note", json!({"key": "before", "value": "kept"}))
        .await;
    let (acked, msg) = fill(&d).await;
    assert!(!acked.is_empty());
    assert!(
        msg.starts_with("storage error:") && (msg.contains("full") || msg.contains("I/O")),
        "{msg}"
    );
    eprintln!("{} notes stored, then: {msg}", acked.len());
    assert!(d.healthy().await);
    // Reads still work and nothing acknowledged is missing.
    assert_eq!(
        d.call("get_note", json!({"key": "before"})).await["value"],
        json!("kept")
    );
    all_present(&d, &acked).await;
    make_room();
    // Writes work again once there is room (a small one first: the WAL may need to checkpoint).
    let mut wrote = false;
    for _ in 0..50 {
        let body = d
            .call_raw("set_note", json!({"key": "after", "value": "ok"}))
            .await;
        if body["result"]["isError"] != json!(true) {
            wrote = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(wrote, "writes did not recover once there was room");
    d.kill();
    let d = Daemon::start_in_sqlite(home).await;
    all_present(&d, &acked).await;
    assert_eq!(
        d.call("get_note", json!({"key": "after"})).await["value"],
        json!("ok")
    );
}

#[tokio::test]
async fn a_full_disk_is_a_per_call_error_without_corruption_tmpfs() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(&tmp.path().join("small"), "size=3m") else {
        eprintln!("mounting a tmpfs is not permitted here; see the file-size-limit test");
        return;
    };
    let home = fs.0.join("home");
    // Ballast, so the room can be given back after the disk fills.
    let ballast = fs.0.join("ballast");
    std::fs::write(&ballast, vec![0u8; 1024 * 1024]).unwrap();
    full_disk_story(&home, || std::fs::remove_file(&ballast).unwrap()).await;
}

#[tokio::test]
async fn a_file_size_limit_is_a_per_call_error_without_corruption() {
    // RLIMIT_FSIZE works without privileges: past it, writes fail with EFBIG (SIGXFSZ is
    // ignored, and an ignored signal stays ignored across exec).
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let child = unsafe {
        Command::new(common::airlock_bin())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("AIRLOCK_HOME", &home)
            .env_remove("AIRLOCK_TOKEN")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 2 * 1024 * 1024,
                    rlim_max: 2 * 1024 * 1024,
                };
                libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            })
            .spawn()
            .unwrap()
    };
    let d = Daemon::adopt(child, &home).await;
    let (acked, msg) = fill(&d).await;
    assert!(!acked.is_empty());
    assert!(msg.starts_with("storage error:"), "{msg}");
    eprintln!("{} notes stored, then: {msg}", acked.len());
    assert!(d.healthy().await);
    all_present(&d, &acked).await;
    // SIGKILL, restart without the limit: everything acknowledged is there, the file is healthy.
    drop(d);
    let d = Daemon::start_in_sqlite(&home).await;
    all_present(&d, &acked).await;
    d.call("set_note", json!({"key": "after", "value": "ok"}))
        .await;
}

fn file_bytes(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[tokio::test]
async fn a_corrupt_state_db_refuses_to_start_and_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let mut d = Daemon::start_in_sqlite(&home).await;
    for i in 0..50 {
        d.call(
            "set_note",
            json!({"key": format!("k{i}"), "value": "x".repeat(3000)}),
        )
        .await;
    }
    assert_eq!(d.stop(), Some(0));
    let db = home.join("state.db");

    // 1. Damaged pages in the middle of a real database.
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        f.seek(SeekFrom::Start(4096 * 3)).unwrap();
        f.write_all(&[0xAB; 8192]).unwrap();
    }
    let damaged = file_bytes(&db);
    let (code, err) = refused_start_sqlite(&home).await;
    assert_ne!(code, Some(0));
    assert!(
        err.contains("cannot open the state database")
            && (err.contains("malformed") || err.contains("integrity check")),
        "stderr: {err}"
    );
    eprintln!("damaged pages: {err}");
    assert_eq!(file_bytes(&db), damaged, "the damaged file was modified");

    // 2. Not a database at all.
    std::fs::write(
        &db,
        b"this is not an SQLite database, but it is someone's data".repeat(100),
    )
    .unwrap();
    let garbage = file_bytes(&db);
    let (code, err) = refused_start_sqlite(&home).await;
    assert_ne!(code, Some(0));
    assert!(
        err.contains("cannot open the state database") && err.contains("not a database"),
        "stderr: {err}"
    );
    eprintln!("garbage: {err}");
    assert_eq!(file_bytes(&db), garbage, "the file was replaced");
}

/// Another process holds SQLite's write lock for a few seconds (a backup tool, a `sqlite3`
/// shell) while calls run. The daemon's `BEGIN IMMEDIATE` fails with SQLITE_BUSY after its busy
/// timeout; such a batch must not go on in autocommit mode (each write would commit while its
/// caller is told "storage error"). Afterwards the state matches what every caller was told,
/// and the deadlines that fell due during the fault fire once the lock is released.
#[tokio::test]
async fn an_outside_write_lock_fails_calls_honestly_and_deadlines_still_fire() {
    let d = std::sync::Arc::new(Daemon::start_sqlite().await);
    // A presence that lapses during the fault, holding a lock someone waits for.
    d.call(
        "register_agent",
        json!({"agent_id": "lapser", "ttl_seconds": 2}),
    )
    .await;
    common::lock(&d, "held", "lapser", json!({"ttl_seconds": 300})).await;
    let waiter = common::spawn_lock(&d, "held", "waiter", json!({"wait_seconds": 45}));
    common::within(60, async {
        while d.call("list_locks", json!({})).await[0]["waiters"] != json!(1) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    let mut outside = rusqlite::Connection::open(d.home.join("state.db")).unwrap();
    outside.busy_timeout(Duration::from_secs(30)).unwrap();
    let tx = outside
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .unwrap();
    // Writes start while the lock is held and go on past its release, so some batches begin
    // during the fault and meet its end half-way through their busy wait.
    let mut writers = Vec::new();
    for i in 0..40u32 {
        let d = d.clone();
        writers.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(u64::from(i) * 250)).await;
            let key = format!("k{i}");
            let body = d
                .call_raw("set_note", json!({"key": key, "value": "v"}))
                .await;
            (key, body["result"]["isError"] != json!(true))
        }));
    }
    tokio::time::sleep(Duration::from_millis(6_500)).await;
    tx.rollback().unwrap();

    let mut saved = 0;
    for w in writers {
        let (key, ok) = common::within(120, w).await.unwrap();
        let found = d.call("get_note", json!({"key": key})).await["found"] != json!(false);
        assert_eq!(
            found, ok,
            "note {key}: answered saved={ok}, present={found}"
        );
        saved += usize::from(ok);
    }
    eprintln!("{saved} of 40 writes saved around a 6.5 s outside write lock");
    assert!(saved > 0, "writes after the release must succeed");

    // The lapse fell due during the fault: it fires, and the lock goes to its waiter (or, if
    // that grant's batch failed, the waiter was told so and does not hold it).
    let granted = common::within(120, waiter).await.unwrap();
    let locks = common::within(60, async {
        loop {
            let locks = d.call("list_locks", json!({})).await;
            let by_lapser = locks
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["agent_id"] == json!("lapser"));
            if !by_lapser {
                break locks;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let holder = locks
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == json!("held"))
        .map(|l| l["agent_id"].clone());
    if granted["locked"] == json!(true) {
        assert_eq!(holder, Some(json!("waiter")), "{locks}");
    } else {
        assert_eq!(holder, None, "a waiter told no does not hold it: {locks}");
    }
    let agents = d.call("list_agents", json!({})).await;
    assert_eq!(agents, json!([]), "the lapse fired");
}
