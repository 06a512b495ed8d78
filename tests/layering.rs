//! The architecture, checked: `src/` is read as text (like `tests/cli.rs` reads the man pages)
//! and the test fails on
//! - an import cycle between source files (an edge from a file to the `mod.rs` of one of its own
//!   ancestors, or to `lib.rs`, is not counted; test modules are left out);
//! - an import against the layers: `wire` → `proto` (the sans-IO cores) → `net` (drivers) → `app` → `bin`, each layer importing
//!   only those before it (and itself); `defaults` may be imported by every layer, `exit` by the
//!   drivers and the app;
//! - a `wire` or `proto` file that, outside `#[cfg(test)]`, names a socket, a runtime, a clock, the
//!   global RNG or the file system (sans-IO means bytes and instants in, bytes and deadlines out);
//! - a non-test source file over 800 lines;
//! - a `Duration` constant outside `src/defaults.rs` (every timeout in one place, with its reason).
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;

/// Names a sans-IO file must not use (outside its tests).
const FORBIDDEN_IN_CORES: &[&str] = &[
    "tokio",
    "socket2",
    "libc",
    "quinn",
    "rustls",
    "igd_next",
    "clap",
    "UdpSocket",
    "TcpStream",
    "TcpListener",
    "Instant::now",
    "SystemTime::now",
    "thread_rng",
    "rand::random",
    "std::fs",
];

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The text with comments removed and string and char literals emptied, so that neither a doc
/// comment that mentions `tokio` nor a message that says `crate::` counts as code.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if b[i] == b'\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if c == b'r'
            && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#'))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
        {
            // Raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push('r');
                i += 1;
                continue;
            }
            j += 1;
            let close: Vec<u8> = std::iter::once(b'"')
                .chain(std::iter::repeat_n(b'#', hashes))
                .collect();
            while j < b.len() && !b[j..].starts_with(&close) {
                if b[j] == b'\n' {
                    out.push('\n');
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j + close.len();
        } else if c == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    i += 1;
                }
                if i < b.len() && b[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            out.push_str("\"\"");
            i += 1;
        } else if c == b'\'' {
            // A char literal ('a', '\n', '\u{1F600}') or a lifetime ('a): a literal closes
            // with a quote within a few characters.
            let lit_end = if b.get(i + 1) == Some(&b'\\') {
                (i + 2..b.len().min(i + 12)).find(|&j| b[j] == b'\'')
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 2)
            } else {
                // A multi-byte UTF-8 char.
                let s = &text[i + 1..];
                s.chars()
                    .next()
                    .filter(|ch| s[ch.len_utf8()..].starts_with('\''))
                    .map(|ch| i + 1 + ch.len_utf8())
            };
            match lit_end {
                Some(j) => {
                    out.push_str("' '");
                    i = j + 1;
                }
                None => {
                    out.push('\'');
                    i += 1;
                }
            }
        } else {
            let ch = text[i..].chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// Index just past the item that starts at `from` (its closing brace or semicolon).
fn item_end(code: &[u8], from: usize) -> usize {
    let mut depth = 0usize;
    let mut i = from;
    while i < code.len() {
        match code[i] {
            b'{' => depth += 1,
            b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            b';' if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    code.len()
}

/// The code outside `#[cfg(test)]` items, and the names of the test modules declared as files
/// (`#[cfg(test)] mod tests;`).
fn without_tests(code: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut test_mods = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        let end = item_end(after.as_bytes(), 0);
        let item = &after[..end];
        let words: Vec<&str> = item
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ';'))
            .filter(|w| !w.is_empty())
            .collect();
        if let Some(pos) = words.iter().position(|w| *w == "mod") {
            if let Some(name) = words.get(pos + 1) {
                if let Some(name) = name.strip_suffix(';') {
                    test_mods.push(name.to_string());
                }
            }
        }
        // Keep the line count of what follows honest for messages.
        out.extend(item.chars().filter(|&c| c == '\n'));
        rest = &after[end..];
    }
    out.push_str(rest);
    (out, test_mods)
}

/// `crate::a::b` module path of a file.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// Expands `a::{b, c::{d, e}}` into full paths.
fn expand(prefix: &[String], s: &str, out: &mut Vec<Vec<String>>) {
    let s = s.trim();
    if let Some(open) = s.find('{') {
        let head: Vec<String> = s[..open]
            .split("::")
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();
        let mut base = prefix.to_vec();
        base.extend(head);
        let inner = &s[open + 1..s.rfind('}').unwrap_or(s.len())];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&base, &inner[start..i], out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&base, &inner[start..], out);
    } else {
        let mut p = prefix.to_vec();
        for seg in s.split("::") {
            let seg = seg.split_whitespace().next().unwrap_or("");
            if seg.is_empty() {
                continue;
            }
            p.push(seg.to_string());
        }
        if !p.is_empty() {
            out.push(p);
        }
    }
}

/// Every path that starts with `crate::`, `super::` or `self::` (also inside `use` groups),
/// made absolute from the file's module.
fn paths(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let b = code.as_bytes();
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    for start_word in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(rel) = code[from..].find(start_word) {
            let at = from + rel;
            from = at + start_word.len();
            if at > 0 && (is_ident(b[at - 1]) || b[at - 1] == b':') {
                continue;
            }
            // The path: identifiers, `::`, and one balanced `{…}` group.
            let mut i = at;
            let mut depth = 0;
            while i < b.len() {
                let c = b[i];
                if is_ident(c)
                    || c == b':'
                    || (depth > 0 && (c == b',' || c.is_ascii_whitespace() || c == b'*'))
                {
                    i += 1;
                } else if c == b'{' {
                    depth += 1;
                    i += 1;
                } else if c == b'}' && depth > 0 {
                    depth -= 1;
                    i += 1;
                    if depth == 0 {
                        break;
                    }
                } else {
                    break;
                }
            }
            let text = &code[at..i];
            let mut base: Vec<String> = Vec::new();
            let mut rest = text;
            loop {
                if let Some(r) = rest.strip_prefix("crate::") {
                    base.clear();
                    rest = r;
                } else if let Some(r) = rest.strip_prefix("super::") {
                    if base.is_empty() && rest.len() == text.len() {
                        base = module.to_vec();
                    }
                    base.pop();
                    rest = r;
                } else if let Some(r) = rest.strip_prefix("self::") {
                    if base.is_empty() && rest.len() == text.len() {
                        base = module.to_vec();
                    }
                    rest = r;
                } else {
                    break;
                }
            }
            expand(&base, rest, &mut out);
        }
    }
    out
}

struct Files {
    /// Module path → file (relative to src/).
    by_module: BTreeMap<Vec<String>, PathBuf>,
}

impl Files {
    /// The file that defines the longest prefix of `path`.
    fn resolve(&self, path: &[String]) -> Option<&PathBuf> {
        (1..=path.len())
            .rev()
            .find_map(|n| self.by_module.get(&path[..n]))
    }
}

fn layer(rel: &Path) -> &'static str {
    let first = rel.iter().next().unwrap().to_string_lossy();
    match first.as_ref() {
        "wire" => "wire",
        "proto" => "proto",
        "net" => "net",
        "app" => "app",
        "bin" => "bin",
        "defaults.rs" => "defaults",
        "exit.rs" => "exit",
        "lib.rs" => "lib",
        _ => "outside",
    }
}

fn may_import(from: &str, to: &str) -> bool {
    match (from, to) {
        (_, "defaults") => true,
        ("lib", _) => true,
        ("wire", t) => t == "wire",
        ("proto", t) => matches!(t, "wire" | "proto"),
        ("net", t) => matches!(t, "wire" | "proto" | "net" | "exit"),
        ("app", t) => matches!(t, "wire" | "proto" | "net" | "app" | "exit"),
        _ => false,
    }
}

/// Whether `to` is `lib.rs` or the `mod.rs` of one of `from`'s ancestor folders.
fn is_ancestor_mod(from: &Path, to: &Path) -> bool {
    if to == Path::new("lib.rs") {
        return true;
    }
    to.file_name().is_some_and(|n| n == "mod.rs")
        && to
            .parent()
            .is_some_and(|dir| from.parent().is_some_and(|f| f.starts_with(dir)))
}

/// Strongly connected components of more than one file (Tarjan).
fn cycles(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct T<'a> {
        edges: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: BTreeMap<&'a PathBuf, usize>,
        low: BTreeMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        on: BTreeSet<&'a PathBuf>,
        next: usize,
        out: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a PathBuf) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        if let Some(ws) = t.edges.get(v) {
            for w in ws {
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn has_word(code: &str, word: &str) -> bool {
    let b = code.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    code.match_indices(word).any(|(at, _)| {
        let end = at + word.len();
        (at == 0 || !ident(b[at - 1])) && (end >= b.len() || !ident(b[end]))
    })
}

/// Every problem found in the tree under `root`.
fn problems(root: &Path) -> Vec<String> {
    let mut all = Vec::new();
    rust_files(root, &mut all);
    let mut texts = BTreeMap::new();
    let mut test_files = BTreeSet::new();
    for p in &all {
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let (code, test_mods) = without_tests(&code_only(&std::fs::read_to_string(p).unwrap()));
        let dir = if rel.ends_with("mod.rs") || rel.ends_with("lib.rs") {
            rel.parent().unwrap().to_path_buf()
        } else {
            rel.with_extension("")
        };
        for m in test_mods {
            test_files.insert(dir.join(format!("{m}.rs")));
            test_files.insert(dir.join(&m).join("mod.rs"));
        }
        texts.insert(rel, code);
    }
    // Files below a test module's folder are test code too.
    let is_test = |rel: &Path| {
        test_files.iter().any(|t| {
            rel == t
                || (t.ends_with("mod.rs") && rel.starts_with(t.parent().unwrap()))
                || rel.starts_with(t.with_extension(""))
        })
    };
    let mut problems = Vec::new();
    let files = Files {
        by_module: texts
            .keys()
            .filter(|rel| layer(rel) != "bin")
            .map(|rel| (module_of(rel), rel.clone()))
            .collect(),
    };
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for (rel, code) in &texts {
        if is_test(rel) {
            continue;
        }
        let lines = std::fs::read_to_string(root.join(rel))
            .unwrap()
            .lines()
            .count();
        if lines > MAX_LINES {
            problems.push(format!(
                "{}: {lines} lines (at most {MAX_LINES})",
                rel.display()
            ));
        }
        if rel != Path::new("defaults.rs") {
            for (n, line) in code.lines().enumerate() {
                let t = line.trim_start();
                let t = t
                    .strip_prefix("pub(crate) ")
                    .or(t.strip_prefix("pub "))
                    .unwrap_or(t);
                if (t.starts_with("const ") || t.starts_with("static "))
                    && t.split_once(':').is_some_and(|(_, ty)| {
                        let ty = ty.trim_start();
                        ty.starts_with("Duration") || ty.starts_with("std::time::Duration")
                    })
                {
                    problems.push(format!(
                        "{}:{}: a Duration constant outside defaults.rs",
                        rel.display(),
                        n + 1
                    ));
                }
            }
        }
        let from_layer = layer(rel);
        if from_layer == "outside" {
            problems.push(format!(
                "{}: outside the layers (wire, proto, net, app, bin)",
                rel.display()
            ));
        }
        if matches!(from_layer, "wire" | "proto") {
            for word in FORBIDDEN_IN_CORES {
                if has_word(code, word) {
                    problems.push(format!("{}: a sans-IO file names `{word}`", rel.display()));
                }
            }
        }
        if from_layer == "bin" {
            continue;
        }
        for path in paths(code, &module_of(rel)) {
            let Some(to) = files.resolve(&path) else {
                continue;
            };
            if to == rel {
                continue;
            }
            let to_layer = layer(to);
            if !may_import(from_layer, to_layer) && from_layer != "outside" {
                problems.push(format!(
                    "{}: {from_layer} imports {to_layer} (crate::{})",
                    rel.display(),
                    path.join("::")
                ));
            }
            if !is_ancestor_mod(rel, to) && !is_test(to) {
                edges.entry(rel.clone()).or_default().insert(to.clone());
            }
        }
    }
    for comp in cycles(&edges) {
        let names: Vec<String> = comp.iter().map(|p| p.display().to_string()).collect();
        problems.push(format!("import cycle: {}", names.join(", ")));
    }
    problems.sort();
    problems.dedup();
    problems
}

#[test]
fn the_tree_keeps_its_layers() {
    let found = problems(&src());
    assert!(
        found.is_empty(),
        "{} layering problem(s):\n{}",
        found.len(),
        found.join("\n")
    );
}

/// The checker itself: each rule fires on a tree made to break it.
#[test]
fn the_checker_finds_each_kind_of_problem() {
    let dir = std::env::temp_dir().join(format!("natkit-layering-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let write = |rel: &str, text: &str| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    write(
        "lib.rs",
        "pub mod wire;\npub mod proto;\npub mod net;\npub mod defaults;\n",
    );
    write(
        "defaults.rs",
        "pub const T: Duration = Duration::from_secs(1);\n",
    );
    write("wire/mod.rs", "pub mod a;\npub mod b;\n");
    write(
        "wire/a.rs",
        "use crate::wire::b::X;\n// tokio in a comment is fine\nconst S: &str = \"tokio\";\n",
    );
    write("wire/b.rs", "use super::a::Y;\nuse crate::proto::Z;\n");
    write(
        "proto/mod.rs",
        "use std::time::Instant;\nfn f() { let _ = Instant::now(); }\n#[cfg(test)]\nmod tests { fn g() { tokio::spawn(); } }\n",
    );
    write(
        "net/mod.rs",
        &format!(
            "const X: std::time::Duration = todo!();\n{}",
            "\n".repeat(801)
        ),
    );
    write("stray.rs", "\n");
    let found = problems(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let has = |needle: &str| found.iter().any(|p| p.contains(needle));
    assert!(has("import cycle: wire/a.rs, wire/b.rs"), "{found:#?}");
    assert!(has("wire/b.rs: wire imports proto"), "{found:#?}");
    assert!(
        has("proto/mod.rs: a sans-IO file names `Instant::now`"),
        "{found:#?}"
    );
    assert!(
        !has("`tokio`"),
        "comments, strings and tests are not code: {found:#?}"
    );
    assert!(has("net/mod.rs: 802 lines"), "{found:#?}");
    assert!(has("net/mod.rs:1: a Duration constant"), "{found:#?}");
    assert!(
        !found.iter().any(|p| p.starts_with("defaults.rs")),
        "{found:#?}"
    );
    assert!(has("stray.rs: outside the layers"), "{found:#?}");
    assert_eq!(found.len(), 6, "{found:#?}");
}
