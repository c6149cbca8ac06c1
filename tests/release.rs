//! `scripts/release` packages a binary into `airlock-<version>-<target>.tar.gz` with a checksum:
//! run on the binary under test (no release build), then the tarball is checked, unpacked and
//! its binary run. (The .deb needs cargo-deb and is not built here.)

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_release_script_makes_a_checked_tarball_that_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    run(Command::new(root.join("scripts/release"))
        .args([
            "--no-deb",
            "--binary",
            env!("CARGO_BIN_EXE_airlock"),
            "--out",
        ])
        .arg(out.path()));
    let host = run(Command::new("rustc").arg("-vV"));
    let target = host
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap()
        .trim()
        .to_string();
    let name = format!("airlock-{}-{target}", env!("CARGO_PKG_VERSION"));
    let tarball = format!("{name}.tar.gz");
    assert!(out.path().join(&tarball).is_file());
    // The checksum file checks.
    let checked = run(Command::new("sha256sum")
        .args(["-c", &format!("{tarball}.sha256")])
        .current_dir(out.path()));
    assert!(checked.contains(&format!("{tarball}: OK")), "{checked}");
    // One top-level directory with the binary, man page, completions, README and LICENSE.
    let listing = run(Command::new("tar")
        .arg("tzf")
        .arg(out.path().join(&tarball)));
    for file in [
        "airlock",
        "README.md",
        "LICENSE",
        "man/man1/airlock.1",
        "completions/airlock.bash",
        "completions/_airlock",
        "completions/airlock.fish",
    ] {
        assert!(
            listing.lines().any(|l| l == format!("{name}/{file}")),
            "{file} missing:\n{listing}"
        );
    }
    assert!(!listing.contains("airlock-bench"), "{listing}");
    // Unpacked, the binary runs and says its version.
    run(Command::new("tar")
        .arg("xzf")
        .arg(out.path().join(&tarball))
        .current_dir(out.path()));
    let version = run(Command::new(out.path().join(&name).join("airlock")).arg("--version"));
    assert!(
        version.starts_with(&format!("airlock {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let man = std::fs::read_to_string(out.path().join(&name).join("man/man1/airlock.1")).unwrap();
    assert!(man.contains(".TH airlock 1"), "{man}");
}
