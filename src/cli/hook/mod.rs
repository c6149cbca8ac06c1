//! `airlock hook …`: coordination that happens whether or not the model cooperates.
//!
//! - [`claude`]: `airlock hook claude`, the Claude Code hook command (file and command locks,
//!   presence, release at the end of a turn or session).
//! - [`git`]: `airlock hook git pre-commit`, which refuses a commit staging files another agent
//!   holds.
//! - [`install`]: `airlock hook install|uninstall claude|git`.
//! - [`config`]: the repository's `.airlock.toml`.
//!
//! Every hook is a client of the daemon like any agent; none opens the database.

pub mod claude;
pub mod config;
pub mod git;
pub mod install;

use std::path::{Component, Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use super::client::{Client, ClientError};

/// `airlock hook …`.
#[derive(Subcommand, Debug)]
pub enum HookCmd {
    /// The Claude Code hook: reads one hook event as JSON on stdin (configure it with
    /// `airlock hook install claude`).
    Claude(ClaudeArgs),
    /// Git hooks: `airlock hook git pre-commit` (configure it with `airlock hook install git`).
    Git {
        #[command(subcommand)]
        hook: GitHook,
    },
    /// Add airlock's hooks to Claude Code's settings or to this git repository.
    Install(InstallArgs),
    /// Remove airlock's hooks again (and only those).
    Uninstall(InstallArgs),
}

#[derive(Args, Debug)]
pub struct ClaudeArgs {
    /// Refuse edits when the daemon cannot be reached (the default lets them through with a
    /// warning). Same as `on_unreachable = "deny"` in .airlock.toml.
    #[arg(long)]
    pub fail_closed: bool,
}

#[derive(Subcommand, Debug)]
pub enum GitHook {
    /// Refuse a commit that stages files locked by another agent.
    PreCommit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// Claude Code's settings.json.
    Claude,
    /// This repository's git pre-commit hook.
    Git,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scope {
    /// `.claude/settings.json` in the repository (shared with the team when committed).
    Project,
    /// `~/.claude/settings.json` (every project of this user).
    User,
}

#[derive(Args, Debug)]
pub struct InstallArgs {
    pub target: Target,
    /// Where Claude Code's hooks go.
    #[arg(long, value_enum, default_value = "project")]
    pub scope: Scope,
    /// Show the result and change nothing.
    #[arg(long)]
    pub print: bool,
}

/// Runs `airlock hook …` and returns the exit code.
pub async fn run(client: &Client, cmd: HookCmd) -> i32 {
    match cmd {
        HookCmd::Claude(args) => claude::run(client, &args).await,
        HookCmd::Git {
            hook: GitHook::PreCommit,
        } => git::pre_commit(client).await,
        HookCmd::Install(a) => install::install(a.target, a.scope, a.print),
        HookCmd::Uninstall(a) => install::uninstall(a.target, a.scope, a.print),
    }
}

/// The agent id of a Claude Code session: unique because the session id is.
pub fn session_agent(session_id: &str) -> String {
    format!("claude:{session_id}")
}

/// The lock that guards one file.
pub fn file_lock(path: &Path) -> String {
    format!("file:{}", path.display())
}

/// `path` made absolute (against `cwd`) and resolved to its real path, so two spellings of one
/// file (`./`, `..`, a symlinked directory) are one lock. A path that does not exist yet is
/// resolved as far as it exists, and the rest is appended (`.` dropped, `..` applied).
pub fn resolve_path(cwd: &Path, path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    };
    if let Ok(real) = std::fs::canonicalize(&abs) {
        return real;
    }
    // Step by step: `out` is always the real path of what exists so far, so a `..` after a
    // symlinked directory leaves its target, as the kernel would.
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => {
                out.push(other.as_os_str());
                if let Ok(real) = std::fs::canonicalize(&out) {
                    out = real;
                }
            }
        }
    }
    out
}

/// A lock as `list_locks` reports it.
pub struct HeldLock {
    pub name: String,
    pub agent_id: String,
}

/// Every lock held right now.
pub async fn held_locks(client: &Client) -> Result<Vec<HeldLock>, ClientError> {
    let v = client.call("list_locks", json!({})).await?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| {
                    Some(HeldLock {
                        name: l["name"].as_str()?.to_string(),
                        agent_id: l["agent_id"].as_str()?.to_string(),
                    })
                })
                .collect()
        })
        .unwrap_or_default())
}

/// Releases every lock `agent` holds (its presence stays). Returns how many were released.
pub async fn release_all(client: &Client, agent: &str) -> Result<usize, ClientError> {
    let mut n = 0;
    for l in held_locks(client).await? {
        if l.agent_id == agent {
            let r = client
                .call(
                    "unlock_resource",
                    json!({"name": l.name, "agent_id": agent}),
                )
                .await?;
            if r["released"] == json!(true) {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// The note where a session's hooks say what it is doing, for the message another session sees
/// when it is refused.
pub fn doing_key(agent: &str) -> String {
    format!("airlock:doing:{agent}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_file_resolve_alike() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::write(root.join("src/a.rs"), "").unwrap();
        std::os::unix::fs::symlink(root.join("src"), root.join("link")).unwrap();
        let want = root.join("src/a.rs");
        assert_eq!(resolve_path(&root, Path::new("src/a.rs")), want);
        assert_eq!(resolve_path(&root, Path::new("./src/../src/a.rs")), want);
        assert_eq!(resolve_path(&root, &root.join("link/a.rs")), want);
        // Not there yet: the parent is resolved.
        assert_eq!(
            resolve_path(&root, &root.join("link/new.rs")),
            root.join("src/new.rs")
        );
        assert_eq!(
            resolve_path(&root, &root.join("link/deeper/./x/../new.rs")),
            root.join("src/deeper/new.rs")
        );
    }
}
