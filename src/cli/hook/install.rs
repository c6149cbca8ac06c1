//! `airlock hook install|uninstall claude|git`.
//!
//! Claude Code: airlock's entries are merged into `.claude/settings.json` (or
//! `~/.claude/settings.json`), every other key and hook kept. An entry is airlock's when its
//! command runs `airlock … hook claude`; installing again replaces those (never duplicates them),
//! uninstalling removes only those. The file is rewritten as formatted JSON (object keys come
//! back in sorted order).
//!
//! Git: the pre-commit hook runs `airlock hook git pre-commit`; a pre-commit hook already there
//! is kept as `pre-commit.airlock-chained` and runs first.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Map, Value};

use super::{Scope, Target};
use crate::cli::exit;

/// The events airlock's Claude Code hook handles, with their matchers.
const CLAUDE_EVENTS: &[(&str, Option<&str>)] = &[
    ("SessionStart", None),
    ("UserPromptSubmit", None),
    // Every tool call renews the session's presence; file tools and Bash also take locks.
    ("PreToolUse", Some("*")),
    ("PostToolUse", Some("Bash")),
    ("PostToolUseFailure", Some("Bash")),
    ("Stop", None),
    ("SessionEnd", None),
];
/// Claude Code kills a hook after this many seconds; the hook waits at most 50.
const HOOK_TIMEOUT_SECONDS: u64 = 60;
/// Marks the pre-commit script as airlock's.
const GIT_MARKER: &str = "# airlock pre-commit guard";
/// Where an existing pre-commit hook is kept.
const CHAINED: &str = "pre-commit.airlock-chained";

pub fn install(target: Target, scope: Scope, print: bool) -> i32 {
    let r = match target {
        Target::Claude => claude(scope, print, true),
        Target::Git => git_install(print),
    };
    report(r)
}

pub fn uninstall(target: Target, scope: Scope, print: bool) -> i32 {
    let r = match target {
        Target::Claude => claude(scope, print, false),
        Target::Git => git_uninstall(print),
    };
    report(r)
}

fn report(r: anyhow::Result<()>) -> i32 {
    match r {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("airlock: {e:#}");
            exit::NO
        }
    }
}

/// How settings.json (and the git hook) should start airlock: `airlock` when that name on PATH
/// is this very binary, else this binary's absolute path.
fn airlock_command() -> String {
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .unwrap_or_else(|_| PathBuf::from("airlock"));
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .any(|d| std::fs::canonicalize(d.join("airlock")).is_ok_and(|p| p == exe))
    });
    if on_path {
        return "airlock".into();
    }
    shell_quote(&exe.to_string_lossy())
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The repository root for project-scoped settings: git's top level, else the current directory.
fn project_root() -> anyhow::Result<PathBuf> {
    let cwd = std::env::current_dir()?;
    Ok(super::config::find_root(&cwd).0)
}

fn settings_path(scope: Scope) -> anyhow::Result<PathBuf> {
    Ok(match scope {
        Scope::Project => project_root()?.join(".claude").join("settings.json"),
        Scope::User => {
            let home = std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .ok_or_else(|| anyhow::anyhow!("HOME is not set; cannot find ~/.claude"))?;
            PathBuf::from(home).join(".claude").join("settings.json")
        }
    })
}

fn claude(scope: Scope, print: bool, add: bool) -> anyhow::Result<()> {
    let path = settings_path(scope)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    let mut settings = if text.trim().is_empty() {
        Map::new()
    } else {
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => anyhow::bail!("{} is not a JSON object; fix it first", path.display()),
            Err(e) => anyhow::bail!("{} is not valid JSON ({e}); fix it first", path.display()),
        }
    };
    let removed = remove_ours(&mut settings)?;
    if add {
        add_ours(&mut settings, &format!("{} hook claude", airlock_command()))?;
    }
    let out = serde_json::to_string_pretty(&Value::Object(settings))? + "\n";
    if print {
        print!("{out}");
        return Ok(());
    }
    if !add && removed == 0 {
        println!("no airlock hooks in {}", path.display());
        return Ok(());
    }
    write_atomically(&path, out.as_bytes(), None)?;
    if add {
        println!(
            "airlock hooks installed in {} ({}). New Claude Code sessions take file locks on edits.",
            path.display(),
            CLAUDE_EVENTS
                .iter()
                .map(|(e, _)| *e)
                .collect::<Vec<_>>()
                .join(", ")
        );
    } else {
        println!("removed {removed} airlock hook(s) from {}", path.display());
    }
    Ok(())
}

/// Whether a hook entry is airlock's.
fn is_ours(hook: &Value) -> bool {
    hook["command"]
        .as_str()
        .is_some_and(|c| c.contains("airlock") && c.contains(" hook claude"))
}

/// Removes airlock's hook entries (dropping matcher groups and events left empty); returns how
/// many were removed.
fn remove_ours(settings: &mut Map<String, Value>) -> anyhow::Result<usize> {
    let Some(hooks) = settings.get_mut("hooks") else {
        return Ok(0);
    };
    let Some(events) = hooks.as_object_mut() else {
        anyhow::bail!("\"hooks\" in settings.json is not an object; fix it first");
    };
    let mut removed = 0;
    for groups in events.values_mut() {
        let Some(groups) = groups.as_array_mut() else {
            continue;
        };
        for group in groups.iter_mut() {
            if let Some(list) = group.get_mut("hooks").and_then(Value::as_array_mut) {
                let before = list.len();
                list.retain(|h| !is_ours(h));
                removed += before - list.len();
            }
        }
        groups.retain(|g| {
            g.get("hooks")
                .and_then(Value::as_array)
                .is_none_or(|l| !l.is_empty())
        });
    }
    events.retain(|_, groups| groups.as_array().is_none_or(|g| !g.is_empty()));
    if events.is_empty() {
        settings.remove("hooks");
    }
    Ok(removed)
}

fn add_ours(settings: &mut Map<String, Value>, command: &str) -> anyhow::Result<()> {
    let hooks = settings
        .entry("hooks")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(events) = hooks.as_object_mut() else {
        anyhow::bail!("\"hooks\" in settings.json is not an object; fix it first");
    };
    for (event, matcher) in CLAUDE_EVENTS {
        let groups = events
            .entry(event.to_string())
            .or_insert_with(|| Value::Array(Vec::new()));
        let Some(groups) = groups.as_array_mut() else {
            anyhow::bail!("\"hooks.{event}\" in settings.json is not an array; fix it first");
        };
        let mut group = json!({"hooks": [{"type": "command", "command": command,
                                          "timeout": HOOK_TIMEOUT_SECONDS}]});
        if let Some(m) = matcher {
            group["matcher"] = json!(m);
        }
        groups.push(group);
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader never sees half a
/// file; `mode` sets the permissions (Unix).
fn write_atomically(path: &Path, bytes: &[u8], mode: Option<u32>) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .ok_or_else(|| anyhow::anyhow!("{} has no parent directory", path.display()))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.airlock-tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&tmp, bytes)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", tmp.display()))?;
    if let Some(mode) = mode {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    } else if let Ok(old) = std::fs::metadata(path) {
        std::fs::set_permissions(&tmp, old.permissions())?;
    }
    std::fs::rename(&tmp, path)
        .map_err(|e| anyhow::anyhow!("cannot replace {}: {e}", path.display()))?;
    Ok(())
}

/// The repository's hooks directory (honours `core.hooksPath`).
fn git_hooks_dir() -> anyhow::Result<PathBuf> {
    let out = Command::new("git")
        .args(["rev-parse", "--git-path", "hooks"])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run git: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "not in a git repository: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let rel = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim_end_matches('\n'));
    Ok(std::env::current_dir()?.join(rel))
}

fn git_script() -> String {
    format!(
        "#!/bin/sh\n{GIT_MARKER}: refuses a commit that stages files another agent holds.\n\
         # Installed by `airlock hook install git`; `airlock hook uninstall git` removes it.\n\
         chained=\"$(dirname \"$0\")/{CHAINED}\"\n\
         if [ -x \"$chained\" ]; then\n  \"$chained\" \"$@\" || exit $?\nfi\n\
         exec {} hook git pre-commit\n",
        airlock_command()
    )
}

fn git_install(print: bool) -> anyhow::Result<()> {
    let dir = git_hooks_dir()?;
    let hook = dir.join("pre-commit");
    let chained = dir.join(CHAINED);
    let script = git_script();
    let existing = std::fs::read_to_string(&hook).ok();
    let ours = existing.as_deref().is_some_and(|s| s.contains(GIT_MARKER));
    let keep_existing = existing.is_some() && !ours;
    if print {
        if keep_existing {
            println!(
                "# would keep the existing hook as {} and run it first",
                chained.display()
            );
        }
        println!("# {}:", hook.display());
        print!("{script}");
        return Ok(());
    }
    if keep_existing {
        if chained.exists() {
            anyhow::bail!(
                "{} already exists; move it or {} aside first",
                chained.display(),
                hook.display()
            );
        }
        std::fs::rename(&hook, &chained)?;
    }
    write_atomically(&hook, script.as_bytes(), Some(0o755))?;
    println!(
        "installed {}{}",
        hook.display(),
        if keep_existing {
            format!(" (the previous hook runs first, kept as {CHAINED})")
        } else {
            String::new()
        }
    );
    Ok(())
}

fn git_uninstall(print: bool) -> anyhow::Result<()> {
    let dir = git_hooks_dir()?;
    let hook = dir.join("pre-commit");
    let chained = dir.join(CHAINED);
    let ours = std::fs::read_to_string(&hook).is_ok_and(|s| s.contains(GIT_MARKER));
    if !ours {
        println!("no airlock pre-commit hook in {}", dir.display());
        return Ok(());
    }
    if print {
        println!("# would remove {}", hook.display());
        if chained.exists() {
            println!("# would restore {} as pre-commit", chained.display());
        }
        return Ok(());
    }
    std::fs::remove_file(&hook)?;
    if chained.exists() {
        std::fs::rename(&chained, &hook)?;
        println!("removed airlock's pre-commit hook; restored the previous one");
    } else {
        println!("removed {}", hook.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_is_idempotent_and_reversible() {
        let mut s: Map<String, Value> = serde_json::from_str(
            r#"{"model": "opus", "hooks": {"PreToolUse": [{"matcher": "Bash",
                 "hooks": [{"type": "command", "command": "./check.sh"}]}]}}"#,
        )
        .unwrap();
        let original = s.clone();
        remove_ours(&mut s).unwrap();
        add_ours(&mut s, "airlock hook claude").unwrap();
        let once = s.clone();
        assert_eq!(remove_ours(&mut s).unwrap(), CLAUDE_EVENTS.len());
        add_ours(&mut s, "airlock hook claude").unwrap();
        assert_eq!(s, once);
        assert_eq!(s["hooks"]["PreToolUse"].as_array().unwrap().len(), 2);
        remove_ours(&mut s).unwrap();
        assert_eq!(s, original);
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/bin/airlock"), "/usr/bin/airlock");
        assert_eq!(shell_quote("/a b/airlock"), "'/a b/airlock'");
    }
}
