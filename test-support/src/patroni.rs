//! A real high-availability PostgreSQL for failover drills: a three-node etcd cluster and
//! three Patroni-managed PostgreSQL 15 nodes (Debian `etcd-server`, `patroni`), all on free
//! loopback ports in the test's directory, with synchronous replication and
//! `synchronous_mode` (failover only to a synchronous standby, so an acknowledged commit
//! survives the primary's death). Every process is killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::postgres::is_root;
use crate::process::free_port;

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// One Patroni node: its Patroni process (which runs its PostgreSQL).
#[derive(Debug)]
struct Node {
    name: String,
    config: PathBuf,
    data: PathBuf,
    log: PathBuf,
    pg_port: u16,
    rest_port: u16,
    patroni: Option<Child>,
}

#[derive(Debug)]
pub struct Cluster {
    etcd: Vec<Child>,
    nodes: Vec<Node>,
}

/// A command run as the `postgres` user when we are root (`setpriv` execs: the child's pid
/// is the program's own, so killing it kills the program).
fn as_postgres(program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            "postgres",
            "--regid",
            "postgres",
            "--init-groups",
            "--",
            program,
        ]);
        c
    } else {
        Command::new(program)
    }
}

impl Cluster {
    /// Starts etcd and three Patroni nodes under `dir` and waits until one leads and two
    /// stream from it.
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        if is_root() {
            crate::postgres::open_to_postgres(dir);
        }
        let etcd_ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = etcd_ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
            .collect();
        let mut etcd = Vec::new();
        for (i, (client, peer)) in etcd_ports.iter().enumerate() {
            let log = std::fs::File::create(dir.join(format!("etcd{i}.log"))).unwrap();
            etcd.push(
                Command::new("etcd")
                    .args(["--name", &format!("e{i}"), "--data-dir"])
                    .arg(dir.join(format!("etcd{i}")))
                    .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
                    .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
                    .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                    .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
                    .args(["--initial-cluster", &initial.join(",")])
                    .args([
                        "--initial-cluster-token",
                        "relay-test",
                        "--initial-cluster-state",
                        "new",
                    ])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("etcd (Debian: apt-get install etcd-server)"),
            );
        }
        let hosts: Vec<String> = etcd_ports.iter().map(|(c, _)| format!("127.0.0.1:{c}")).collect();
        let mut nodes = Vec::new();
        for i in 1..=3 {
            let (pg_port, rest_port) = (free_port(), free_port());
            let name = format!("p{i}");
            let data = dir.join(&name);
            let config = dir.join(format!("{name}.yml"));
            std::fs::write(
                &config,
                format!(
                    "scope: relay\nname: {name}\nrestapi:\n  listen: 127.0.0.1:{rest_port}\n  connect_address: 127.0.0.1:{rest_port}\n\
                     etcd3:\n  hosts: {hosts}\n\
                     bootstrap:\n  dcs:\n    ttl: 10\n    loop_wait: 1\n    retry_timeout: 4\n    maximum_lag_on_failover: 0\n    synchronous_mode: true\n\
                     \x20   postgresql:\n      use_pg_rewind: true\n      parameters:\n        synchronous_commit: 'on'\n        wal_level: replica\n        max_wal_senders: 10\n        wal_log_hints: 'on'\n\
                     \x20 initdb: [{{encoding: UTF8}}, data-checksums]\n\
                     \x20 pg_hba:\n    - host replication replicator 127.0.0.1/32 trust\n    - host all all 127.0.0.1/32 trust\n\
                     postgresql:\n  listen: 127.0.0.1:{pg_port}\n  pgpass: {dir}/{name}.pgpass\n  connect_address: 127.0.0.1:{pg_port}\n  data_dir: {data}\n  bin_dir: {BIN}\n\
                     \x20 authentication:\n    superuser: {{username: postgres, password: unused}}\n    replication: {{username: replicator, password: unused}}\n\
                     \x20 parameters:\n    unix_socket_directories: '{dir}'\n",
                    hosts = hosts.join(","),
                    data = data.display(),
                    dir = dir.display(),
                ),
            )
            .unwrap();
            let mut node = Node {
                name,
                config,
                data,
                log: dir.join(format!("p{i}.log")),
                pg_port,
                rest_port,
                patroni: None,
            };
            node.spawn();
            nodes.push(node);
        }
        let cluster = Self { etcd, nodes };
        cluster.wait_healthy(Duration::from_secs(90));
        cluster
    }

    /// A connection string naming every node: a client follows the primary.
    pub fn url(&self) -> String {
        let hosts: Vec<&str> = self.nodes.iter().map(|_| "127.0.0.1").collect();
        let ports: Vec<String> = self.nodes.iter().map(|n| n.pg_port.to_string()).collect();
        format!(
            "host={} port={} user=postgres dbname=postgres target_session_attrs=read-write",
            hosts.join(","),
            ports.join(",")
        )
    }

    /// `(name, role, state)` of every member, as Patroni reports them (from any node that answers).
    pub fn members(&self) -> Vec<(String, String, String)> {
        for n in &self.nodes {
            let Some(body) = http_get(n.rest_port, "/cluster") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            return v["members"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    let s = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
                    (s("name"), s("role"), s("state"))
                })
                .collect();
        }
        Vec::new()
    }

    /// The leader's name, if there is one.
    pub fn leader(&self) -> Option<String> {
        self.members()
            .into_iter()
            .find(|(_, role, state)| role == "leader" && state == "running")
            .map(|m| m.0)
    }

    /// Waits until a leader runs and both other members stream from it.
    pub fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let m = self.members();
            let leader = m.iter().filter(|(_, r, s)| r == "leader" && s == "running").count();
            let streaming = m
                .iter()
                .filter(|(_, r, s)| r != "leader" && (s == "streaming" || s == "running"))
                .count();
            if leader == 1 && streaming == 2 && m.iter().any(|(_, r, _)| r == "sync_standby") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Patroni cluster did not become healthy: {m:?}; see {}",
                self.nodes[0].log.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills the leader's node at once — Patroni and PostgreSQL, `SIGKILL` — and returns
    /// its name.
    pub fn kill_leader(&mut self) -> String {
        let leader = self.leader().expect("a leader");
        let node = self.nodes.iter_mut().find(|n| n.name == leader).unwrap();
        node.kill();
        leader
    }

    /// Starts a killed node's Patroni again (it rejoins as a replica).
    pub fn restart(&mut self, name: &str) {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap().spawn();
    }

    /// The data directories of the nodes (a canary scans them).
    pub fn data_dirs(&self) -> Vec<PathBuf> {
        self.nodes.iter().map(|n| n.data.clone()).collect()
    }
}

impl Node {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.patroni = Some(
            as_postgres("patroni")
                .arg(&self.config)
                .env("HOME", self.config.parent().unwrap_or_else(|| Path::new("/tmp")))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("patroni (Debian: apt-get install patroni)"),
        );
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.patroni.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        // The postmaster (its children exit when it dies).
        if let Ok(pid) = std::fs::read_to_string(self.data.join("postmaster.pid"))
            && let Some(pid) = pid.lines().next()
        {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        for e in &mut self.etcd {
            let _ = e.kill();
            let _ = e.wait();
        }
    }
}

/// GET `path` from a loopback HTTP/1.1 server: the body, if it answered 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    // Patroni answers HTTP/1.0, unchunked.
    (head.split(' ').nth(1) == Some("200")).then(|| body.to_owned())
}
