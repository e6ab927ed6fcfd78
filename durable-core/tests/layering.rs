//! The crate's module layering (issue 17): `context` is below `entity` and `registry`, and the
//! three import one another in one direction only.
//!
//! The graph is read from the sources: an edge `a -> b` for every `crate::b` path (or
//! `crate::Name`, through the crate root's `pub use b::Name`; grouped `crate::{b::X, …}`
//! imports too) in the code of top-level module `a`, comments and `#[cfg(test)] mod`s left out.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `pub use module::{A, B};` / `pub use module::A;` at the crate root: name -> module.
fn root_names(lib: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for item in lib.split("pub use ").skip(1) {
        let item = &item[..item.find(';').unwrap_or(item.len())];
        let Some((module, rest)) = item.split_once("::") else {
            continue;
        };
        if module == "crate" {
            continue; // the prelude
        }
        for name in rest.split(|c: char| !c.is_alphanumeric() && c != '_') {
            if !name.is_empty() {
                names.insert(name.to_owned(), module.trim().to_owned());
            }
        }
    }
    names
}

/// The identifier `text` starts with.
fn ident(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let roots = root_names(&fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| f.strip_prefix(&src).unwrap().iter().next().unwrap())
        .map(|c| c.to_str().unwrap().trim_end_matches(".rs").to_owned())
        .filter(|m| m != "lib")
        .collect();
    let mut graph = Graph::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let from = rel.iter().next().unwrap().to_str().unwrap();
        let from = from.trim_end_matches(".rs");
        if from == "lib" || rel.ends_with("tests.rs") {
            continue;
        }
        let mut add = |name: String| {
            let to = if modules.contains(&name) {
                name
            } else {
                roots.get(&name).cloned().unwrap_or(name)
            };
            if to != from && modules.contains(&to) {
                graph.entry(from.to_owned()).or_default().insert(to);
            }
        };
        let mut test_attribute = false;
        // Inside a grouped `use crate::{ … }` spread over lines: each line names a module.
        let mut in_group = false;
        for line in fs::read_to_string(file).unwrap().lines() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if test_attribute && code.starts_with("mod ") {
                break; // the unit tests, at the end of the file
            }
            test_attribute = code.starts_with("#[cfg(test)]");
            if in_group {
                in_group = !code.starts_with("};");
                add(ident(code));
                continue;
            }
            for path in code.split("crate::").skip(1) {
                match path.strip_prefix('{') {
                    // `crate::{a::X, b::Y}` on one line, or opening a group over lines.
                    Some(group) if group.trim().is_empty() => in_group = true,
                    Some(group) => group.split(',').for_each(|item| add(ident(item.trim()))),
                    None => add(ident(path)),
                }
            }
        }
    }
    graph
}

fn reachable(graph: &Graph, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_owned()];
    while let Some(m) = todo.pop() {
        for next in graph.get(&m).into_iter().flatten() {
            if seen.insert(next.clone()) {
                todo.push(next.clone());
            }
        }
    }
    seen
}

#[test]
fn the_reader_sees_the_known_edges() {
    let g = graph();
    // Without these the other test would pass on an empty graph.
    for (from, to) in [
        ("registry", "context"),
        ("registry", "entity"),
        ("entity", "context"),
    ] {
        assert!(g[from].contains(to), "{from} -> {to} not found in {g:#?}");
    }
}

#[test]
fn context_entity_and_registry_import_in_one_direction() {
    let g = graph();
    let three = ["context", "entity", "registry"];
    let edges: Vec<(&str, &str)> = three
        .iter()
        .flat_map(|a| three.iter().map(move |b| (*a, *b)))
        .filter(|(a, b)| g.get(*a).is_some_and(|to| to.contains(*b)))
        .collect();
    assert_eq!(
        edges,
        [
            ("entity", "context"),
            ("registry", "context"),
            ("registry", "entity")
        ]
    );
    // Nor does `context` come back to the other two through any other module.
    let below = reachable(&g, "context");
    for upper in ["entity", "registry", "context"] {
        assert!(
            !below.contains(upper),
            "context reaches {upper}: {below:?} (graph {g:#?})"
        );
    }
}
