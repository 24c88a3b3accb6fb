//! A real PostgreSQL 15 server per test (Debian `postgresql`): `initdb` in the test's
//! temporary directory, a free loopback port, `fsync` and `synchronous_commit` on, stopped
//! (immediately) on drop. As root the server runs as the `postgres` user, which owns the
//! cluster's directory. Self-contained: the storage crate's contract suite includes this
//! file too (storage cannot depend on this crate, which depends on it).

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = "/usr/lib/postgresql/15/bin";

#[derive(Debug)]
pub struct Postgres {
    pub dir: PathBuf,
    pub port: u16,
    stopped: bool,
}

fn as_owner(program: &str) -> Command {
    let path = format!("{BIN}/{program}");
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

/// Whether the tests run as root (servers then run as `postgres`).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

#[track_caller]
fn run(mut c: Command, what: &str) {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e} (Debian: apt-get install postgresql)"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Postgres {
    /// Initialises and starts a server with its cluster in `dir` (created).
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        if is_root() {
            open_to_postgres(dir);
        }
        let data = dir.join("data");
        let mut init = as_owner("initdb");
        init.args(["-A", "trust", "-U", "postgres", "--no-instructions", "-D"])
            .arg(&data);
        run(init, "initdb");
        let port = free_port();
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\nfsync = on\nsynchronous_commit = on\n",
            dir.display()
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut f, conf.as_bytes()).unwrap();
        let mut start = as_owner("pg_ctl");
        start
            .args(["-w", "-D"])
            .arg(&data)
            .args(["-l"])
            .arg(dir.join("server.log"))
            .arg("start");
        run(start, "pg_ctl start");
        Self {
            dir: dir.to_path_buf(),
            port,
            stopped: false,
        }
    }

    /// Starts the server again after [`Postgres::kill`] (crash recovery replays its WAL).
    pub fn restart(&mut self) {
        let mut start = as_owner("pg_ctl");
        start
            .args(["-w", "-D"])
            .arg(self.dir.join("data"))
            .args(["-l"])
            .arg(self.dir.join("server.log"))
            .arg("start");
        run(start, "pg_ctl start");
        self.stopped = false;
    }

    /// A connection string for database `postgres`.
    pub fn url(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres", self.port)
    }

    /// The output of `psql -At -c sql` against database `postgres` (a test's direct look).
    pub fn psql(&self, sql: &str) -> String {
        let out = Command::new(format!("{BIN}/psql"))
            .args(["-At", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-p"])
            .arg(self.port.to_string())
            .args(["-c", sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs the SQL file `path` with `psql -v name=value…` as the superuser.
    pub fn psql_file(&self, path: &Path, vars: &[(&str, &str)]) -> String {
        let mut c = Command::new(format!("{BIN}/psql"));
        c.args([
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-p",
        ])
        .arg(self.port.to_string());
        for (k, v) in vars {
            c.args(["-v", &format!("{k}={v}")]);
        }
        let out = c.arg("-f").arg(path).output().expect("psql");
        assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Serves TLS with `cert` and `key` (PEM) and refuses every connection without it
    /// (`hostssl` only), then restarts.
    pub fn require_tls(&mut self, cert: &Path, key: &Path) {
        let data = self.dir.join("data");
        std::fs::copy(cert, data.join("server.crt")).unwrap();
        std::fs::copy(key, data.join("server.key")).unwrap();
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(data.join("server.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        if is_root() {
            for f in ["server.crt", "server.key"] {
                let mut c = Command::new("chown");
                c.args(["postgres:postgres"]).arg(data.join(f));
                run(c, "chown");
            }
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(
            &mut f,
            b"ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        )
        .unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .unwrap();
        self.kill();
        self.restart();
    }

    /// Stops the server at once (no shutdown checkpoint: what a crash leaves).
    pub fn kill(&mut self) {
        if !self.stopped {
            let mut stop = as_owner("pg_ctl");
            stop.args(["-D"])
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "stop"]);
            let _ = stop.output();
            self.stopped = true;
        }
    }
}

/// Makes `dir` the `postgres` user's, reachable through the test's temporary directories.
pub fn open_to_postgres(dir: &Path) {
    for d in dir
        .ancestors()
        .take_while(|d| d.starts_with(std::env::temp_dir()) && *d != std::env::temp_dir())
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(d).unwrap().permissions().mode();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o711)).unwrap();
    }
    run(
        {
            let mut c = Command::new("chown");
            c.args(["postgres:postgres"]).arg(dir);
            c
        },
        "chown",
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}
