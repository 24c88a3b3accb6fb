//! The README cannot drift from the binaries: its configuration table names every key the
//! gateway accepts exactly once (and nothing else), and its walkthroughs' shell blocks run,
//! extracted as they are, against the real binaries (`walkthroughs`).

mod walkthroughs;

use std::collections::BTreeMap;

const README: &str = include_str!("../../../../README.md");

/// Every key `gateway --config` accepts, as `section.key`, from the configuration types
/// themselves (serde-reflection traces what `Deserialize` asks for).
fn config_keys() -> Vec<String> {
    use serde_reflection::{ContainerFormat, Format, Registry, Samples, Tracer, TracerConfig};
    let mut tracer = Tracer::new(TracerConfig::default());
    tracer.trace_type::<gateway::config::Config>(&Samples::new()).unwrap();
    let registry = tracer.registry_unchecked();
    fn walk(registry: &Registry, container: &str, prefix: &str, out: &mut Vec<String>) {
        let Some(ContainerFormat::Struct(fields)) = registry.get(container) else {
            panic!("{container} is not a struct");
        };
        for field in fields {
            let key = format!("{prefix}{}", field.name);
            let mut format = &field.value;
            while let Format::Option(inner) = format {
                format = inner;
            }
            match format {
                Format::TypeName(name) if matches!(registry.get(name), Some(ContainerFormat::Struct(_))) => {
                    walk(registry, name, &format!("{key}."), out);
                }
                _ => out.push(key),
            }
        }
    }
    let mut out = Vec::new();
    walk(&registry, "Config", "", &mut out);
    out
}

/// The keys named in the first column of the README's configuration table, each with the
/// number of rows naming it.
fn table_keys() -> BTreeMap<String, usize> {
    let table = README
        .split("| key | default | meaning |")
        .nth(1)
        .expect("the README has a configuration table");
    let mut keys = BTreeMap::new();
    for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let first = row.split('|').nth(1).unwrap();
        for (i, part) in first.split('`').enumerate() {
            if i % 2 == 1 {
                *keys.entry(part.to_owned()).or_default() += 1;
            }
        }
    }
    keys
}

#[test]
fn the_configuration_table_names_every_key_exactly_once() {
    let accepted = config_keys();
    assert!(
        accepted.contains(&"limits.max_envelope_bytes".to_owned()) && accepted.contains(&"acme.domains".to_owned()),
        "the trace reaches nested sections: {accepted:?}"
    );
    let table = table_keys();
    let missing: Vec<_> = accepted.iter().filter(|k| !table.contains_key(*k)).collect();
    assert!(
        missing.is_empty(),
        "keys the README's configuration table does not name: {missing:?}"
    );
    let twice: Vec<_> = table.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "keys named by more than one row: {twice:?}");
    let unknown: Vec<_> = table.keys().filter(|k| !accepted.contains(k)).collect();
    assert!(
        unknown.is_empty(),
        "rows naming keys the gateway does not accept: {unknown:?}"
    );
}

/// One fenced shell block of a walkthrough: ```` ```sh test=NAME [server ready=HOST:PORT] ````.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    pub walkthrough: String,
    /// A long-running process (a server): started in the background, ready once `ready`
    /// accepts connections.
    pub ready: Option<String>,
    pub script: String,
}

/// The walkthrough blocks, in README order.
pub(crate) fn blocks() -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = README.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```sh ") else {
            continue;
        };
        let indent = line.len() - line.trim_start().len();
        let mut walkthrough = None;
        let mut ready = None;
        for word in info.split_whitespace() {
            if let Some(name) = word.strip_prefix("test=") {
                walkthrough = Some(name.to_owned());
            } else if let Some(addr) = word.strip_prefix("ready=") {
                ready = Some(addr.to_owned());
            } else {
                panic!("unknown word {word:?} in README block {line:?}");
            }
        }
        let mut script = String::new();
        for l in lines.by_ref() {
            if l.trim_start() == "```" {
                break;
            }
            script.push_str(l.get(indent..).unwrap_or_else(|| l.trim_start()));
            script.push('\n');
        }
        if let Some(walkthrough) = walkthrough {
            out.push(Block {
                walkthrough,
                ready,
                script,
            });
        }
    }
    out
}
