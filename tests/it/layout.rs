//! The layout holds: sources know neither parsing nor the queue, and no
//! top-level module of `src/` imports, directly or through others, one that
//! imports it back. Read from the source text (`crate::NAME` outside test
//! modules and comments), so a change that breaks it fails here by name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its test module and comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("source file");
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => match text.find("#[cfg(test)]\npub(crate) mod tests") {
            Some(i) => &text[..i],
            None => &text[..],
        },
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level module -> the top-level modules it names as `crate::NAME`.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let code = code(&file);
        let deps = graph.entry(module.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let name: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                deps.insert(name);
            }
        }
    }
    graph
}

#[test]
fn sources_import_neither_parsing_nor_the_queue() {
    let graph = imports();
    let source = &graph["source"];
    assert!(
        !source.contains("parse") && !source.contains("queue") && !source.contains("stage"),
        "src/source/ imports {source:?}: a source hands records to a Sink and knows nothing of what it does with them"
    );
}

#[test]
fn no_module_imports_itself_through_others() {
    let graph = imports();
    for start in graph.keys() {
        // Every module reachable from `start`; reaching `start` again is a cycle.
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        while let Some((module, path)) = stack.pop() {
            for dep in graph.get(&module).into_iter().flatten() {
                assert!(dep != start, "module cycle: {} -> {dep}", path.join(" -> "));
                if seen.insert(dep.clone()) {
                    let mut next = path.clone();
                    next.push(dep.clone());
                    stack.push((dep.clone(), next));
                }
            }
        }
    }
    // Print the graph for the record (cargo test -- --nocapture).
    for (module, deps) in &graph {
        println!("{module} -> {deps:?}");
    }
}

/// A file longer than this before its tests does more than one job.
const MAX_LINES_BEFORE_TESTS: usize = 700;

#[test]
fn no_source_file_is_longer_than_one_job() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut lengths: Vec<(usize, String)> = files
        .iter()
        .map(|file| {
            let text = std::fs::read_to_string(file).expect("source file");
            let before_tests = text
                .find("#[cfg(test)]\nmod tests")
                .map_or(&text[..], |i| &text[..i]);
            let rel = file.strip_prefix(&src).expect("under src");
            (before_tests.lines().count(), rel.display().to_string())
        })
        .collect();
    lengths.sort();
    let too_long: Vec<&(usize, String)> = lengths
        .iter()
        .filter(|(n, _)| *n > MAX_LINES_BEFORE_TESTS)
        .collect();
    assert!(
        too_long.is_empty(),
        "files past {MAX_LINES_BEFORE_TESTS} lines before their tests (split them by job): {too_long:?}"
    );
    // The longest, for the record (cargo test -- --nocapture).
    for (n, file) in lengths.iter().rev().take(5) {
        println!("{n:5} src/{file}");
    }
}
