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
