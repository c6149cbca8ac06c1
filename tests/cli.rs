//! The command line, run as the real binary against a real daemon: status, a client command per
//! tool with its exit codes, `airlock run`, `install-service --print`, and the stdio bridge.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{airlock_bin, until_waiters, within, Daemon};
use rmcp::model::CallToolRequestParams;
use rmcp::transport::{ConfigureCommandExt, TokioChildProcess};
use rmcp::ServiceExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// `airlock ARGS…` aimed at `d` (address and token through the environment, like a user's shell).
fn cmd(d: &Daemon, args: &[&str]) -> tokio::process::Command {
    d.cli(args)
}

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

fn ran(o: Output) -> Ran {
    Ran {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

async fn airlock(d: &Daemon, args: &[&str]) -> Ran {
    let out = within(60, cmd(d, args).output())
        .await
        .expect("run airlock");
    ran(out)
}

/// Runs and expects `code`; returns stdout, trimmed.
async fn expect(d: &Daemon, args: &[&str], code: i32) -> String {
    let r = airlock(d, args).await;
    assert_eq!(
        r.code, code,
        "airlock {args:?}: stdout {:?} stderr {:?}",
        r.stdout, r.stderr
    );
    r.stdout.trim().to_string()
}

async fn expect_json(d: &Daemon, args: &[&str], code: i32) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = expect(d, &all, code).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// An address where nothing listens (bound, then released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// ------------------------------------------------------------------ status

#[tokio::test]
async fn status_of_an_empty_daemon_in_the_seed_layout_and_as_json() {
    let d = Daemon::start().await;
    let out = expect(&d, &["status"], 0).await;
    let authority = d.url.strip_prefix("http://").unwrap();
    assert!(
        out.starts_with(&format!("Airlock — {authority}\n\nLOCKS (0)\n  (none)\n")),
        "{out}"
    );
    for s in ["AGENTS (0)", "NOTES (0)", "EVENTS (0)", "TASKS (0)"] {
        assert!(out.contains(&format!("{s}\n  (none)")), "{s} in {out}");
    }
    let v = expect_json(&d, &["status"], 0).await;
    for k in ["locks", "agents", "notes", "events", "queues"] {
        assert_eq!(v[k], json!([]), "{k}: {v}");
    }
}

#[tokio::test]
async fn status_shows_holders_waiters_expiries_and_queue_depths() {
    let d = Daemon::start().await;
    d.call(
        "lock_resource",
        json!({"name": "build", "agent_id": "agent:a", "ttl_seconds": 600}),
    )
    .await;
    // A waiter whose window ends keeps its place in line (10 s), so it shows as waiting.
    let queued = d
        .call(
            "lock_resource",
            json!({"name": "build", "agent_id": "agent:b", "wait_seconds": 1}),
        )
        .await;
    assert!(queued["wake_token"].is_string(), "{queued}");
    d.call("register_agent", json!({"agent_id": "agent:a"}))
        .await;
    d.call(
        "set_note",
        json!({"key": "plan", "value": "migrate first", "author": "agent:a", "ttl_seconds": 300}),
    )
    .await;
    d.call("signal_event", json!({"name": "deployed"})).await;
    d.call("push_task", json!({"queue": "q", "payload": "p1"}))
        .await;
    d.call("push_task", json!({"queue": "q", "payload": "p2"}))
        .await;

    let out = expect(&d, &["status"], 0).await;
    let line = |prefix: &str| -> String {
        out.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no line for {prefix} in\n{out}"))
            .to_string()
    };
    assert!(out.contains("LOCKS (1)"), "{out}");
    let l = line("build");
    assert!(l.contains("held by agent:a"), "{l}");
    let expires: i64 = l
        .split("expires in ")
        .nth(1)
        .unwrap()
        .split('s')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((500..=600).contains(&expires), "{l}");
    assert!(l.contains("1 waiting"), "{l}");
    assert!(out.contains("AGENTS (1)"), "{out}");
    assert!(line("agent:a").contains("locks 1"), "{out}");
    assert!(line("plan").contains("= migrate first"), "{out}");
    assert!(line("deployed").contains("generation 1"), "{out}");
    assert!(line("q ").contains("pending 2"), "{out}");

    let v = expect_json(&d, &["status"], 0).await;
    assert_eq!(v["locks"][0]["name"], "build");
    assert_eq!(v["locks"][0]["agent_id"], "agent:a");
    assert_eq!(v["locks"][0]["waiters"], 1);
    assert_eq!(v["queues"][0]["pending"], 2);
    assert_eq!(v["notes"][0]["value"], "migrate first");
    // The engine's counts (the benchmark reads operations per commit here): each of the seven
    // tool calls above was an operation, and each was committed.
    let count = |k: &str| {
        v["engine"][k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k}: {v}"))
    };
    assert!(count("operations") >= 7, "{v}");
    assert!(count("commits") >= 1, "{v}");
}

#[tokio::test]
async fn status_without_a_daemon_explains_and_exits_3() {
    let d = Daemon::start().await;
    let url = format!("http://127.0.0.1:{}", free_port());
    let out = within(30, cmd(&d, &["status"]).env("AIRLOCK_URL", &url).output())
        .await
        .unwrap();
    let r = ran(out);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert_eq!(r.stdout, "");
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains(&url), "{}", r.stderr);
    assert!(r.stderr.contains("airlock serve"), "{}", r.stderr);
}

// ------------------------------------------------------------------ client commands

#[tokio::test]
async fn lock_commands_and_their_exit_codes() {
    let d = Daemon::start().await;
    let token = expect(&d, &["lock", "build", "--agent", "me", "--ttl", "120"], 0).await;
    assert!(
        token.starts_with("lk_"),
        "the token alone on stdout: {token}"
    );
    // Contended, no wait: exit 1, and --json carries the daemon's answer.
    let v = expect_json(&d, &["lock", "build", "--agent", "other"], 1).await;
    assert_eq!(v["locked"], false);
    assert_eq!(v["held_by"], "me");
    // Waiting a while, then giving up: still 1.
    expect(&d, &["lock", "build", "--agent", "other", "--wait", "1"], 1).await;
    let list = expect(&d, &["locks"], 0).await;
    assert!(
        list.contains("build") && list.contains("held by me"),
        "{list}"
    );
    let out = expect(
        &d,
        &["renew", "build", "--token", &token, "--ttl", "300"],
        0,
    )
    .await;
    assert!(out.contains("expires in 300s"), "{out}");
    expect(&d, &["renew", "build", "--token", "lk_wrong"], 1).await;
    expect(&d, &["unlock", "build", "--token", "lk_wrong"], 1).await;
    assert_eq!(
        expect(&d, &["unlock", "build", "--token", &token], 0).await,
        "released"
    );
    expect(&d, &["unlock", "build", "--token", &token], 1).await;
    assert_eq!(expect(&d, &["locks"], 0).await, "(none)");
    // Several names: all or nothing, one "NAME TOKEN" per line.
    let out = expect(&d, &["lock", "b", "a", "--agent", "me"], 0).await;
    let names: Vec<&str> = out.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(names, ["a", "b"], "{out}");
    // Bad arguments are usage errors (2), from clap or from the daemon.
    expect(&d, &["lock", "x", "--ttl", "0"], 2).await;
    expect(&d, &["lock", "x", "--wait", "soon"], 2).await;
    expect(&d, &["unlock", "x"], 2).await;
    expect(&d, &["frobnicate"], 2).await;
}

#[tokio::test]
async fn a_lock_waits_past_one_call_and_is_granted_when_freed() {
    let d = Daemon::start().await;
    let held = d
        .call("lock_resource", json!({"name": "w", "agent_id": "a"}))
        .await;
    let waiter = cmd(
        &d,
        &["--json", "lock", "w", "--agent", "b", "--wait", "forever"],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    until_waiters(&d, "w", 1).await;
    d.call(
        "unlock_resource",
        json!({"name": "w", "lock_token": held["lock_token"]}),
    )
    .await;
    let out = ran(within(60, waiter.wait_with_output()).await.unwrap());
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(v["locked"], true);
}

#[tokio::test]
async fn note_commands_and_their_exit_codes() {
    let d = Daemon::start().await;
    assert_eq!(
        expect(&d, &["note", "set", "k", "v1", "--author", "me"], 0).await,
        "saved"
    );
    assert_eq!(expect(&d, &["note", "get", "k"], 0).await, "v1");
    let v = expect_json(&d, &["note", "get", "k"], 0).await;
    assert_eq!(v["author"], "me");
    expect(&d, &["note", "get", "missing"], 1).await;
    expect(&d, &["note", "cas", "k", "wrong", "v2"], 1).await;
    assert_eq!(
        expect(&d, &["note", "cas", "k", "v1", "v2"], 0).await,
        "swapped"
    );
    assert_eq!(expect(&d, &["note", "get", "k"], 0).await, "v2");
    // `-` reads the value from stdin.
    let mut c = cmd(&d, &["note", "set", "piped", "-"]);
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin")
        .await
        .unwrap();
    assert_eq!(within(30, child.wait()).await.unwrap().code(), Some(0));
    assert_eq!(expect(&d, &["note", "get", "piped"], 0).await, "from stdin");
    let list = expect(&d, &["note", "list"], 0).await;
    assert!(
        list.contains("k\tv2") && list.contains("piped\tfrom stdin"),
        "{list}"
    );
    assert_eq!(expect(&d, &["note", "delete", "k"], 0).await, "deleted");
    expect(&d, &["note", "delete", "k"], 1).await;
    expect(&d, &["note", "set", "k", "v", "--ttl", "0"], 2).await;
}

#[tokio::test]
async fn counter_agent_and_event_commands() {
    let d = Daemon::start().await;
    assert_eq!(expect(&d, &["counter", "incr", "n"], 0).await, "1");
    assert_eq!(
        expect(&d, &["counter", "incr", "n", "--by", "10"], 0).await,
        "11"
    );
    assert_eq!(
        expect(&d, &["counter", "incr", "n", "--by", "-2"], 0).await,
        "9"
    );

    let out = expect(&d, &["agent", "register", "agent:x", "--ttl", "90"], 0).await;
    assert!(out.contains("expires in 90s"), "{out}");
    assert!(expect(&d, &["agents"], 0).await.contains("agent:x"));
    let v = expect_json(&d, &["agents"], 0).await;
    assert_eq!(v[0]["agent_id"], "agent:x");
    expect(&d, &["agent", "unregister", "agent:x"], 0).await;
    assert_eq!(expect(&d, &["agents"], 0).await, "(none)");

    assert_eq!(expect(&d, &["event", "signal", "e"], 0).await, "1");
    // Fired already (generation 1 > 0): returns at once.
    assert_eq!(expect(&d, &["event", "wait", "e"], 0).await, "1");
    // Nothing new after 1: times out, exit 1.
    expect(
        &d,
        &["event", "wait", "e", "--since", "1", "--wait", "1"],
        1,
    )
    .await;
    // A waiter wakes on a signal.
    let waiter = cmd(&d, &["event", "wait", "e", "--since", "1", "--wait", "40"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // No race to lose: a signal before the waiter parks still advances past 1.
    expect(&d, &["event", "signal", "e"], 0).await;
    let out = ran(within(60, waiter.wait_with_output()).await.unwrap());
    assert_eq!((out.code, out.stdout.trim()), (0, "2"), "{}", out.stderr);
    assert_eq!(expect(&d, &["event", "clear", "e"], 0).await, "cleared");
}

#[tokio::test]
async fn task_options_dead_letters_and_retries_from_the_shell() {
    let d = Daemon::start().await;
    let push = [
        "task",
        "push",
        "q",
        "job",
        "--max-attempts",
        "1",
        "--unique-key",
        "k",
    ];
    assert_eq!(expect(&d, &push, 0).await, "1");
    let again = expect_json(&d, &push, 0).await;
    assert_eq!(again, json!({"id": 1, "duplicate": true}));
    let later = ["task", "push", "q", "later", "--delay", "600"];
    assert_eq!(expect(&d, &later, 0).await, "2");
    let c = expect_json(&d, &["task", "claim", "q", "--agent", "w"], 0).await;
    assert_eq!(c["id"], 1, "the delayed task is not claimable yet: {c}");
    let token = c["lease_token"].as_str().unwrap();
    let fail = [
        "task",
        "fail",
        "1",
        "--token",
        token,
        "--error",
        "disk full",
    ];
    expect(&d, &fail, 0).await;
    let t = expect_json(&d, &["task", "get", "1"], 0).await;
    assert_eq!(
        (&t["state"], &t["last_error"]),
        (&json!("dead"), &json!("disk full"))
    );
    expect(&d, &["task", "get", "99"], 1).await;
    let dead = expect(&d, &["task", "list", "q", "--state", "dead"], 0).await;
    assert!(dead.starts_with("1\tdead"), "{dead}");
    let queues = expect(&d, &["task", "queues"], 0).await;
    assert!(
        queues.contains("pending 1") && queues.contains("dead 1"),
        "{queues}"
    );
    assert_eq!(expect(&d, &["task", "retry", "1"], 0).await, "retried");
    expect(&d, &["task", "retry", "1"], 1).await;
    let c = expect_json(&d, &["task", "claim", "q", "--agent", "w"], 0).await;
    let token = c["lease_token"].as_str().unwrap();
    let done = ["task", "complete", "1", "--token", token, "--result", "ok"];
    assert_eq!(expect(&d, &done, 0).await, "completed");
    let t = expect_json(&d, &["task", "get", "1"], 0).await;
    assert_eq!(t["result"], "ok");
}

#[tokio::test]
async fn task_commands_and_their_exit_codes() {
    let d = Daemon::start().await;
    assert_eq!(expect(&d, &["task", "push", "q", "job-1"], 0).await, "1");
    assert_eq!(
        expect(&d, &["task", "push", "q", "job-2", "--priority", "5"], 0).await,
        "2"
    );
    let claimed = expect_json(&d, &["task", "claim", "q", "--agent", "w1"], 0).await;
    assert_eq!(claimed["id"], 2, "higher priority first: {claimed}");
    let lease = claimed["lease_token"].as_str().unwrap().to_string();
    let out = expect(
        &d,
        &["task", "extend", "2", "--token", &lease, "--lease", "300"],
        0,
    )
    .await;
    assert!(out.contains("300s"), "{out}");
    expect(&d, &["task", "complete", "2", "--token", "ls_wrong"], 1).await;
    assert_eq!(
        expect(&d, &["task", "complete", "2", "--token", &lease], 0).await,
        "completed"
    );
    let human = expect(&d, &["task", "claim", "q", "--agent", "w1"], 0).await;
    assert!(human.starts_with("id 1\nlease_token ls_"), "{human}");
    let lease1 = human
        .lines()
        .nth(1)
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(
        expect(&d, &["task", "fail", "1", "--token", &lease1], 0).await,
        "requeued"
    );
    let list = expect(&d, &["task", "list", "q"], 0).await;
    assert!(
        list.contains("1\tpending") && list.contains("2\tcompleted"),
        "{list}"
    );
    let c = expect_json(&d, &["task", "claim", "q", "--agent", "w2"], 0).await;
    expect(
        &d,
        &[
            "task",
            "fail",
            "1",
            "--token",
            c["lease_token"].as_str().unwrap(),
            "--no-requeue",
        ],
        0,
    )
    .await;
    // Empty queue: exit 1.
    expect(&d, &["task", "claim", "q", "--agent", "w2"], 1).await;
    // The generic escape hatch.
    let v = expect_json(
        &d,
        &["call", "increment_counter", r#"{"name":"z","by":3}"#],
        0,
    )
    .await;
    assert_eq!(v, json!({"value": 3}));
    expect(&d, &["call", "no_such_tool"], 2).await;
}

#[tokio::test]
async fn a_wrong_token_or_no_daemon_is_exit_3() {
    let d = Daemon::start().await;
    let r = ran(within(
        30,
        cmd(&d, &["locks"]).env("AIRLOCK_TOKEN", "wrong").output(),
    )
    .await
    .unwrap());
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("refused the token"), "{}", r.stderr);
    let url = format!("http://127.0.0.1:{}", free_port());
    let r = ran(within(
        30,
        cmd(&d, &["note", "get", "k"])
            .env("AIRLOCK_URL", &url)
            .output(),
    )
    .await
    .unwrap());
    assert_eq!(r.code, 3, "{}", r.stderr);
}

// ------------------------------------------------------------------ airlock run

#[tokio::test]
async fn two_runs_on_one_lock_serialize() {
    let d = Daemon::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let log_s = log.display().to_string();
    // The first command holds the lock until the test writes a line to its stdin.
    let first_script =
        format!("echo A-start >> {log_s}; echo started; read _; echo A-end >> {log_s}");
    let mut first = cmd(
        &d,
        &["run", "--lock", "shared", "--", "sh", "-c", &first_script],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut first_out = BufReader::new(first.stdout.take().unwrap()).lines();
    let line = within(30, first_out.next_line()).await.unwrap();
    assert_eq!(line.as_deref(), Some("started"));

    let second_script = format!("echo B >> {log_s}");
    let second = cmd(
        &d,
        &["run", "--lock", "shared", "--", "sh", "-c", &second_script],
    )
    .spawn()
    .unwrap();
    // The second run is parked in the daemon, its command not started.
    until_waiters(&d, "shared", 1).await;
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "A-start\n");

    let mut stdin = first.stdin.take().unwrap();
    stdin.write_all(b"go\n").await.unwrap();
    drop(stdin);
    assert_eq!(within(30, first.wait()).await.unwrap().code(), Some(0));
    let second = within(60, second.wait_with_output()).await.unwrap();
    assert_eq!(second.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "A-start\nA-end\nB\n",
        "the second command ran only after the first exited"
    );
    assert_eq!(d.call("list_locks", json!({})).await, json!([]));
}

#[tokio::test]
async fn run_exits_with_the_commands_status_and_releases() {
    let d = Daemon::start().await;
    expect(&d, &["run", "--lock", "x", "--", "sh", "-c", "exit 7"], 7).await;
    expect(&d, &["run", "--lock", "x", "--lock", "y", "--", "true"], 0).await;
    assert_eq!(d.call("list_locks", json!({})).await, json!([]));
    // Not acquired within --wait: exit 1, the command does not run.
    let held = d
        .call("lock_resource", json!({"name": "x", "agent_id": "other"}))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let script = format!("touch {}", marker.display());
    expect(
        &d,
        &[
            "run", "--lock", "x", "--wait", "1", "--", "sh", "-c", &script,
        ],
        1,
    )
    .await;
    assert!(!marker.exists());
    d.call(
        "unlock_resource",
        json!({"name": "x", "lock_token": held["lock_token"]}),
    )
    .await;
    // A command that cannot be started: 127, like a shell, and the lock is released.
    expect(&d, &["run", "--lock", "x", "--", "/nonexistent/cmd"], 127).await;
    assert_eq!(d.call("list_locks", json!({})).await, json!([]));
    expect(&d, &["run", "--", "true"], 2).await;
}

#[tokio::test]
async fn sigterm_reaches_the_command_and_the_lock_is_released() {
    let d = Daemon::start().await;
    let mut run = cmd(
        &d,
        &[
            "run",
            "--lock",
            "y",
            "--ttl",
            "600",
            "--",
            "sh",
            "-c",
            "echo up; exec sleep 60",
        ],
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut out = BufReader::new(run.stdout.take().unwrap()).lines();
    assert_eq!(
        within(30, out.next_line()).await.unwrap().as_deref(),
        Some("up")
    );
    let locks = d.call("list_locks", json!({})).await;
    assert_eq!(locks[0]["name"], "y", "{locks}");
    unsafe {
        libc::kill(run.id().unwrap() as i32, libc::SIGTERM);
    }
    let status = within(30, run.wait()).await.unwrap();
    // sleep died of the forwarded SIGTERM: 128 + 15.
    assert_eq!(status.code(), Some(143));
    assert_eq!(d.call("list_locks", json!({})).await, json!([]));
}

// ------------------------------------------------------------------ install-service

#[tokio::test]
async fn install_service_print_shows_the_unit_and_touches_nothing() {
    if !cfg!(target_os = "linux") {
        eprintln!("SKIPPED: install-service --print is checked on Linux only");
        return;
    }
    let d = Daemon::start().await;
    let home = tempfile::tempdir().unwrap();
    let r = ran(within(
        30,
        cmd(&d, &["install-service", "--print"])
            .env("HOME", home.path())
            // No installed airlock on PATH: the unit names the binary under test (with a warning).
            .env("PATH", "/usr/bin:/bin")
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("AIRLOCK_HOME")
            .output(),
    )
    .await
    .unwrap());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let unit_path = home.path().join(".config/systemd/user/airlock.service");
    let out = r.stdout;
    assert!(
        out.contains(&format!("write {}", unit_path.display())),
        "{out}"
    );
    assert!(
        out.contains("run   systemctl --user daemon-reload"),
        "{out}"
    );
    assert!(
        out.contains("run   systemctl --user enable airlock.service"),
        "{out}"
    );
    let bin = airlock_bin().canonicalize().unwrap();
    assert!(
        out.contains(&format!("ExecStart={} serve\n", bin.display())),
        "{out}"
    );
    assert!(out.contains("Restart=on-failure\n"), "{out}");
    assert!(out.contains("WantedBy=default.target\n"), "{out}");
    assert!(!unit_path.exists(), "--print must not write anything");

    let unit = out
        .split_once("---\n")
        .map(|(_, u)| u.trim_end().to_string() + "\n")
        .unwrap();
    verify_unit(home.path(), &unit);

    let r = ran(within(
        30,
        cmd(&d, &["uninstall-service", "--print"])
            .env("HOME", home.path())
            .output(),
    )
    .await
    .unwrap());
    assert_eq!(r.code, 0);
    assert!(
        r.stdout
            .contains("systemctl --user disable --now airlock.service"),
        "{}",
        r.stdout
    );
}

/// `systemd-analyze verify` on the generated unit, where systemd-analyze exists.
fn verify_unit(dir: &Path, unit: &str) {
    let have = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!(
            "\n*** SKIPPED: systemd-analyze is not installed here, so the generated unit was NOT \
             verified by systemd-analyze ***\n"
        );
        return;
    }
    let path = dir.join("airlock.service");
    std::fs::write(&path, unit).unwrap();
    let o = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    // Outside a user session systemd-analyze may complain about the environment; only lines
    // about our unit count.
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("airlock.service"))
        .collect();
    assert!(
        about_unit.is_empty(),
        "systemd-analyze verify found problems:\n{stderr}\nunit:\n{unit}"
    );
}

// ------------------------------------------------------------------ the stdio bridge

fn bridge_command(url: &str, home: &Path, args: &[&str]) -> tokio::process::Command {
    let url = url.to_string();
    let home = home.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::process::Command::new(airlock_bin()).configure(move |c| {
        c.args(&args)
            .env("AIRLOCK_URL", &url)
            .env("AIRLOCK_HOME", &home)
            .env_remove("AIRLOCK_TOKEN")
            .env("RUST_LOG", "warn");
    })
}

fn tool_json(r: &rmcp::model::CallToolResult) -> Value {
    assert_ne!(r.is_error, Some(true), "tool error: {r:?}");
    let v = serde_json::to_value(r).unwrap();
    serde_json::from_str(v["content"][0]["text"].as_str().unwrap()).unwrap()
}

fn call(name: &'static str, args: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(name).with_arguments(args.as_object().unwrap().clone())
}

#[tokio::test]
async fn the_stdio_bridge_lists_tools_and_forwards_a_blocking_wait() {
    let d = Daemon::start().await;
    let child = TokioChildProcess::builder(bridge_command(&d.url, &d.home, &["mcp"]))
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
        .0;
    let client = within(30, ().serve(child)).await.unwrap();
    let tools = within(30, client.list_tools(None)).await.unwrap();
    let names: Vec<String> = tools.tools.iter().map(|t| t.name.to_string()).collect();
    for t in [
        "lock_resource",
        "wait_for_event",
        "claim_next_task",
        "list_tasks",
    ] {
        assert!(names.iter().any(|n| n == t), "{t} missing from {names:?}");
    }

    let held = d
        .call("lock_resource", json!({"name": "b", "agent_id": "a"}))
        .await;
    let waiting = tokio::spawn({
        let peer = client.peer().clone();
        async move {
            peer.call_tool(call(
                "lock_resource",
                json!({"name": "b", "agent_id": "via-bridge", "wait_seconds": 40}),
            ))
            .await
        }
    });
    until_waiters(&d, "b", 1).await;
    d.call(
        "unlock_resource",
        json!({"name": "b", "lock_token": held["lock_token"]}),
    )
    .await;
    let got = within(60, waiting).await.unwrap().unwrap();
    let v = tool_json(&got);
    assert_eq!(v["locked"], true, "{v}");
    assert_eq!(
        d.call("list_locks", json!({})).await[0]["agent_id"],
        "via-bridge"
    );

    // A tool error comes back as a tool error.
    let bad = within(
        30,
        client.call_tool(call("lock_resource", json!({"name": "", "agent_id": "a"}))),
    )
    .await
    .unwrap();
    assert_eq!(bad.is_error, Some(true));
    within(30, client.cancel()).await.unwrap();
}

#[tokio::test]
async fn bare_airlock_on_a_pipe_is_the_bridge_and_starts_a_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let url = format!("http://127.0.0.1:{}", free_port());
    // No arguments, stdin a pipe: the bridge. Nothing listens at the URL: it starts a daemon,
    // on the backend under test (the daemon it starts inherits AIRLOCK_STORE).
    let mut bridge = bridge_command(&url, &home, &[]);
    if let Some(store) = common::store_for_home(&home).await {
        bridge.env("AIRLOCK_STORE", store);
    }
    let child = TokioChildProcess::builder(bridge)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
        .0;
    let client = within(60, ().serve(child)).await.unwrap();
    // The daemon is started once the handshake is done; the first call finds it (or starts it).
    let r = within(
        60,
        client.call_tool(call("set_note", json!({"key": "k", "value": "v"}))),
    )
    .await
    .unwrap();
    assert_eq!(tool_json(&r), json!({"saved": true}));
    let pid: i32 = std::fs::read_to_string(home.join("daemon.lock"))
        .expect("the auto-started daemon holds daemon.lock")
        .trim()
        .parse()
        .unwrap();
    struct KillOnDrop(i32);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
            }
        }
    }
    let _daemon = KillOnDrop(pid);
    // The daemon it started listens where the URL points, and outlives the bridge.
    within(30, client.cancel()).await.unwrap();
    let token = std::fs::read_to_string(home.join("token")).unwrap();
    let body: Value = reqwest::Client::new()
        .post(&url)
        .bearer_auth(token.trim())
        .header("Content-Type", "application/json")
        .body(
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "get_note", "arguments": {"key": "k"}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let got: Value =
        serde_json::from_str(body["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(got["value"], "v");
    assert!(home.join("daemon.log").exists());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(home.join("daemon.log"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "daemon.log is private like every other file"
    );
}

#[tokio::test]
async fn install_service_without_a_systemd_user_instance_says_so_and_changes_nothing() {
    let has_user_systemd = std::process::Command::new("systemctl")
        .args(["--user", "show-environment"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !cfg!(target_os = "linux") || has_user_systemd {
        eprintln!(
            "\n*** SKIPPED: a systemd user instance is running here; this test would install a \
             real service ***\n"
        );
        return;
    }
    let d = Daemon::start().await;
    let home = tempfile::tempdir().unwrap();
    let r = ran(within(
        30,
        cmd(&d, &["install-service"])
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .output(),
    )
    .await
    .unwrap());
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(
        r.stderr.contains("no systemd user instance"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("serve >>"),
        "the manual alternative: {}",
        r.stderr
    );
    assert!(!home.path().join(".config").exists());
}

/// Slow (one full 50 s window): `airlock run --wait forever` calls again with its wake_token
/// when the daemon's window ends, so it keeps its place ahead of a later waiter.
#[tokio::test]
async fn run_keeps_its_place_in_line_past_one_50s_window() {
    let d = Daemon::start().await;
    let held = d
        .call(
            "lock_resource",
            json!({"name": "long", "agent_id": "holder"}),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let script = format!("touch {}", marker.display());
    let run = cmd(
        &d,
        &[
            "run", "--lock", "long", "--agent", "first", "--", "sh", "-c", &script,
        ],
    )
    .spawn()
    .unwrap();
    until_waiters(&d, "long", 1).await;
    // A later waiter, who re-calls with its retry_with when its own window ends.
    let later = {
        let url = d.url.clone();
        let token = d.token.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let call = |args: Value| {
                let http = http.clone();
                let url = url.clone();
                let token = token.clone();
                async move {
                    let body: Value = http
                        .post(&url)
                        .bearer_auth(token)
                        .header("Content-Type", "application/json")
                        .body(
                            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                   "params": {"name": "lock_resource", "arguments": args}})
                            .to_string(),
                        )
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    serde_json::from_str::<Value>(
                        body["result"]["content"][0]["text"].as_str().unwrap(),
                    )
                    .unwrap()
                }
            };
            let first =
                call(json!({"name": "long", "agent_id": "second", "wait_seconds": 50})).await;
            assert_eq!(first["locked"], false, "{first}");
            call(first["retry_with"].clone()).await
        })
    };
    until_waiters(&d, "long", 2).await;
    // Both windows end (the run's first, at about 50 s); both call again.
    tokio::time::sleep(Duration::from_secs(53)).await;
    assert!(!marker.exists());
    d.call(
        "unlock_resource",
        json!({"name": "long", "lock_token": held["lock_token"]}),
    )
    .await;
    let status = within(60, run.wait_with_output()).await.unwrap().status;
    assert_eq!(status.code(), Some(0));
    assert!(
        marker.exists(),
        "the run, first in line, got the lock first"
    );
    // Then the later waiter gets it.
    let second = within(60, later).await.unwrap();
    assert_eq!(second["locked"], true, "{second}");
}

#[tokio::test]
async fn run_renews_its_lock_while_the_command_runs() {
    let d = Daemon::start().await;
    let mut run = cmd(
        &d,
        &[
            "run",
            "--lock",
            "renewed",
            "--ttl",
            "3",
            "--agent",
            "runner",
            "--",
            "sh",
            "-c",
            "echo up; read _",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut out = BufReader::new(run.stdout.take().unwrap()).lines();
    assert_eq!(
        within(30, out.next_line()).await.unwrap().as_deref(),
        Some("up")
    );
    // More than twice the TTL: without renewal the lock would have expired.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let locks = d.call("list_locks", json!({})).await;
    assert_eq!(locks[0]["name"], "renewed", "{locks}");
    assert_eq!(locks[0]["agent_id"], "runner", "{locks}");
    let mut stdin = run.stdin.take().unwrap();
    stdin.write_all(b"done\n").await.unwrap();
    drop(stdin);
    assert_eq!(within(30, run.wait()).await.unwrap().code(), Some(0));
    assert_eq!(d.call("list_locks", json!({})).await, json!([]));
}

#[tokio::test]
async fn status_endpoint_is_behind_the_token() {
    let d = Daemon::start().await;
    let r = d
        .http
        .get(format!("{}/status", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = d
        .http
        .get(format!("{}/status", d.url))
        .bearer_auth(&d.token)
        .header("Origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
}

#[tokio::test]
async fn a_call_cancelled_through_the_bridge_leaves_the_line() {
    let d = Daemon::start().await;
    let child = TokioChildProcess::builder(bridge_command(&d.url, &d.home, &["mcp"]))
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
        .0;
    let client = within(30, ().serve(child)).await.unwrap();
    d.call("lock_resource", json!({"name": "c", "agent_id": "a"}))
        .await;
    let waiting = tokio::spawn({
        let peer = client.peer().clone();
        async move {
            peer.call_tool(call(
                "lock_resource",
                json!({"name": "c", "agent_id": "quitter", "wait_seconds": 50}),
            ))
            .await
        }
    });
    until_waiters(&d, "c", 1).await;
    // Dropping the request makes the rmcp client send notifications/cancelled.
    waiting.abort();
    within(30, async {
        loop {
            let v = d.call("list_locks", json!({})).await;
            let st: Value = d
                .http
                .get(format!("{}/status", d.url))
                .bearer_auth(&d.token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if st["locks"][0]["waiters"] == 0 {
                assert_eq!(v[0]["agent_id"], "a");
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    within(30, client.cancel()).await.unwrap();
}
