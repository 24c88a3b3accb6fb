//! Each README walkthrough, run from its shell blocks as extracted: servers (```` ```sh
//! test=NAME ready=ADDR ````) in the background until `ADDR` accepts connections, the other
//! blocks with `bash -euo pipefail`, in README order, in a fresh directory holding the
//! repository's `relay-client/` (the sample message). `cargo build …` lines are skipped and
//! `cargo run --release -p PKG [--bin NAME] [-- ARGS]` runs the binary the workspace's test
//! build made (`gateway`, `relay`, `push-proxy`, `push-sink`, `loadtest`) — so the README's
//! commands are run by the binaries under test, with the README's own ports (the
//! walkthroughs run one after another).

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{Block, blocks};

/// Where `cargo test --workspace` put the binaries.
fn bin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_gateway")).parent().unwrap().to_owned()
}

/// A README line as the test runs it.
fn prepare(script: &str) -> String {
    let mut out = String::new();
    for line in script.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("cargo build ") {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("cargo run --release -p ") {
            let (package, rest) = rest.split_once(' ').unwrap_or((rest, ""));
            let (binary, rest) = match rest.trim_start().strip_prefix("--bin ") {
                Some(r) => r.split_once(' ').unwrap_or((r, "")),
                None => (package, rest),
            };
            let args = rest.trim_start().strip_prefix("--").unwrap_or(rest);
            out.push_str(&format!("{binary}{args}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The background processes of a walkthrough; stopped (SIGTERM to each process group) on drop.
struct Servers(Vec<(Child, PathBuf)>);

impl Servers {
    fn logs(&self) -> String {
        self.0
            .iter()
            .map(|(_, log)| {
                format!(
                    "--- {}\n{}",
                    log.display(),
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .collect()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for (child, _) in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{}", child.id())])
                .status();
        }
        for (child, _) in &mut self.0 {
            let _ = child.wait();
        }
    }
}

fn shell(dir: &Path, script: &str) -> Command {
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .env(
            "PATH",
            format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap()),
        )
        .env("RUST_LOG", "info")
        .env_remove("RELAY_SERVER")
        .env_remove("RELAY_CA")
        .env_remove("RELAY_PROFILE")
        .env_remove("RELAY_CONFIG")
        .env_remove("RELAY_CREDENTIAL");
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd
}

async fn run(name: &str, blocks: &[Block]) {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::os::unix::fs::symlink(repo.join("relay-client"), dir.path().join("relay-client")).unwrap();
    let mut servers = Servers(Vec::new());
    for (n, block) in blocks.iter().enumerate() {
        let script = prepare(&block.script);
        let log = dir.path().join(format!("{name}-{n}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut child = shell(dir.path(), &script)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        match &block.ready {
            Some(addr) => {
                let mut exited = None;
                let what = format!("the {name} block {n} server to listen on {addr}");
                test_support::eventually(&what, Duration::from_secs(60), async || {
                    if let Ok(Some(status)) = child.try_wait() {
                        exited = Some(status);
                        return true;
                    }
                    tokio::net::TcpStream::connect(addr.as_str()).await.is_ok()
                })
                .await;
                servers.0.push((child, log.clone()));
                if let Some(status) = exited {
                    panic!("{name} block {n} exited ({status}):\n{script}\n{}", servers.logs());
                }
            }
            None => {
                let pid = child.id();
                let waited = tokio::time::timeout(
                    Duration::from_secs(120),
                    tokio::task::spawn_blocking(move || child.wait()),
                )
                .await;
                let mut output = String::new();
                std::fs::File::open(&log).unwrap().read_to_string(&mut output).unwrap();
                let Ok(status) = waited else {
                    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
                    panic!(
                        "{name} block {n} did not finish in 120 s:\n{script}\n{output}\n{}",
                        servers.logs()
                    );
                };
                let status = status.unwrap().unwrap();
                assert!(
                    status.success(),
                    "{name} block {n} failed ({status}):\n{script}\n--- output\n{output}\n{}",
                    servers.logs()
                );
            }
        }
    }
    let logs = servers.logs();
    drop(servers);
    assert!(!logs.contains("panicked"), "a server panicked in {name}:\n{logs}");
    // Every component says what it is doing: its start-up summary, what is not configured,
    // and the refusals that would otherwise only move a counter.
    for (walkthrough, lines) in SAYS {
        if *walkthrough == name {
            for line in *lines {
                assert!(logs.contains(line), "the {name} servers never logged {line:?}:\n{logs}");
            }
        }
    }
}

/// What each walkthrough's servers must have said in their logs.
const SAYS: &[(&str, &[&str])] = &[
    (
        "hsm",
        &[
            "under the key-encryption key of PKCS#11 token",
            "audit key rotated: handover checkpoint signed by both keys",
        ],
    ),
    (
        "quickstart",
        &[
            "gateway listening",
            "serving a development certificate",
            "no push proxy configured",
        ],
    ),
    (
        "push",
        &[
            "apns is not configured",
            "fcm is not configured",
            "push proxy ready",
            "push_proxy=\"https://localhost:8451\"",
        ],
    ),
    (
        "peering",
        &[
            "interconnect listening",
            "an envelope for a peer carrier was dead-lettered; its sender gets a delivery report",
        ],
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_readme_walkthrough_runs_as_written() {
    let all = blocks();
    let mut names: Vec<String> = Vec::new();
    for b in &all {
        if !names.contains(&b.walkthrough) {
            names.push(b.walkthrough.clone());
        }
    }
    for wanted in ["quickstart", "push", "peering", "loadtest", "hsm"] {
        assert!(
            names.iter().any(|n| n == wanted),
            "the README has no {wanted} walkthrough"
        );
    }
    for binary in ["gateway", "relay", "push-proxy", "push-sink", "loadtest"] {
        assert!(
            bin_dir().join(binary).exists(),
            "{binary} is not built: run the workspace's tests (`cargo test --workspace`, as .ci/run does)"
        );
    }
    for name in &names {
        let mine: Vec<Block> = all.iter().filter(|b| &b.walkthrough == name).cloned().collect();
        run(name, &mine).await;
    }
}

#[test]
fn cargo_lines_become_the_binaries() {
    assert_eq!(
        prepare("cargo build --release -p gateway\nrelay health\n"),
        "relay health\n"
    );
    assert_eq!(prepare("cargo run --release -p gateway\n"), "gateway\n");
    assert_eq!(
        prepare("cargo run --release -p gateway -- --config push.toml\n"),
        "gateway --config push.toml\n"
    );
    assert_eq!(
        prepare("cargo run --release -p test-support --bin push-sink -- serve --dir d\n"),
        "push-sink serve --dir d\n"
    );
}
