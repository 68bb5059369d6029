//! Project automation: `cargo xtask <task>`.
//!
//! - `ci`: what `.ci/run` runs — format check, clippy with warnings denied, every test.
//! - `chaos`, `bench`: failover and speed measured side by side (not written yet).

use std::process::{Command, ExitCode};

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

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let ok = match task.as_str() {
        "ci" => ci(),
        "chaos" | "bench" => {
            eprintln!("`cargo xtask {task}` is not written yet (see the open issue for it)");
            return ExitCode::from(2);
        }
        _ => {
            eprintln!("usage: cargo xtask <ci|chaos|bench>");
            return ExitCode::from(2);
        }
    };
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
