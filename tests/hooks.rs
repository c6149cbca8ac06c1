//! `airlock hook …` run as the real binary against a real daemon: recorded Claude Code hook
//! events (tests/fixtures/claude) fed on stdin, settings.json merged and unmerged, and the git
//! pre-commit guard in a temporary repository.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::{airlock_bin, within, Daemon};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// A temporary git repository with `src/a.rs`, a symlink `link -> src`, and `.airlock.toml`.
struct Repo {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

fn repo(config: &str) -> Repo {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap().join("repo");
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(root.join("src/a.rs"), "x = 1\n").unwrap();
    std::os::unix::fs::symlink(root.join("src"), root.join("link")).unwrap();
    std::fs::write(root.join(".airlock.toml"), config).unwrap();
    git(&root, &["init", "-q"]);
    git(&root, &["config", "user.email", "t@example.com"]);
    git(&root, &["config", "user.name", "t"]);
    Repo { _tmp: tmp, root }
}

fn git(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run git")
}

/// A recorded event with its placeholders filled in.
fn event(name: &str, session: &str, cwd: &Path, file: &str, command: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/claude")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap();
    // JSON-escaped, without the quotes.
    let esc = |s: &str| {
        let q = serde_json::to_string(s).unwrap();
        q[1..q.len() - 1].to_string()
    };
    text.replace("__SESSION__", &esc(session))
        .replace("__CWD__", &esc(&cwd.to_string_lossy()))
        .replace("__FILE__", &esc(file))
        .replace("__COMMAND__", &esc(command))
}

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `airlock hook claude ARGS` with `stdin`, in `cwd`, aimed at `url`.
async fn hook_at(
    url: &str,
    home: &Path,
    cwd: &Path,
    stdin: String,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Ran {
    let mut c = tokio::process::Command::new(airlock_bin());
    c.args(["hook", "claude"])
        .args(args)
        .current_dir(cwd)
        .env("AIRLOCK_URL", url)
        .env("AIRLOCK_HOME", home)
        .env_remove("AIRLOCK_TOKEN")
        .env_remove("AIRLOCK_AGENT")
        .env_remove("CLAUDE_ENV_FILE")
        .env_remove("AIRLOCK_HOOK_WAIT_SECONDS")
        .env_remove("AIRLOCK_HOOK_PRESENCE_TTL_SECONDS")
        .env_remove("AIRLOCK_HOOK_RELEASE")
        .env_remove("AIRLOCK_HOOK_ON_UNREACHABLE")
        .envs(envs.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = c.spawn().expect("spawn airlock hook claude");
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.as_bytes()).await.unwrap();
    drop(pipe);
    let out = within(120, child.wait_with_output()).await.unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn hook(d: &Daemon, r: &Repo, stdin: String, envs: &[(&str, &str)]) -> Ran {
    hook_at(&d.url, &d.home, &r.root, stdin, &[], envs).await
}

/// A session's edit of `file`.
fn edit(session: &str, r: &Repo, file: &str) -> String {
    event("pre_tool_use_edit", session, &r.root, file, "")
}

fn stop(session: &str, r: &Repo) -> String {
    event("stop", session, &r.root, "", "")
}

fn holder_of(locks: &Value, name: &str) -> Option<String> {
    locks
        .as_array()?
        .iter()
        .find(|l| l["name"] == json!(name))
        .and_then(|l| l["agent_id"].as_str().map(str::to_string))
}

fn assert_code(r: &Ran, code: i32, what: &str) {
    assert_eq!(
        r.code, code,
        "{what}: stdout {:?} stderr {:?}",
        r.stdout, r.stderr
    );
}

#[tokio::test]
async fn one_file_is_one_lock_whatever_its_spelling_and_stop_lets_the_next_session_in() {
    let d = Daemon::start().await;
    let r = repo("wait_seconds = 1\n");
    let a = r.root.join("src/a.rs");

    let s1 = hook(&d, &r, edit("s1", &r, &a.to_string_lossy()), &[]).await;
    assert_code(&s1, 0, "session 1 edits src/a.rs");
    assert!(
        s1.stdout.trim().is_empty(),
        "an allowed edit says nothing: {:?}",
        s1.stdout
    );
    let lock = format!("file:{}", a.display());
    let locks = d.call("list_locks", json!({})).await;
    assert_eq!(
        holder_of(&locks, &lock).as_deref(),
        Some("claude:s1"),
        "{locks}"
    );

    // The same file through a symlinked directory, and through `./` and `..`.
    for spelling in [
        r.root.join("link/a.rs").to_string_lossy().into_owned(),
        "./src/../link/../src/a.rs".to_string(),
    ] {
        let s2 = hook(&d, &r, edit("s2", &r, &spelling), &[]).await;
        assert_code(&s2, 2, &format!("session 2 edits {spelling}"));
        assert!(
            s2.stderr.contains("claude:s1") && s2.stderr.contains("editing src/a.rs"),
            "the reason names the holder and what it is doing: {}",
            s2.stderr
        );
        assert!(
            s2.stderr.contains("work on something else"),
            "{}",
            s2.stderr
        );
    }

    // A file that does not exist yet, through the symlink: its parent is resolved.
    let new = hook(
        &d,
        &r,
        event(
            "pre_tool_use_write",
            "s1",
            &r.root,
            &r.root.join("link/new.rs").to_string_lossy(),
            "",
        ),
        &[],
    )
    .await;
    assert_code(&new, 0, "session 1 writes a new file");
    let locks = d.call("list_locks", json!({})).await;
    let new_lock = format!("file:{}", r.root.join("src/new.rs").display());
    assert_eq!(
        holder_of(&locks, &new_lock).as_deref(),
        Some("claude:s1"),
        "{locks}"
    );

    // The end of session 1's turn releases its locks (release = "turn", the default).
    let st = hook(&d, &r, stop("s1", &r), &[]).await;
    assert_code(&st, 0, "Stop");
    let s2 = hook(
        &d,
        &r,
        edit("s2", &r, &r.root.join("link/a.rs").to_string_lossy()),
        &[],
    )
    .await;
    assert_code(&s2, 0, "session 2 after session 1's Stop");
    let locks = d.call("list_locks", json!({})).await;
    assert_eq!(
        holder_of(&locks, &lock).as_deref(),
        Some("claude:s2"),
        "{locks}"
    );
    assert_eq!(holder_of(&locks, &new_lock), None, "{locks}");
}

#[tokio::test]
async fn release_per_session_keeps_locks_across_turns_until_session_end() {
    let d = Daemon::start().await;
    let r = repo("wait_seconds = 1\nrelease = \"session\"\n");
    let a = r.root.join("src/a.rs").to_string_lossy().into_owned();
    assert_code(&hook(&d, &r, edit("s1", &r, &a), &[]).await, 0, "s1 edits");
    assert_code(&hook(&d, &r, stop("s1", &r), &[]).await, 0, "s1 Stop");
    let s2 = hook(&d, &r, edit("s2", &r, &a), &[]).await;
    assert_code(&s2, 2, "s2 while s1's session lives");
    let end = hook(&d, &r, event("session_end", "s1", &r.root, "", ""), &[]).await;
    assert_code(&end, 0, "s1 SessionEnd");
    assert_code(
        &hook(&d, &r, edit("s2", &r, &a), &[]).await,
        0,
        "s2 after SessionEnd",
    );
    let agents = d.call("list_agents", json!({})).await;
    assert!(
        !agents.to_string().contains("claude:s1"),
        "SessionEnd unregisters the session: {agents}"
    );
}

#[tokio::test]
async fn a_crashed_sessions_locks_free_when_its_presence_lapses() {
    let d = Daemon::start().await;
    let r = repo("");
    let a = r.root.join("src/a.rs").to_string_lossy().into_owned();
    // Session 1 edits with a 3-second presence, then never calls again (it crashed).
    let s1 = hook(
        &d,
        &r,
        edit("s1", &r, &a),
        &[("AIRLOCK_HOOK_PRESENCE_TTL_SECONDS", "3")],
    )
    .await;
    assert_code(&s1, 0, "s1 edits");
    let agents = d.call("list_agents", json!({})).await;
    assert!(agents.to_string().contains("claude:s1"), "{agents}");
    // Session 2 waits (up to 50 s) and gets the file once session 1's presence lapses.
    let s2 = hook(
        &d,
        &r,
        edit("s2", &r, &a),
        &[("AIRLOCK_HOOK_WAIT_SECONDS", "50")],
    )
    .await;
    assert_code(&s2, 0, "s2 after s1's presence lapsed");
    let locks = d.call("list_locks", json!({})).await;
    let lock = format!("file:{a}");
    assert_eq!(
        holder_of(&locks, &lock).as_deref(),
        Some("claude:s2"),
        "{locks}"
    );
    let agents = d.call("list_agents", json!({})).await;
    assert!(!agents.to_string().contains("claude:s1"), "{agents}");
}

#[tokio::test]
async fn bash_rules_serialize_two_npm_installs() {
    let d = Daemon::start().await;
    let r = repo(
        "wait_seconds = 1\n\n[[rule]]\ncommand = \"npm install*\"\nlock = \"cmd:install\"\n\n\
         [[rule]]\ncommand = \"pip install*\"\nlock = \"cmd:install\"\n",
    );
    let bash = |s: &str, cmd: &str| event("pre_tool_use_bash", s, &r.root, "", cmd);
    assert_code(
        &hook(&d, &r, bash("s1", "npm install lodash"), &[]).await,
        0,
        "s1 installs",
    );
    let locks = d.call("list_locks", json!({})).await;
    assert_eq!(
        holder_of(&locks, "cmd:install").as_deref(),
        Some("claude:s1")
    );

    let s2 = hook(&d, &r, bash("s2", "cd web && CI=1 npm install"), &[]).await;
    assert_code(&s2, 2, "s2's npm install while s1's runs");
    assert!(
        s2.stderr.contains("cmd:install") && s2.stderr.contains("running `npm install lodash`"),
        "{}",
        s2.stderr
    );
    let pip = hook(&d, &r, bash("s2", "pip install requests"), &[]).await;
    assert_code(&pip, 2, "pip install shares the lock");
    assert_code(
        &hook(&d, &r, bash("s2", "npm test"), &[]).await,
        0,
        "no rule: no lock",
    );

    // Session 2 waits for the lock; session 1's command finishing (PostToolUse) lets it in.
    let waiting = {
        let (url, home, root) = (d.url.clone(), d.home.clone(), r.root.clone());
        let input = bash("s2", "npm install");
        tokio::spawn(async move {
            hook_at(
                &url,
                &home,
                &root,
                input,
                &[],
                &[("AIRLOCK_HOOK_WAIT_SECONDS", "50")],
            )
            .await
        })
    };
    let post = event(
        "post_tool_use_bash",
        "s1",
        &r.root,
        "",
        "npm install lodash",
    );
    assert_code(&hook(&d, &r, post, &[]).await, 0, "s1's PostToolUse");
    let s2 = waiting.await.unwrap();
    assert_code(&s2, 0, "s2's npm install after s1's finished");
    let locks = d.call("list_locks", json!({})).await;
    assert_eq!(
        holder_of(&locks, "cmd:install").as_deref(),
        Some("claude:s2"),
        "{locks}"
    );
    // A command that fails ends with PostToolUseFailure, which releases too.
    let failed = event(
        "post_tool_use_failure_bash",
        "s2",
        &r.root,
        "",
        "npm install",
    );
    assert_code(
        &hook(&d, &r, failed, &[]).await,
        0,
        "s2's PostToolUseFailure",
    );
    let locks = d.call("list_locks", json!({})).await;
    assert_eq!(holder_of(&locks, "cmd:install"), None, "{locks}");
}

#[tokio::test]
async fn an_unreachable_daemon_fails_open_with_a_warning_or_closed_on_request() {
    // An address where nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let r = repo("");
    let home = r.root.join(".home");
    let a = r.root.join("src/a.rs").to_string_lossy().into_owned();

    let open = hook_at(&url, &home, &r.root, edit("s1", &r, &a), &[], &[]).await;
    assert_code(&open, 0, "fail open");
    let answer: Value = serde_json::from_str(open.stdout.trim()).expect("JSON on stdout");
    let msg = answer["systemMessage"].as_str().unwrap_or_default();
    assert!(
        msg.contains("WITHOUT a lock") && msg.contains("no airlock daemon answers"),
        "a visible warning: {}",
        open.stdout
    );

    let closed = hook_at(
        &url,
        &home,
        &r.root,
        edit("s1", &r, &a),
        &["--fail-closed"],
        &[],
    )
    .await;
    assert_code(&closed, 2, "--fail-closed");
    assert!(closed.stderr.contains("unreachable"), "{}", closed.stderr);

    std::fs::write(r.root.join(".airlock.toml"), "on_unreachable = \"deny\"\n").unwrap();
    let closed = hook_at(&url, &home, &r.root, edit("s1", &r, &a), &[], &[]).await;
    assert_code(&closed, 2, "on_unreachable = deny");

    // Never exit 2 on Stop: it would make the model go on forever.
    let st = hook_at(
        &url,
        &home,
        &r.root,
        stop("s1", &r),
        &["--fail-closed"],
        &[],
    )
    .await;
    assert_code(&st, 0, "Stop with the daemon down");
    // A tool that needs no lock is not held up or warned about.
    let read = edit("s1", &r, &a).replace("\"Edit\"", "\"Read\"");
    let rd = hook_at(&url, &home, &r.root, read, &["--fail-closed"], &[]).await;
    assert_code(&rd, 0, "Read with the daemon down");
    assert!(rd.stdout.trim().is_empty(), "{}", rd.stdout);
}

#[tokio::test]
async fn session_start_gives_the_session_its_id_and_ignored_paths_take_no_lock() {
    let d = Daemon::start().await;
    let r = repo("ignore = [\"target/**\"]\n");
    let env_file = r.root.join(".claude-env");
    let env_path = env_file.to_string_lossy().into_owned();
    let start = event("session_start", "s1", &r.root, "", "");
    let ran = hook(&d, &r, start, &[("CLAUDE_ENV_FILE", &env_path)]).await;
    assert_code(&ran, 0, "SessionStart");
    let answer: Value = serde_json::from_str(ran.stdout.trim()).expect("JSON on stdout");
    let ctx = answer["hookSpecificOutput"]["additionalContext"]
        .as_str()
        .unwrap_or_default();
    assert!(ctx.contains("\"claude:s1\""), "{ctx}");
    assert_eq!(
        answer["hookSpecificOutput"]["hookEventName"],
        "SessionStart"
    );
    let exported = std::fs::read_to_string(&env_file).unwrap();
    assert_eq!(exported, "export AIRLOCK_AGENT='claude:s1'\n");
    let agents = d.call("list_agents", json!({})).await;
    assert!(agents.to_string().contains("claude:s1"), "{agents}");
    let prompt = event("user_prompt_submit", "s1", &r.root, "", "");
    let ran = hook(&d, &r, prompt, &[]).await;
    assert_code(&ran, 0, "UserPromptSubmit");
    assert!(ran.stdout.trim().is_empty(), "{}", ran.stdout);

    std::fs::create_dir_all(r.root.join("target")).unwrap();
    let gen = r.root.join("target/gen.rs").to_string_lossy().into_owned();
    assert_code(
        &hook(&d, &r, edit("s1", &r, &gen), &[]).await,
        0,
        "s1, ignored",
    );
    assert_code(
        &hook(&d, &r, edit("s2", &r, &gen), &[]).await,
        0,
        "s2, ignored",
    );
    let locks = d.call("list_locks", json!({})).await;
    assert_eq!(locks, json!([]), "ignored paths take no lock");
}

#[tokio::test]
async fn a_broken_config_is_named_by_line_and_file_locks_still_hold() {
    let d = Daemon::start().await;
    let r = repo("wait_seconds = 1\nrelease = \"sometimes\"\n");
    let a = r.root.join("src/a.rs").to_string_lossy().into_owned();
    let s1 = hook(&d, &r, edit("s1", &r, &a), &[]).await;
    assert_code(&s1, 0, "s1 with a broken config");
    assert!(
        s1.stdout.contains(".airlock.toml") && s1.stdout.contains("line 2"),
        "{}",
        s1.stdout
    );
    assert!(
        s1.stdout.contains("systemMessage"),
        "the user sees it: {}",
        s1.stdout
    );
    let garbage = hook(&d, &r, "not json".to_string(), &[]).await;
    assert_code(&garbage, 1, "garbage on stdin is a non-blocking hook error");
}

/// `airlock hook install|uninstall …` in `cwd` with HOME at `home`.
async fn install_cmd(cwd: &Path, home: &Path, args: &[&str]) -> Ran {
    let out = tokio::process::Command::new(airlock_bin())
        .arg("hook")
        .args(args)
        .current_dir(cwd)
        .env("HOME", home)
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn hook_install_is_idempotent_keeps_other_settings_and_uninstalls_only_ours() {
    let r = repo("");
    let home = r.root.join(".home");
    std::fs::create_dir_all(&home).unwrap();
    let settings = r.root.join(".claude/settings.json");
    std::fs::create_dir_all(settings.parent().unwrap()).unwrap();
    let original = json!({
        "model": "opus",
        "permissions": {"allow": ["Bash(npm test)"]},
        "hooks": {"PreToolUse": [{"matcher": "Bash",
                  "hooks": [{"type": "command", "command": "./scripts/check.sh"}]}]}
    });
    std::fs::write(&settings, original.to_string()).unwrap();

    let printed = install_cmd(&r.root, &home, &["install", "claude", "--print"]).await;
    assert_code(&printed, 0, "install --print");
    assert!(printed.stdout.contains("hook claude"), "{}", printed.stdout);
    let now: Value = serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    assert_eq!(now, original, "--print changes nothing");

    assert_code(
        &install_cmd(&r.root, &home, &["install", "claude"]).await,
        0,
        "install",
    );
    let once = std::fs::read_to_string(&settings).unwrap();
    let v: Value = serde_json::from_str(&once).unwrap();
    assert_eq!(v["model"], "opus");
    assert_eq!(v["permissions"], original["permissions"]);
    let pre = v["hooks"]["PreToolUse"].as_array().unwrap();
    assert_eq!(pre.len(), 2, "the user's hook and ours: {v}");
    assert_eq!(pre[0], original["hooks"]["PreToolUse"][0]);
    for event in [
        "SessionStart",
        "PreToolUse",
        "PostToolUse",
        "Stop",
        "SessionEnd",
    ] {
        assert!(
            v["hooks"][event].to_string().contains("hook claude"),
            "{event}: {v}"
        );
    }
    let bin = airlock_bin().canonicalize().unwrap();
    assert!(
        once.contains(&*bin.to_string_lossy()),
        "runs this binary: {once}"
    );

    assert_code(
        &install_cmd(&r.root, &home, &["install", "claude"]).await,
        0,
        "again",
    );
    assert_eq!(
        std::fs::read_to_string(&settings).unwrap(),
        once,
        "idempotent"
    );

    assert_code(
        &install_cmd(&r.root, &home, &["uninstall", "claude"]).await,
        0,
        "uninstall",
    );
    let back: Value = serde_json::from_str(&std::fs::read_to_string(&settings).unwrap()).unwrap();
    assert_eq!(back, original, "uninstall removes only ours");

    // The user's settings.
    let user = home.join(".claude/settings.json");
    let u = install_cmd(&r.root, &home, &["install", "claude", "--scope", "user"]).await;
    assert_code(&u, 0, "install --scope user");
    assert!(std::fs::read_to_string(&user)
        .unwrap()
        .contains("hook claude"));
    let u = install_cmd(&r.root, &home, &["uninstall", "claude", "--scope", "user"]).await;
    assert_code(&u, 0, "uninstall --scope user");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&user).unwrap()).unwrap();
    assert_eq!(v, json!({}));
}

#[tokio::test]
async fn the_pre_commit_guard_refuses_then_allows_a_commit() {
    let d = Daemon::start().await;
    let r = repo("");
    // A pre-commit hook already there: kept, and run first.
    let hooks = r.root.join(".git/hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let marker = r.root.join(".chained-ran");
    std::fs::write(
        hooks.join("pre-commit"),
        format!("#!/bin/sh\ntouch '{}'\n", marker.display()),
    )
    .unwrap();
    let mut perm = std::fs::metadata(hooks.join("pre-commit"))
        .unwrap()
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(hooks.join("pre-commit"), perm).unwrap();
    let original_hook = std::fs::read_to_string(hooks.join("pre-commit")).unwrap();

    let home = r.root.join(".home");
    assert_code(
        &install_cmd(&r.root, &home, &["install", "git"]).await,
        0,
        "install git",
    );
    assert_code(
        &install_cmd(&r.root, &home, &["install", "git"]).await,
        0,
        "install git again",
    );

    // Session s1 edits src/a.rs (and holds it); a commit staging it is refused.
    let a = r.root.join("src/a.rs").to_string_lossy().into_owned();
    assert_code(&hook(&d, &r, edit("s1", &r, &a), &[]).await, 0, "s1 edits");
    git(&r.root, &["add", "src/a.rs"]);
    let commit = |agent: Option<&str>| {
        let mut c = std::process::Command::new("git");
        c.args(["commit", "-q", "-m", "change"])
            .current_dir(&r.root)
            .env("AIRLOCK_URL", &d.url)
            .env("AIRLOCK_HOME", &d.home)
            .env_remove("AIRLOCK_TOKEN")
            .env_remove("AIRLOCK_AGENT");
        if let Some(a) = agent {
            c.env("AIRLOCK_AGENT", a);
        }
        c.output().unwrap()
    };
    let refused = commit(Some("claude:s2"));
    assert!(
        !refused.status.success(),
        "a commit by another agent is refused"
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("src/a.rs") && err.contains("claude:s1"),
        "{err}"
    );
    assert!(marker.exists(), "the previous pre-commit hook ran first");
    assert!(
        !commit(None).status.success(),
        "and one by nobody in particular"
    );

    // The holder itself may commit its own files.
    let own = commit(Some("claude:s1"));
    assert!(
        own.status.success(),
        "{}",
        String::from_utf8_lossy(&own.stderr)
    );

    // Once s1's turn ends, anyone may.
    std::fs::write(r.root.join("src/a.rs"), "x = 3\n").unwrap();
    assert_code(
        &hook(&d, &r, edit("s1", &r, &a), &[]).await,
        0,
        "s1 edits again",
    );
    git(&r.root, &["add", "src/a.rs"]);
    assert!(!commit(None).status.success());
    assert_code(&hook(&d, &r, stop("s1", &r), &[]).await, 0, "s1 Stop");
    let ok = commit(None);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    assert_code(
        &install_cmd(&r.root, &home, &["uninstall", "git"]).await,
        0,
        "uninstall git",
    );
    assert_eq!(
        std::fs::read_to_string(hooks.join("pre-commit")).unwrap(),
        original_hook,
        "the previous hook is back"
    );
    assert!(!hooks.join("pre-commit.airlock-chained").exists());
}
