//! Names the git commit in `airlock --version` when built from a checkout: sets
//! `AIRLOCK_GIT_COMMIT` to the short hash and `AIRLOCK_VERSION_SUFFIX` to ` (commit HASH)`, or
//! both to nothing when there is no git or no repository (a source tarball, `cargo install` from
//! crates.io), which must build just the same.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_default();
    println!("cargo:rustc-env=AIRLOCK_GIT_COMMIT={commit}");
    let suffix = if commit.is_empty() {
        String::new()
    } else {
        format!(" (commit {commit})")
    };
    println!("cargo:rustc-env=AIRLOCK_VERSION_SUFFIX={suffix}");
    println!("cargo:rerun-if-changed=build.rs");
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it points at (a commit), and
    // packed-refs (a gc). Only paths that exist: cargo reruns for ever on a missing one.
    if commit.is_empty() {
        return;
    }
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}
