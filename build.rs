//! Names the git commit in `airlock --version` when built from a checkout: sets
//! `AIRLOCK_GIT_COMMIT` to the short hash and `AIRLOCK_VERSION_SUFFIX` to ` (commit HASH)`, or
//! both to nothing when there is no git or this directory is not the top of a checkout (a
//! source tarball, perhaps unpacked inside some other repository; `cargo install` from
//! crates.io), which must build just the same.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// The short commit, if `dir` is the top of a git checkout.
fn commit(dir: &Path) -> Option<String> {
    let top = PathBuf::from(git(dir, &["rev-parse", "--show-toplevel"])?);
    if top.canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    git(dir, &["rev-parse", "--short=12", "HEAD"])
}

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| ".".into()));
    let commit = commit(&dir).unwrap_or_default();
    println!("cargo:rustc-env=AIRLOCK_GIT_COMMIT={commit}");
    let suffix = if commit.is_empty() {
        String::new()
    } else {
        format!(" (commit {commit})")
    };
    println!("cargo:rustc-env=AIRLOCK_VERSION_SUFFIX={suffix}");
    println!("cargo:rerun-if-changed=build.rs");
    if commit.is_empty() {
        return;
    }
    // Rebuild when HEAD moves: HEAD itself (a checkout), the branch it points at (a commit), and
    // packed-refs (a gc). Only paths that exist: cargo reruns for ever on a missing one.
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(&dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(&dir, &["rev-parse", "--git-path", &name]) {
            let path = dir.join(path);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
}
