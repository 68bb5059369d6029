//! `cargo xtask fuzz [--target T] [--secs N] [--cases N]`: the cargo-fuzz
//! targets of `fuzz/` for a bounded time each, or, without a nightly
//! toolchain or cargo-fuzz, the proptest harnesses that check the same
//! invariants, at a high case count (docs/src/testing.md, "Fuzzing").

use std::path::Path;
use std::process::{Command, Stdio};

/// The targets of `fuzz/`, each with its dictionary.
const TARGETS: [(&str, &str); 4] = [
    ("framing", "http.dict"),
    ("request_head", "http.dict"),
    ("config", "toml.dict"),
    ("h1_client", "http.dict"),
];

/// What to run.
#[derive(Debug)]
pub(crate) struct Options {
    /// One target, or all of them.
    target: Option<String>,
    /// Seconds per target.
    secs: u64,
    /// Cases per proptest harness when falling back.
    cases: u64,
}

impl Options {
    /// Parses `--target T`, `--secs N` and `--cases N`.
    ///
    /// # Errors
    /// An unknown argument or target, or a value that is not a number.
    pub(crate) fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options {
            target: None,
            secs: 180,
            cases: 20_000,
        };
        let mut args = args.iter();
        while let Some(flag) = args.next() {
            let mut value = || {
                args.next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            let number = |v: String| {
                v.parse::<u64>()
                    .map_err(|_| format!("{flag}: {v:?} is not a number"))
            };
            match flag.as_str() {
                "--target" => {
                    let t = value()?;
                    if !TARGETS.iter().any(|(name, _)| *name == t) {
                        return Err(format!("no fuzz target {t:?} (framing, request_head, config, h1_client)"));
                    }
                    o.target = Some(t);
                }
                "--secs" => o.secs = number(value()?)?.max(1),
                "--cases" => o.cases = number(value()?)?.max(1),
                _ => {
                    return Err(format!(
                        "unknown argument {flag:?}; usage: cargo xtask fuzz [--target T] [--secs N] [--cases N]"
                    ))
                }
            }
        }
        Ok(o)
    }
}

/// Whether `cargo +nightly fuzz` can run here, and if not, why.
fn cargo_fuzz_missing() -> Option<&'static str> {
    let works = |args: &[&str]| {
        nightly_cargo()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !works(&["+nightly", "--version"]) {
        Some("no nightly toolchain (rustup toolchain install nightly)")
    } else if !works(&["+nightly", "fuzz", "--version"]) {
        Some("cargo-fuzz is not installed (cargo install cargo-fuzz --locked)")
    } else {
        None
    }
}

/// `cargo` through rustup's proxy (so `+nightly` works), without the
/// variables of the stable cargo running this xtask.
fn nightly_cargo() -> Command {
    let mut c = Command::new("cargo");
    c.env_remove("CARGO").env_remove("RUSTUP_TOOLCHAIN");
    c
}

/// Runs the fuzz targets, or the proptest fallback.
///
/// # Errors
/// The target that found a failure (its input is under
/// `fuzz/artifacts/TARGET/`), or the harness that failed.
pub(crate) fn run(root: &Path, o: &Options) -> Result<(), String> {
    if let Some(why) = cargo_fuzz_missing() {
        println!("fuzz: {why}; running the proptest harnesses instead");
        return fallback(o);
    }
    let fuzz = root.join("fuzz");
    for (target, dict) in TARGETS {
        if o.target.as_deref().is_some_and(|t| t != target) {
            continue;
        }
        let corpus = format!("corpus/{target}");
        std::fs::create_dir_all(fuzz.join(&corpus)).map_err(|e| format!("{corpus}: {e}"))?;
        let args = [
            "+nightly",
            "fuzz",
            "run",
            // Safe Rust: the address sanitizer adds cost and finds nothing;
            // debug assertions turn overflows into findings.
            "--sanitizer",
            "none",
            "--debug-assertions",
            target,
            &corpus,
            &format!("seeds/{target}"),
            "--",
            &format!("-max_total_time={}", o.secs),
            &format!("-dict=dict/{dict}"),
            "-timeout=10",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
        ];
        println!("$ (cd fuzz && cargo {})", args.join(" "));
        let ok = nightly_cargo()
            .args(args)
            .current_dir(&fuzz)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!(
                "target {target} failed; its input is under fuzz/artifacts/{target}/"
            ));
        }
    }
    Ok(())
}

/// The proptest harnesses with the same invariants as each target, and,
/// for all targets, the end-to-end proxy harness.
const FALLBACK: [(&str, &str, &str, &[&str]); 4] = [
    (
        "framing",
        "detour-server",
        "fuzz_properties",
        &["framing_verdicts"],
    ),
    (
        "request_head",
        "detour-server",
        "fuzz_properties",
        &["accepted_heads", "path_normalization"],
    ),
    ("config", "detour-cli", "config_properties", &[]),
    (
        "h1_client",
        "detour-server",
        "h1_differential",
        &["both_clients_answer_alike", "uploads_reach"],
    ),
];

/// The proptest harnesses, `o.cases` cases each (the end-to-end proxy
/// harness a twentieth of that: each of its cases is a whole exchange over
/// sockets). Debug builds: CI has them from `cargo test` already.
fn fallback(o: &Options) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut runs: Vec<(&str, &str, &[&str], u64)> = FALLBACK
        .iter()
        .filter(|(target, ..)| o.target.as_deref().is_none_or(|t| t == *target))
        .map(|(_, package, test, filters)| (*package, *test, *filters, o.cases))
        .collect();
    if o.target.is_none() {
        runs.push(("detour-server", "no_desync", &[], (o.cases / 20).max(1)));
    }
    for (package, test, filters, cases) in runs {
        let mut args = vec!["test", "-p", package, "--test", test, "--"];
        args.extend(filters);
        println!("$ PROPTEST_CASES={cases} cargo {}", args.join(" "));
        let ok = Command::new(&cargo)
            .args(&args)
            .env("PROPTEST_CASES", cases.to_string())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!("{test} failed"));
        }
    }
    Ok(())
}
