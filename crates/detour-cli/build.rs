//! Records the commit the `detour` binary is built from, for `--version`.

use std::process::Command;

fn main() {
    // A commit moves HEAD (or the branch it names); both are watched so the
    // value stays true without rebuilding on every other change.
    for path in ["../../.git/HEAD", "../../.git/logs/HEAD"] {
        println!("cargo:rerun-if-changed={path}");
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        // A build outside a git checkout (a published crate) has no commit.
        .unwrap_or_else(|| "commit unknown".into());
    println!("cargo:rustc-env=DETOUR_COMMIT={commit}");
}
