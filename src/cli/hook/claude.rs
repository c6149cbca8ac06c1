//! `airlock hook claude`: the Claude Code hook command. Claude Code runs it on each hook event
//! with one JSON object on stdin; it answers with its exit code, stderr and stdout.
//!
//! - `PreToolUse` on a file tool (`Edit`, `Write`, `MultiEdit`, `NotebookEdit`) takes
//!   `file:<real path>` for the agent `claude:<session_id>`, waiting up to `wait_seconds`;
//!   refused, it exits 2 and stderr tells the model who holds the file and what it is doing.
//! - `PreToolUse` on `Bash` takes the locks the repository's rules give the command line;
//!   `PostToolUse` / `PostToolUseFailure` release them.
//! - Every event renews the session's presence (`register_agent`, `presence_ttl_seconds`), and
//!   a session's locks go when its presence lapses: a crashed session frees its files within
//!   `presence_ttl_seconds` of its last hook call.
//! - `Stop` releases the session's locks (release = "turn"), `SessionEnd` unregisters it. Neither
//!   ever exits 2: a blocking `Stop` would make the model go on forever.
//! - `SessionStart` tells the model its agent id and exports `AIRLOCK_AGENT` to its shell.
//! - An unreachable daemon lets the tool call go ahead with a visible warning, unless
//!   `on_unreachable = "deny"` or `--fail-closed`.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

use super::config::{HookConfig, OnUnreachable, Release};
use super::{doing_key, file_lock, release_all, resolve_path, session_agent, ClaudeArgs};
use crate::cli::client::{Client, ClientError};

/// Tools that write one file, and the `tool_input` field naming it.
const FILE_TOOLS: &[(&str, &str)] = &[
    ("Edit", "file_path"),
    ("Write", "file_path"),
    ("MultiEdit", "file_path"),
    ("NotebookEdit", "notebook_path"),
];
/// TTL of an edit's file lock. The holder's presence is what bounds it (a lapse releases every
/// lock of the agent); this is only a backstop for a presence that somehow outlives its session.
const FILE_LOCK_TTL_SECONDS: u64 = 86_400;
/// Claude Code's default Bash timeout, when the call names none.
const DEFAULT_BASH_TIMEOUT_MS: u64 = 120_000;
/// How long a command lock outlives the command's own timeout, should `PostToolUse` never come.
const COMMAND_LOCK_MARGIN_SECONDS: u64 = 60;
/// The longest command line quoted back in messages.
const QUOTE_CHARS: usize = 120;

/// The parts of a hook event the hook reads. Everything else (and every field a future Claude
/// Code adds) is ignored.
#[derive(Deserialize)]
struct Payload {
    session_id: String,
    #[serde(default)]
    cwd: Option<PathBuf>,
    hook_event_name: String,
    #[serde(default)]
    tool_name: Option<String>,
    #[serde(default)]
    tool_input: Value,
}

/// What the hook tells Claude Code.
#[derive(Default)]
struct Answer {
    /// Refuse the tool call with this reason (PreToolUse only; shown to the model).
    deny: Option<String>,
    /// Shown to the user (`systemMessage`) and written to stderr.
    warnings: Vec<String>,
    /// Added to the model's context (`SessionStart`).
    context: Option<String>,
}

impl Answer {
    fn warn(msg: String) -> Answer {
        Answer {
            warnings: vec![msg],
            ..Answer::default()
        }
    }

    fn deny(msg: String) -> Answer {
        Answer {
            deny: Some(msg),
            ..Answer::default()
        }
    }
}

/// Runs the hook on the event on stdin and returns the exit code.
pub async fn run(client: &Client, args: &ClaudeArgs) -> i32 {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("airlock hook claude: cannot read the hook event on stdin: {e}");
        return 1;
    }
    let payload: Payload = match serde_json::from_str(&input) {
        Ok(p) => p,
        Err(e) => {
            // Exit 1 is a non-blocking hook error: reported, and the tool call goes ahead.
            eprintln!(
                "airlock hook claude: the hook event on stdin is not what Claude Code sends \
                 ({e}); expected a JSON object with session_id and hook_event_name"
            );
            return 1;
        }
    };
    let event = payload.hook_event_name.clone();
    let answer = handle(client, args, payload).await;
    finish(&event, answer)
}

/// Writes the answer and returns the exit code. Only `PreToolUse` may ever block (exit 2).
fn finish(event: &str, mut answer: Answer) -> i32 {
    if let Some(reason) = answer.deny.take() {
        if event == "PreToolUse" {
            eprintln!("{reason}");
            return 2;
        }
        answer.warnings.push(reason);
    }
    for w in &answer.warnings {
        eprintln!("{w}");
    }
    let mut out = serde_json::Map::new();
    if !answer.warnings.is_empty() {
        out.insert("systemMessage".into(), json!(answer.warnings.join("\n")));
    }
    if let Some(ctx) = answer.context {
        out.insert(
            "hookSpecificOutput".into(),
            json!({"hookEventName": event, "additionalContext": ctx}),
        );
    }
    if !out.is_empty() {
        println!("{}", Value::Object(out));
    }
    0
}

async fn handle(client: &Client, args: &ClaudeArgs, p: Payload) -> Answer {
    let cwd = p
        .cwd
        .clone()
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut config_warning = None;
    let mut cfg = match HookConfig::load(&cwd) {
        Ok(c) => c,
        Err(e) => {
            config_warning = Some(format!(
                "airlock: {e}; using the defaults until it is fixed"
            ));
            HookConfig::defaults(super::config::find_root(&cwd).0)
        }
    };
    if args.fail_closed {
        cfg.on_unreachable = OnUnreachable::Deny;
    }
    let agent = session_agent(&p.session_id);
    let mut answer = match p.hook_event_name.as_str() {
        "PreToolUse" => pre_tool_use(client, &cfg, &agent, &cwd, &p).await,
        "PostToolUse" | "PostToolUseFailure" => post_tool_use(client, &cfg, &agent, &p).await,
        "SessionStart" => session_start(client, &cfg, &agent).await,
        "UserPromptSubmit" => quietly(register(client, &cfg, &agent).await),
        "Stop" => match cfg.release {
            Release::Turn => quietly(release_all(client, &agent).await.map(|_| ())),
            Release::Session => quietly(register(client, &cfg, &agent).await),
        },
        "SessionEnd" => quietly(session_end(client, &agent).await),
        _ => Answer::default(),
    };
    answer.warnings.extend(config_warning);
    answer
}

/// Events that only keep the books: a failure is worth a line on stderr, never a warning in
/// the user's face on every prompt.
fn quietly(r: Result<(), ClientError>) -> Answer {
    if let Err(e) = r {
        eprintln!("airlock: {e}");
    }
    Answer::default()
}

/// Registers (or renews) the session's presence.
async fn register(client: &Client, cfg: &HookConfig, agent: &str) -> Result<(), ClientError> {
    client
        .call(
            "register_agent",
            json!({"agent_id": agent, "ttl_seconds": cfg.presence_ttl_seconds}),
        )
        .await
        .map(|_| ())
}

async fn session_start(client: &Client, cfg: &HookConfig, agent: &str) -> Answer {
    let mut answer = quietly(register(client, cfg, agent).await);
    // Claude Code sources this file before each Bash command: `airlock lock`, `airlock run` and
    // the git guard then act as this session.
    if let Some(env_file) = std::env::var_os("CLAUDE_ENV_FILE").filter(|f| !f.is_empty()) {
        if !agent.contains('\'') {
            let line = format!("export AIRLOCK_AGENT='{agent}'\n");
            let r = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&env_file)
                .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
            if let Err(e) = r {
                eprintln!(
                    "airlock: cannot write {}: {e}",
                    Path::new(&env_file).display()
                );
            }
        }
    }
    let release = match cfg.release {
        Release::Turn => "at the end of each turn",
        Release::Session => "when this session ends",
    };
    answer.context = Some(format!(
        "airlock coordinates this repository with other agents. Your airlock agent_id is \
         \"{agent}\": pass it as agent_id if you call airlock's tools. Hooks lock each file you \
         edit for you and release the locks {release}. If an edit is refused because another \
         agent holds the file, do not retry it at once: work on something else, then come back."
    ));
    answer
}

/// The session is over: it leaves (releasing its locks and leases) and its note goes.
async fn session_end(client: &Client, agent: &str) -> Result<(), ClientError> {
    client
        .call("unregister_agent", json!({"agent_id": agent}))
        .await?;
    client
        .call("delete_note", json!({"key": doing_key(agent)}))
        .await
        .map(|_| ())
}

/// What a tool call needs: its locks, their TTL, and a phrase saying what it does.
struct Need {
    locks: Vec<String>,
    ttl_seconds: u64,
    doing: String,
    /// The thing refused, for the message ("src/a.rs", "the command `npm install`").
    what: String,
}

fn need(cfg: &HookConfig, cwd: &Path, tool: &str, input: &Value) -> Option<Need> {
    if let Some((_, field)) = FILE_TOOLS.iter().find(|(t, _)| *t == tool) {
        let path = input[*field].as_str().filter(|s| !s.is_empty())?;
        let real = resolve_path(cwd, Path::new(path));
        if cfg.ignored(&real) {
            return None;
        }
        let shown = cfg
            .relative(&real)
            .map(|r| r.display().to_string())
            .unwrap_or_else(|| real.display().to_string());
        let mut locks = vec![file_lock(&real)];
        locks.extend(cfg.path_locks(&real));
        return Some(Need {
            locks,
            ttl_seconds: FILE_LOCK_TTL_SECONDS,
            doing: format!("editing {shown} ({tool})"),
            what: shown,
        });
    }
    if tool == "Bash" {
        let command = input["command"].as_str().unwrap_or_default();
        let locks = cfg.command_locks(command);
        if locks.is_empty() {
            return None;
        }
        let timeout_ms = input["timeout"].as_u64().unwrap_or(DEFAULT_BASH_TIMEOUT_MS);
        let quoted = quote(command);
        return Some(Need {
            locks,
            ttl_seconds: timeout_ms.div_ceil(1000) + COMMAND_LOCK_MARGIN_SECONDS,
            doing: format!("running `{quoted}`"),
            what: format!("the command `{quoted}`"),
        });
    }
    None
}

fn quote(command: &str) -> String {
    let one_line = command.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= QUOTE_CHARS {
        return one_line;
    }
    let cut: String = one_line.chars().take(QUOTE_CHARS).collect();
    format!("{cut}…")
}

async fn pre_tool_use(
    client: &Client,
    cfg: &HookConfig,
    agent: &str,
    cwd: &Path,
    p: &Payload,
) -> Answer {
    let tool = p.tool_name.as_deref().unwrap_or_default();
    let need = need(cfg, cwd, tool, &p.tool_input);
    // Every tool call renews presence, so a long turn keeps its locks.
    if let Err(e) = register(client, cfg, agent).await {
        return match need {
            Some(n) => unreachable(cfg, &n.what, e),
            None => quietly(Err(e)),
        };
    }
    let Some(need) = need else {
        return Answer::default();
    };
    let taken = take(client, cfg, agent, &need).await;
    match taken {
        Err(e) => unreachable(cfg, &need.what, e),
        Ok(Taken::Granted) => {
            let note = json!({"key": doing_key(agent), "value": need.doing,
                              "author": agent, "ttl_seconds": cfg.presence_ttl_seconds});
            if let Err(e) = client.call("set_note", note).await {
                eprintln!("airlock: {e}");
            }
            Answer::default()
        }
        Ok(Taken::Refused { lock, holder }) => {
            Answer::deny(refusal(client, cfg, &need, tool, &lock, holder.as_deref()).await)
        }
    }
}

enum Taken {
    Granted,
    Refused {
        lock: String,
        holder: Option<String>,
    },
}

async fn take(
    client: &Client,
    cfg: &HookConfig,
    agent: &str,
    need: &Need,
) -> Result<Taken, ClientError> {
    let (r, contended) = if let [name] = need.locks.as_slice() {
        let args = json!({"name": name, "agent_id": agent, "ttl_seconds": need.ttl_seconds,
                          "wait_seconds": cfg.wait_seconds});
        (client.call("lock_resource", args).await?, name.clone())
    } else {
        let args = json!({"names": need.locks, "agent_id": agent,
                          "ttl_seconds": need.ttl_seconds, "wait_seconds": cfg.wait_seconds});
        let r = client.call("lock_resources", args).await?;
        let contended = r["contended"].as_str().unwrap_or_default().to_string();
        (r, contended)
    };
    if r["locked"] == json!(true) {
        return Ok(Taken::Granted);
    }
    Ok(Taken::Refused {
        lock: contended,
        holder: r["held_by"].as_str().map(str::to_string),
    })
}

/// The reason the model reads: who holds what, what it is doing, and what to do instead.
async fn refusal(
    client: &Client,
    cfg: &HookConfig,
    need: &Need,
    tool: &str,
    lock: &str,
    holder: Option<&str>,
) -> String {
    let holder_text = match holder {
        Some(h) => {
            let doing = client
                .call("get_note", json!({"key": doing_key(h)}))
                .await
                .ok()
                .and_then(|n| n["value"].as_str().map(str::to_string));
            match doing {
                Some(d) => format!("another agent, {h}, which is {d}"),
                None => format!("another agent, {h}"),
            }
        }
        None => "another agent".to_string(),
    };
    format!(
        "airlock refused this {tool}: {} needs the lock `{lock}`, held by {holder_text}. Waited \
         {} s for it. Do not retry this right away: work on something else first (another file \
         or another part of the task), then try again; the lock frees when that agent finishes \
         its turn or its session ends. `airlock locks` lists every lock and its holder.",
        need.what, cfg.wait_seconds
    )
}

/// The daemon could not be asked: go ahead with a warning, or refuse if the repository says so.
fn unreachable(cfg: &HookConfig, what: &str, e: ClientError) -> Answer {
    match cfg.on_unreachable {
        OnUnreachable::Allow => Answer::warn(format!(
            "airlock: {e}. {what} goes ahead WITHOUT a lock (on_unreachable = \"allow\")."
        )),
        OnUnreachable::Deny => Answer::deny(format!(
            "airlock refused this: it cannot check the lock for {what} ({e}). This repository \
             refuses edits while the airlock daemon is unreachable (on_unreachable = \"deny\"); \
             ask the user to start it (`airlock serve` or `airlock install-service`)."
        )),
    }
}

async fn post_tool_use(client: &Client, cfg: &HookConfig, agent: &str, p: &Payload) -> Answer {
    if p.tool_name.as_deref() != Some("Bash") {
        return quietly(register(client, cfg, agent).await);
    }
    let command = p.tool_input["command"].as_str().unwrap_or_default();
    for name in cfg.command_locks(command) {
        let r = client
            .call("unlock_resource", json!({"name": name, "agent_id": agent}))
            .await;
        if let Err(e) = r {
            return quietly(Err(e));
        }
    }
    Answer::default()
}
