//! The deployment files under `deploy/` stay true: the configuration in the
//! Kubernetes manifest loads without a warning, and the systemd unit runs
//! the binary with options it has. (`.ci/run` also checks the unit with
//! `systemd-analyze verify` against the built binary.)
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use detour_cli::app::{lint::lint, Config};

fn deploy(file: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    std::fs::read_to_string(root.join(file)).unwrap()
}

/// The block under `detour.toml: |`, its indentation removed.
fn embedded_toml(manifest: &str) -> String {
    let mut lines = manifest
        .lines()
        .skip_while(|l| !l.trim_end().ends_with("detour.toml: |"));
    lines.next().unwrap();
    lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_kubernetes_configuration_loads_without_a_warning() {
    let text = embedded_toml(&deploy("kubernetes.yaml"));
    assert!(text.contains("[server]"), "{text}");
    let config = Config::from_toml(&text, None).unwrap();
    let warnings: Vec<_> = lint(&config).into_iter().map(|w| w.why).collect();
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn the_systemd_unit_uses_options_the_binary_has() {
    let unit = deploy("detour.service");
    let exec: Vec<&str> = unit
        .lines()
        .filter_map(|l| {
            l.strip_prefix("ExecStart=")
                .or_else(|| l.strip_prefix("ExecStartPre="))
        })
        .collect();
    assert_eq!(exec.len(), 2, "{unit}");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_detour"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for line in exec {
        for flag in line.split_whitespace().filter(|w| w.starts_with("--")) {
            assert!(
                help.contains(flag),
                "{flag} is not an option of detour: {help}"
            );
        }
    }
}
