//! Repository invariants that `cargo test` enforces.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn workspace_members() -> Vec<String> {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let start = manifest.find("members = [").unwrap();
    let end = start + manifest[start..].find(']').unwrap();
    manifest[start..end]
        .lines()
        .filter_map(|l| l.trim().strip_prefix('"')?.split('"').next().map(str::to_owned))
        .collect()
}

/// ARCHITECTURE.md names every crate folder (it must not go stale).
#[test]
fn architecture_names_every_crate() {
    let arch = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let members = workspace_members();
    assert!(members.len() >= 5, "{members:?}");
    for m in members {
        assert!(
            arch.contains(&format!("`{m}/`")),
            "ARCHITECTURE.md does not describe `{m}/`"
        );
    }
}

/// One TLS crypto provider (ring) and one rustls in the dependency graph.
#[test]
fn one_crypto_provider() {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).unwrap();
    for banned in ["aws-lc-rs", "aws-lc-sys", "openssl-sys", "native-tls"] {
        assert!(
            !lock.contains(&format!("name = \"{banned}\"")),
            "{banned} is in Cargo.lock"
        );
    }
    assert_eq!(
        lock.matches("name = \"rustls\"\n").count(),
        1,
        "exactly one rustls version"
    );
}

/// Every example configuration in deploy/ parses and validates.
#[test]
fn deploy_configs_parse() {
    let mut n = 0;
    for entry in std::fs::read_dir(root().join("deploy")).unwrap() {
        let path = entry.unwrap().path();
        // push-proxy*.toml and peers.toml are not gateway configurations (the push-proxy and
        // interconnect crates parse them in their own tests).
        let other = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("push-proxy") || n == "peers.toml");
        if path.extension().is_some_and(|e| e == "toml") && !other {
            let text = std::fs::read_to_string(&path).unwrap();
            gateway::Config::from_toml(&text, &path).unwrap().validate().unwrap();
            n += 1;
        }
    }
    assert!(n > 0, "no example configuration found");
}

/// Every `.rs` file under a workspace member's `src/`, with its crate folder.
fn source_files() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for member in workspace_members() {
        let mut stack = vec![root().join(&member).join("src")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push((member.clone(), path));
                }
            }
        }
    }
    out
}

/// No source file carries a whole subsystem: past ~500 lines, split it by responsibility
/// (tests live in `tests/`, so they do not count here).
#[test]
fn source_files_stay_small() {
    let files = source_files();
    assert!(files.len() > 20, "{files:?}");
    let big: Vec<String> = files
        .iter()
        .filter_map(|(_, p)| {
            let n = std::fs::read_to_string(p).unwrap().lines().count();
            (n > 520).then(|| format!("{} ({n} lines)", p.display()))
        })
        .collect();
    assert!(big.is_empty(), "split these files: {big:?}");
}

/// The modules of a crate form no import circle: `crate::a` used in module `b` is an edge
/// b → a between top-level modules, and the graph has no cycle.
#[test]
fn no_module_import_cycles() {
    use std::collections::{BTreeMap, BTreeSet};
    let mut graphs: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (member, path) in source_files() {
        let src = root().join(&member).join("src");
        let rel = path.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .into_owned();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "lib" || module == "main" || module == "bin" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let edges = graphs.entry(member).or_default().entry(module.clone()).or_default();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let before = line[..i].chars().last();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue; // `relay_crate::`, not ours
                }
                let target: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !target.is_empty() && target != module {
                    edges.insert(target);
                }
            }
        }
    }
    for (member, graph) in &graphs {
        // Depth-first search for a back edge; only edges to modules of this crate count.
        fn visit(
            node: &str,
            graph: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) -> Option<Vec<String>> {
            if let Some(at) = path.iter().position(|p| p == node) {
                let mut cycle = path[at..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            if !done.insert(node.to_owned()) {
                return None;
            }
            path.push(node.to_owned());
            for next in graph.get(node).into_iter().flatten() {
                if graph.contains_key(next)
                    && let Some(c) = visit(next, graph, path, done)
                {
                    return Some(c);
                }
            }
            path.pop();
            None
        }
        let mut done = BTreeSet::new();
        for node in graph.keys() {
            if let Some(cycle) = visit(node, graph, &mut Vec::new(), &mut done) {
                panic!("{member}: modules import each other in a circle: {}", cycle.join(" → "));
            }
        }
    }
    assert!(graphs.contains_key("gateway"), "{:?}", graphs.keys());
}
