//! No module cycle in any crate of the workspace: data flows one way (in
//! detour-server: downstream → engine → upstream), so each module can be
//! read knowing only the modules it uses.
//!
//! The check reads every `src/` tree under `crates/` as text. A module
//! depends on another when it names it by a `crate::`, `super::` or `self::`
//! path (in a `use` or inline), following `pub use` re-exports to where the
//! item is defined. Two siblings — children of one parent module — that
//! depend on each other, directly or through other siblings, are a cycle.
//! A child using its ancestors (a `mod.rs` and its children) is not: that is
//! how a module and its parts work together. Items under `#[cfg(test)]` are
//! left out: tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// A module path inside one crate: `["proxy", "engine"]`; the root is empty.
type ModPath = Vec<String>;

/// Known cycles, each with the reason it is still here; `(crate, members)`.
/// The test fails when one of these is gone too, so the list stays true.
const KNOWN: &[(&str, &[&str])] = &[];

#[test]
fn no_crate_has_a_module_cycle() {
    let crates_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(&crates_dir)
        .expect("the crates/ folder is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("src").is_dir())
        .collect();
    names.sort();
    assert!(
        names.len() >= 7,
        "every crate under crates/ is checked: {names:?}"
    );
    for dir in names {
        let krate = dir.file_name().unwrap().to_string_lossy().into_owned();
        for (parent, members, why) in cycles(&dir.join("src")) {
            found.push((krate.clone(), parent, members, why));
        }
    }
    let mut unexpected = Vec::new();
    for (krate, parent, members, why) in &found {
        let known = KNOWN.iter().any(|(k, m)| {
            k == krate
                && parent.is_empty()
                && m.iter().copied().eq(members.iter().map(String::as_str))
        });
        if !known {
            unexpected.push(format!(
                "{krate}: in {} the modules {} form a cycle:\n    {}",
                display(parent),
                members.join(" <-> "),
                why.join("\n    ")
            ));
        }
    }
    assert!(
        unexpected.is_empty(),
        "module cycles:\n{}",
        unexpected.join("\n")
    );
    for (krate, members) in KNOWN {
        let still = found.iter().any(|(k, p, m, _)| {
            k == krate && p.is_empty() && m.iter().map(String::as_str).eq(members.iter().copied())
        });
        assert!(
            still,
            "{krate}: the cycle {members:?} is gone: take it off KNOWN"
        );
    }
}

/// Each cycle among siblings: the parent, the members (sorted), and one
/// reference per edge between them.
fn cycles(src: &Path) -> Vec<(ModPath, Vec<String>, Vec<String>)> {
    let files = rust_files(src);
    let mut modules: BTreeMap<ModPath, String> = BTreeMap::new();
    for f in &files {
        let Some(m) = module_of(src, f) else { continue };
        let text = drop_cfg_test(&strip(
            &std::fs::read_to_string(f).expect("a source file is readable"),
        ));
        modules.insert(m, text);
    }
    let reexports: HashMap<ModPath, HashMap<String, ModPath>> = modules
        .iter()
        .map(|(m, t)| (m.clone(), reexports_of(m, t)))
        .collect();
    // (parent, from child, to child) -> an example reference
    let mut edges: BTreeMap<(ModPath, String, String), String> = BTreeMap::new();
    for (m, text) in &modules {
        for r in references(m, text) {
            let t = resolve(&r, &modules, &reexports, 0);
            let common = m.iter().zip(&t).take_while(|(a, b)| a == b).count();
            if common == m.len() || common == t.len() {
                continue; // an ancestor or a descendant
            }
            let key = (m[..common].to_vec(), m[common].clone(), t[common].clone());
            edges
                .entry(key)
                .or_insert_with(|| format!("{} uses {}", display(m), r.join("::")));
        }
    }
    let mut by_parent: BTreeMap<ModPath, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (parent, a, b) in edges.keys() {
        by_parent
            .entry(parent.clone())
            .or_default()
            .entry(a.clone())
            .or_default()
            .insert(b.clone());
    }
    let mut out = Vec::new();
    for (parent, graph) in by_parent {
        for scc in strongly_connected(&graph) {
            let why = edges
                .iter()
                .filter(|((p, a, b), _)| *p == parent && scc.contains(a) && scc.contains(b))
                .map(|((_, a, b), e)| format!("{a} -> {b}: {e}"))
                .collect();
            out.push((parent.clone(), scc, why));
        }
    }
    out
}

fn display(m: &ModPath) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        format!("crate::{}", m.join("::"))
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)
        .expect("a source folder is readable")
        .flatten()
    {
        let p = e.path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

/// The module a file holds; `None` for a binary's root (a crate of its own).
fn module_of(src: &Path, file: &Path) -> Option<ModPath> {
    let rel = file
        .strip_prefix(src)
        .expect("the file was found under src")
        .with_extension("");
    let mut parts: ModPath = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    match parts.as_slice() {
        [one] if one == "lib" => return Some(Vec::new()),
        [one] if one == "main" => return None,
        _ => {}
    }
    if parts.last().is_some_and(|l| l == "mod") {
        parts.pop();
    }
    Some(parts)
}

/// `src` without comments and with every string and char literal emptied.
fn strip(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < src.len() {
        let rest = &src[i..];
        let after_ident = src[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            let mut depth = 0;
            let mut k = 0;
            while k < rest.len() {
                if rest[k..].starts_with("/*") {
                    depth += 1;
                    k += 2;
                } else if rest[k..].starts_with("*/") {
                    depth -= 1;
                    k += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    k += rest[k..].chars().next().map_or(1, char::len_utf8);
                }
            }
            i += k;
        } else if let Some(len) = (!after_ident).then(|| raw_string_len(rest)).flatten() {
            i += len;
            out.push_str("\"\"");
        } else if rest.starts_with('"') {
            let b = rest.as_bytes();
            let mut k = 1;
            while k < b.len() && b[k] != b'"' {
                k += if b[k] == b'\\' { 2 } else { 1 };
            }
            i += (k + 1).min(rest.len());
            out.push_str("\"\"");
        } else if let Some(len) = char_literal_len(rest) {
            i += len;
            out.push_str("' '");
        } else {
            let ch = rest.chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// The length of the raw string (`r"…"`, `r#"…"#`, `br"…"`) at the start
/// of `s`.
fn raw_string_len(s: &str) -> Option<usize> {
    let after_b = s.strip_prefix('b').unwrap_or(s);
    let after_r = after_b.strip_prefix('r')?;
    let hashes = after_r.len() - after_r.trim_start_matches('#').len();
    let body = after_r[hashes..].strip_prefix('"')?;
    let close = format!("\"{}", "#".repeat(hashes));
    let end = body.find(&close)? + close.len();
    Some(s.len() - body.len() + end)
}

/// The length of the char literal at the start of `s` (`'a'`, `'\n'`,
/// `'\u{1F600}'`), or `None` for a lifetime or anything else.
fn char_literal_len(s: &str) -> Option<usize> {
    let body = s.strip_prefix('\'')?;
    if let Some(escaped) = body.strip_prefix('\\') {
        let close = escaped.find('\'')? + 1;
        return (close <= 10).then_some(close + 2);
    }
    let ch = body.chars().next()?;
    body[ch.len_utf8()..]
        .starts_with('\'')
        .then_some(2 + ch.len_utf8())
}

/// `src` without the items marked `#[cfg(test)]`.
fn drop_cfg_test(src: &str) -> String {
    let mut s = src.to_owned();
    while let Some(start) = s.find("#[cfg(test)]") {
        let after = start + "#[cfg(test)]".len();
        let Some(rel) = s[after..].find(['{', ';']) else {
            s.truncate(start);
            break;
        };
        let open = after + rel;
        let end = if s.as_bytes()[open] == b';' {
            open + 1
        } else {
            let mut depth = 0;
            let mut end = s.len();
            for (k, c) in s[open..].char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = open + k + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            end
        };
        s.replace_range(start..end, "");
    }
    s
}

/// Every path of a `use` tree, braces expanded, `as` renames kept as
/// `(path, name)`.
fn expand_use(tree: &str) -> Vec<(String, String)> {
    fn walk(s: &[char], pos: &mut usize, prefix: &str, out: &mut Vec<String>) {
        let mut cur = String::new();
        while *pos < s.len() {
            let c = s[*pos];
            *pos += 1;
            match c {
                '{' => {
                    walk(s, pos, &format!("{prefix}{cur}"), out);
                    cur.clear();
                }
                '}' => break,
                ',' => {
                    if !cur.trim().is_empty() {
                        out.push(format!("{prefix}{cur}"));
                    }
                    cur.clear();
                }
                _ => cur.push(c),
            }
        }
        if !cur.trim().is_empty() {
            out.push(format!("{prefix}{cur}"));
        }
    }
    let chars: Vec<char> = tree.chars().collect();
    let mut out = Vec::new();
    walk(&chars, &mut 0, "", &mut out);
    out.into_iter()
        .map(|p| {
            let p = p.split_whitespace().collect::<Vec<_>>().join(" ");
            match p.split_once(" as ") {
                Some((path, name)) => (path.replace(' ', ""), name.trim().to_owned()),
                None => {
                    let path = p.replace(' ', "");
                    let name = path.rsplit("::").next().unwrap_or_default().to_owned();
                    (path, name)
                }
            }
        })
        .collect()
}

/// The `use` statements of `text`: `(is pub, tree)`.
fn uses(text: &str) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(k) = find_word(rest, "use") {
        let before = rest[..k].trim_end();
        let public = before.ends_with("pub") || before.ends_with(')') && before.contains("pub(");
        let body_start = k + 3;
        let Some(end) = rest[body_start..].find(';') else {
            break;
        };
        out.push((public, rest[body_start..body_start + end].trim().to_owned()));
        rest = &rest[body_start + end + 1..];
    }
    out
}

/// The byte offset of `word` standing alone in `text`.
fn find_word(text: &str, word: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(k) = text[from..].find(word) {
        let at = from + k;
        let end = at + word.len();
        let alone = |c: Option<&u8>| c.is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b'_'));
        if alone(at.checked_sub(1).and_then(|i| b.get(i))) && alone(b.get(end)) {
            return Some(at);
        }
        from = end;
    }
    None
}

/// `path` (as written in module `m`) made absolute, when it starts with
/// `crate`, `super` or `self`.
fn absolute(m: &ModPath, path: &str) -> Option<ModPath> {
    let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    let (mut base, mut rest) = match parts.first() {
        Some(&"crate") => (Vec::new(), &parts[1..]),
        Some(&"super") | Some(&"self") => (m.clone(), &parts[..]),
        _ => return None,
    };
    while let Some(&first) = rest.first() {
        match first {
            "super" => {
                base.pop();
            }
            "self" => {}
            _ => break,
        }
        rest = &rest[1..];
    }
    base.extend(rest.iter().map(|s| (*s).to_owned()));
    Some(base)
}

/// The names `m` re-exports (`pub use`, `pub(crate) use`), each with the
/// absolute path it stands for.
fn reexports_of(m: &ModPath, text: &str) -> HashMap<String, ModPath> {
    let mut out = HashMap::new();
    for (public, tree) in uses(text) {
        if !public {
            continue;
        }
        for (path, name) in expand_use(&tree) {
            let abs = absolute(m, &path).or_else(|| {
                // `pub use child::Item;`: a path relative to this module.
                let mut p = m.clone();
                p.extend(path.split("::").map(str::to_owned));
                Some(p)
            });
            if let Some(abs) = abs {
                out.insert(name, abs);
            }
        }
    }
    out
}

/// Every module path `text` (module `m`) names: its `use` trees and every
/// inline `crate::`/`super::`/`self::` path.
fn references(m: &ModPath, text: &str) -> Vec<ModPath> {
    let mut out = Vec::new();
    for (_, tree) in uses(text) {
        for (path, _) in expand_use(&tree) {
            out.extend(absolute(m, &path));
        }
    }
    let b = text.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(k) = text[from..].find(start) {
            let at = from + k;
            let mut end = at;
            while end < b.len()
                && (b[end].is_ascii_alphanumeric() || b[end] == b'_' || b[end] == b':')
            {
                end += 1;
            }
            let standalone = at == 0
                || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_' || b[at - 1] == b':');
            if standalone {
                out.extend(absolute(m, text[at..end].trim_end_matches(':')));
            }
            from = end.max(at + 1);
        }
    }
    out
}

/// The module `path` lands in: its longest prefix that is a module,
/// following re-exports to the module that defines the item.
fn resolve(
    path: &ModPath,
    modules: &BTreeMap<ModPath, String>,
    reexports: &HashMap<ModPath, HashMap<String, ModPath>>,
    depth: usize,
) -> ModPath {
    for k in (0..=path.len()).rev() {
        let prefix = &path[..k];
        if !modules.contains_key(prefix) {
            continue;
        }
        if k < path.len() && depth < 10 {
            if let Some(target) = reexports.get(prefix).and_then(|r| r.get(&path[k])) {
                let mut next = target.clone();
                next.extend(path[k + 1..].iter().cloned());
                if &next != path {
                    return resolve(&next, modules, reexports, depth + 1);
                }
            }
        }
        return prefix.to_vec();
    }
    Vec::new()
}

/// The strongly connected components of more than one node (Tarjan), each
/// sorted.
fn strongly_connected(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: HashMap<&'a str, usize>,
        low: HashMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on_stack.insert(v);
            let graph = self.graph;
            for w in graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("v was visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("v was visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    comp.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    self.out.push(comp);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    let nodes: BTreeSet<&str> = graph
        .iter()
        .flat_map(|(a, bs)| std::iter::once(a.as_str()).chain(bs.iter().map(String::as_str)))
        .collect();
    for v in nodes {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out
}

/// The check itself finds a cycle where there is one.
#[test]
fn a_cycle_between_siblings_is_found() {
    let dir = std::env::temp_dir().join(format!("detour-cycles-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("a")).unwrap();
    std::fs::write(dir.join("lib.rs"), "mod a;\nmod b;\npub use a::Thing;\n").unwrap();
    std::fs::write(dir.join("a/mod.rs"), "mod x;\nmod y;\npub use x::Thing;\n").unwrap();
    std::fs::write(
        dir.join("a/x.rs"),
        "use super::y::Other; // crate::b\npub struct Thing;\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("a/y.rs"),
        "pub struct Other(crate::a::Thing);\n#[cfg(test)]\nmod tests { use crate::b::B; }\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("b.rs"),
        "pub struct B(crate::Thing);\nconst S: &str = \"crate::a\";\n",
    )
    .unwrap();
    let found = cycles(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let members: Vec<_> = found
        .iter()
        .map(|(p, m, _)| (p.clone(), m.clone()))
        .collect();
    assert_eq!(
        members,
        vec![(vec!["a".to_owned()], vec!["x".to_owned(), "y".to_owned()])],
        "x <-> y through the re-export a::Thing; b -> a alone is no cycle \
         (comments, strings and tests do not count)"
    );
}
