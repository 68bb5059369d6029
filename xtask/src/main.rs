//! Project automation: `cargo xtask <task>`.
//!
//! - `ci`: what `.ci/run` runs — format check, clippy with warnings denied, every test.
//! - `chaos`: Detour, nginx and HAProxy through scripted backend failures under load
//!   (`chaos/`, docs/src/chaos.md).
//! - `bench`: speed measured side by side.
//! - `fuzz`: the cargo-fuzz targets for a bounded time each, or the proptest
//!   harnesses with the same invariants when nightly or cargo-fuzz is missing.
//! - `docs`: the book's checks (links, anchors, includes, the summary), then
//!   the book itself with mdBook when it is installed (into `target/book`).

use std::path::PathBuf;
use std::process::{Command, ExitCode};

mod bench;
mod chaos;
mod fuzz;
mod sys;

fn cargo(args: &[&str]) -> bool {
    println!("$ cargo {}", args.join(" "));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Command::new(cargo)
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn ci() -> bool {
    cargo(&["fmt", "--all", "--", "--check"])
        && cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
        && cargo(&["test", "--workspace"])
}

/// The book's checks, then the book with mdBook where it is installed.
fn docs() -> bool {
    if !cargo(&["test", "-p", "detour-proxy", "--test", "book"]) {
        return false;
    }
    let root = workspace_root();
    let out = root.join("target/book");
    let built = Command::new("mdbook")
        .arg("build")
        .arg(root.join("docs"))
        .arg("--dest-dir")
        .arg(&out)
        .status();
    match built {
        Ok(s) if s.success() => {
            println!("the book is in {}", out.display());
            true
        }
        Ok(_) => false,
        Err(_) => {
            println!(
                "mdbook is not installed (cargo install mdbook): the checks passed, no book built"
            );
            true
        }
    }
}

/// The workspace root: xtask's manifest directory's parent.
fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let ok = match task.as_str() {
        "ci" => ci(),
        "bench" => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            let run = bench::Options::parse(&args).and_then(|o| bench::run(&workspace_root(), &o));
            match run {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("bench: {e}");
                    false
                }
            }
        }
        "fuzz" => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            match fuzz::Options::parse(&args).and_then(|o| fuzz::run(&workspace_root(), &o)) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("fuzz: {e}");
                    false
                }
            }
        }
        "chaos" => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            return chaos::main(&args);
        }
        "docs" => docs(),
        _ => {
            eprintln!("usage: cargo xtask <ci|chaos|bench|fuzz|docs>");
            return ExitCode::from(2);
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
