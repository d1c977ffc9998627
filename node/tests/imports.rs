//! No import circles between the files of `node/src`: every `crate::…`,
//! `super::…` and `self::…` path (in `use` trees and inline) is resolved
//! to the file that defines it, and the graph of files must have no cycle.
//! A parent module declaring or re-exporting its own children is not an
//! import; a path through a parent's re-export counts as a path to the
//! child that defines the item.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A source file: its module path and its text without comments and
/// string literals.
struct Source {
    module: Vec<String>,
    text: String,
}

fn sources(root: &Path) -> BTreeMap<String, Source> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path: PathBuf = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            let mut module: Vec<String> = rel
                .trim_end_matches(".rs")
                .split('/')
                .map(str::to_string)
                .collect();
            if module.last().is_some_and(|m| m == "mod" || m == "lib") {
                module.pop();
            }
            let text = strip(&std::fs::read_to_string(&path).expect("read file"));
            out.insert(rel, Source { module, text });
        }
    }
    out
}

/// The text with comments, string and char literals blanked out.
fn strip(src: &str) -> String {
    let b: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&b, i) {
            // A raw string: r"…" or r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            'raw: while j < b.len() {
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break 'raw;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && b.get(i + 2) == Some(&'\'') {
            out.push_str("' '");
            i += 3;
        } else if c == '\'' && next == Some('\\') {
            i += 2;
            while i < b.len() && b[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident_before(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Parses a path tree at `s` (`a::b`, `a::{b, c::d}`, `a::*`) into full
/// paths, each a list of segments, appended to `prefix`.
fn tree(s: &[char], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    loop {
        while s.get(i).is_some_and(|c| c.is_whitespace()) {
            i += 1;
        }
        if s.get(i) == Some(&'{') {
            i += 1;
            loop {
                while s.get(i).is_some_and(|c| c.is_whitespace() || *c == ',') {
                    i += 1;
                }
                if s.get(i).is_none_or(|c| *c == '}') {
                    return i + 1;
                }
                i = tree(s, i, path.clone(), out);
            }
        }
        if s.get(i) == Some(&'*') {
            out.push(path);
            return i + 1;
        }
        let start = i;
        while s.get(i).is_some_and(|c| is_ident(*c)) {
            i += 1;
        }
        if start == i {
            out.push(path);
            return i;
        }
        let seg: String = s[start..i].iter().collect();
        if seg != "self" {
            path.push(seg);
        }
        if s.get(i) == Some(&':') && s.get(i + 1) == Some(&':') {
            i += 2;
        } else {
            out.push(path);
            // Skip an `as name`.
            return i;
        }
    }
}

/// Every path the file refers to, from the crate root.
fn paths_of(src: &Source, is_mod_file: bool) -> Vec<Vec<String>> {
    let s: Vec<char> = src.text.chars().collect();
    let mut out = Vec::new();
    // Inline modules (`mod tests { … }`) extend the module path.
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == '{' {
            depth += 1;
            i += 1;
            continue;
        }
        if c == '}' {
            depth = depth.saturating_sub(1);
            while inline.last().is_some_and(|(_, d)| *d > depth) {
                inline.pop();
            }
            i += 1;
            continue;
        }
        if ident_before(&s, i) || !is_ident(c) {
            i += 1;
            continue;
        }
        let start = i;
        while s.get(i).is_some_and(|c| is_ident(*c)) {
            i += 1;
        }
        let word: String = s[start..i].iter().collect();
        if word == "mod" {
            let mut j = i;
            while s.get(j).is_some_and(|c| c.is_whitespace()) {
                j += 1;
            }
            let n = j;
            while s.get(j).is_some_and(|c| is_ident(*c)) {
                j += 1;
            }
            let name: String = s[n..j].iter().collect();
            while s.get(j).is_some_and(|c| c.is_whitespace()) {
                j += 1;
            }
            if s.get(j) == Some(&'{') {
                inline.push((name, depth + 1));
            }
            continue;
        }
        let here: Vec<String> = src
            .module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect();
        let base = match word.as_str() {
            "crate" => Some(Vec::new()),
            "self" => Some(here.clone()),
            "super" => {
                let mut b = here.clone();
                let mut j = i;
                b.pop();
                // super::super::…
                while s
                    .get(j..j + 7)
                    .is_some_and(|w| w.iter().collect::<String>() == "::super")
                {
                    b.pop();
                    j += 7;
                }
                i = j;
                Some(b)
            }
            _ => None,
        };
        let _ = is_mod_file;
        if let Some(base) = base {
            if s.get(i) == Some(&':') && s.get(i + 1) == Some(&':') {
                i = tree(&s, i + 2, base, &mut out);
            }
        }
    }
    out
}

/// For a parent module file: the items it re-exports from its children
/// (`pub use child::…::Item`), by name.
fn reexports(src: &Source) -> BTreeMap<String, Vec<String>> {
    let s: Vec<char> = src.text.chars().collect();
    let text = &src.text;
    let mut out = BTreeMap::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("pub use ") {
        let pos = text[..from + at].chars().count() + "pub use ".chars().count();
        from += at + "pub use ".len();
        let mut paths = Vec::new();
        tree(&s, pos, src.module.clone(), &mut paths);
        for p in paths {
            if let Some(name) = p.last() {
                out.insert(name.clone(), p.clone());
            }
        }
    }
    out
}

/// The file defining `path`: the deepest file its segments name, followed
/// through a parent's re-export of the next segment.
fn resolve(files: &BTreeMap<String, Source>, path: &[String]) -> Option<String> {
    let by_module: BTreeMap<&Vec<String>, &String> =
        files.iter().map(|(f, s)| (&s.module, f)).collect();
    let mut best = None;
    for n in 0..=path.len() {
        if let Some(f) = by_module.get(&path[..n].to_vec()) {
            best = Some(((*f).clone(), n));
        }
    }
    let (file, n) = best?;
    if let Some(next) = path.get(n) {
        let src = &files[&file];
        if let Some(target) = reexports(src).get(next) {
            if target.len() > src.module.len() && target[..src.module.len()] == src.module[..] {
                return resolve(files, target);
            }
        }
    }
    Some(file)
}

/// The files in a cycle: strongly connected components of more than one.
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        stack: Vec<String>,
        on: BTreeSet<String>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    impl Tarjan<'_> {
        fn visit(&mut self, v: &str) {
            self.index.insert(v.into(), self.next);
            self.low.insert(v.into(), self.next);
            self.next += 1;
            self.stack.push(v.into());
            self.on.insert(v.into());
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let l = self.low[w].min(self.low[v]);
                    self.low.insert(v.into(), l);
                } else if self.on.contains(w) {
                    let l = self.index[w].min(self.low[v]);
                    self.low.insert(v.into(), l);
                }
            }
            if self.low[v] == self.index[v] {
                let mut comp = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(&w);
                    let done = w == v;
                    comp.push(w);
                    if done {
                        break;
                    }
                }
                if comp.len() > 1 {
                    comp.sort();
                    self.found.push(comp);
                }
            }
        }
    }
    let mut t = Tarjan {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.found
}

#[test]
fn no_file_of_node_imports_itself_through_others() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let files = sources(&root);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, src) in &files {
        let is_mod_file = file.ends_with("mod.rs") || file == "lib.rs";
        let targets = edges.entry(file.clone()).or_default();
        for path in paths_of(src, is_mod_file) {
            let Some(target) = resolve(&files, &path) else {
                continue;
            };
            let child = files[&target].module.len() > src.module.len()
                && files[&target].module[..src.module.len()] == src.module[..];
            if target != *file && !(is_mod_file && child) {
                targets.insert(target);
            }
        }
    }
    let found = cycles(&edges);
    let described: Vec<String> = found
        .iter()
        .map(|comp| {
            let inner: Vec<String> = comp
                .iter()
                .map(|f| {
                    let to: Vec<&String> = edges[f].iter().filter(|t| comp.contains(t)).collect();
                    format!("  {f} -> {to:?}")
                })
                .collect();
            format!("{} files: {:?}\n{}", comp.len(), comp, inner.join("\n"))
        })
        .collect();
    assert!(
        found.is_empty(),
        "import circles in node/src:\n{}",
        described.join("\n")
    );
    // The checker sees imports at all: the composition root uses the
    // router, and its serving half its building half through `super::`.
    assert!(
        edges["server/build.rs"].contains("router.rs"),
        "{:?}",
        edges["server/build.rs"]
    );
    assert!(
        edges["server/serve.rs"].contains("server/build.rs"),
        "{:?}",
        edges["server/serve.rs"]
    );
}

#[test]
fn the_path_parser_reads_use_trees() {
    let s: Vec<char> = "crate::a::{b::C, d, e::{f, g::*}}, x".chars().collect();
    let mut out = Vec::new();
    tree(&s, "crate::".len(), Vec::new(), &mut out);
    let got: Vec<String> = out.iter().map(|p| p.join("::")).collect();
    assert_eq!(got, ["a::b::C", "a::d", "a::e::f", "a::e::g"]);
    assert_eq!(
        strip("let x = \"crate::a\"; // crate::b\nr#\"crate::c\"#; 'x'; crate::d"),
        "let x = \"\"; \n\"\"; ' '; crate::d"
    );
}
