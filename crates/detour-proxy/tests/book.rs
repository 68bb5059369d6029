//! The book's links hold: every relative link in `docs/src` and the README
//! names a file that exists and, with a `#fragment`, a heading in it (by
//! mdBook's anchor rule); every `{{#include}}` names a file; every chapter
//! is in `SUMMARY.md`. A renamed heading or a moved file fails here, not in
//! a reader's browser.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// mdBook's anchor for a heading: lowercase; letters, digits, `-` and `_`
/// kept, spaces become `-`, the rest dropped.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
            _ => None,
        })
        .collect()
}

/// The anchors of `text`'s headings (outside code blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

/// `(line, target)` of every inline link `[..](target)` outside code.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut fenced = false;
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Inline code spans are not links.
        let mut outside = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                outside.push_str(part);
            }
        }
        let mut rest = outside.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push((n + 1, after[..end].to_string()));
            rest = &after[end..];
        }
    }
    out
}

fn includes(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let start = l.find("{{#include ")? + "{{#include ".len();
            let end = l[start..].find("}}")? + start;
            Some(l[start..end].trim().split(':').next()?.to_string())
        })
        .collect()
}

fn pages() -> Vec<PathBuf> {
    let mut all: Vec<PathBuf> = std::fs::read_dir(root().join("docs/src"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    all.push(root().join("README.md"));
    all.sort();
    all
}

#[test]
fn every_relative_link_and_include_resolves() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let dir = page.parent().unwrap();
        for (line, target) in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                continue;
            }
            let (file, fragment) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let path = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            let shown = format!("{}:{line}: {target}", page.display());
            if !path.exists() {
                broken.push(format!("{shown} (no such file)"));
                continue;
            }
            if let Some(a) = fragment {
                if path.extension().is_some_and(|e| e == "md") {
                    let there = anchors(&std::fs::read_to_string(&path).unwrap());
                    if !there.contains(a) {
                        broken.push(format!("{shown} (no heading with anchor #{a})"));
                    }
                }
            }
        }
        for inc in includes(&text) {
            if !dir.join(&inc).exists() {
                broken.push(format!(
                    "{}: {{{{#include {inc}}}}} (no such file)",
                    page.display()
                ));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_chapter_is_in_the_summary() {
    let summary = std::fs::read_to_string(root().join("docs/src/SUMMARY.md")).unwrap();
    let listed: BTreeSet<String> = links(&summary).into_iter().map(|(_, t)| t).collect();
    for page in pages() {
        let name = page.file_name().unwrap().to_str().unwrap().to_string();
        if name == "SUMMARY.md" || name == "README.md" {
            continue;
        }
        assert!(listed.contains(&name), "{name} is not in SUMMARY.md");
    }
}

#[test]
fn anchors_follow_mdbook() {
    assert_eq!(
        anchor(" Partial outages: concentrated and correlated failure"),
        "partial-outages-concentrated-and-correlated-failure"
    );
    assert_eq!(anchor("The `[server]` table"), "the-server-table");
    assert_eq!(
        links("see [x](a.md#b) and `[y](no)`"),
        [(1, "a.md#b".to_string())]
    );
}

/// Every Rust block of the book is compiled: `no_run` blocks run as doc
/// tests of this crate (its `book` module includes each chapter that has
/// one), and the only `ignore` blocks are includes of a file the workspace
/// compiles on its own.
#[test]
fn every_rust_block_is_compiled() {
    let lib = std::fs::read_to_string(root().join("crates/detour-proxy/src/lib.rs")).unwrap();
    let mut wrong = Vec::new();
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        let name = page.file_name().unwrap().to_str().unwrap();
        let mut lines = text.lines().enumerate();
        let mut has_rust = false;
        while let Some((n, line)) = lines.next() {
            let Some(tag) = line.strip_prefix("```rust") else {
                continue;
            };
            has_rust = true;
            let body: Vec<&str> = lines
                .by_ref()
                .map(|(_, l)| l)
                .take_while(|l| !l.starts_with("```"))
                .collect();
            let include_only = body.len() == 1 && body[0].trim().starts_with("{{#include ");
            if tag.contains("ignore") && !include_only {
                wrong.push(format!("{name}:{}: an ignored Rust block", n + 1));
            }
        }
        let included = format!("docs/src/{name}\")");
        if has_rust && page.ends_with(format!("docs/src/{name}")) && !lib.contains(&included) {
            wrong.push(format!(
                "{name}: has Rust blocks but is not in lib.rs's book module"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
