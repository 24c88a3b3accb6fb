//! The `gateway` binary as a child process on free loopback ports (crash, power-loss, fault
//! and observability tests). The binary's path comes from the calling test
//! (`env!("CARGO_BIN_EXE_gateway")`, which only the gateway's own tests can name).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use relay_client::{Client, Trust};

/// A gateway child process on a free loopback port; killed if the test panics.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    done: bool,
    pub url: String,
    ca: PathBuf,
    pub admin: u16,
}

/// A port free for both TCP and UDP (the gateway serves HTTP/3 on the same number).
pub fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Starts the gateway binary `bin` and waits until it is healthy, with `extra_toml` appended
/// to its configuration. Ports are picked free and released before the child binds them,
/// so another socket (our own clients' outgoing connections draw from the same ephemeral
/// range) can take one in between: when the child exits during start-up, it is started
/// again on fresh ports.
pub async fn spawn_gateway(
    bin: &Path,
    data_dir: &Path,
    log: &Path,
    extra_env: &[(&str, &str)],
    extra_toml: &str,
) -> Proc {
    for _attempt in 0..10 {
        let (port, admin) = (free_port(), free_port());
        let config = data_dir.with_extension("toml");
        std::fs::write(
            &config,
            format!(
                "[rate_limit]\nrequests_per_second = 100000\nburst = 100000\n\
                 sender_recipient_burst = 1000000000\nsender_recipient_per_second = 1000000\n\
                 recipient_bytes_burst = 1000000000000\nrecipient_bytes_per_second = 1000000000\n\
                 failed_auth_burst = 1000000\nregistration_burst = 1000000\nsender_queue_share_percent = 0\n{extra_toml}"
            ),
        )
        .unwrap();
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&config)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin}"))
            .stdout(Stdio::null())
            .stderr(log_file);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut p = Proc {
            done: false,
            child: cmd.spawn().unwrap(),
            url: format!("https://localhost:{port}"),
            ca: data_dir.join("tls/dev-ca.pem"),
            admin,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if p.ca.exists()
                && let Ok(c) = Client::new(&p.url, Trust::CaFile(p.ca.clone()))
                && c.healthz().await.is_ok()
            {
                return p;
            }
            if p.child.try_wait().unwrap().is_some() {
                p.done = true; // exited (e.g. a port was taken): try fresh ports
                break;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not become healthy; see {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("gateway kept exiting at start-up; see {}", log.display());
}

impl Proc {
    /// The process's resident memory (VmRSS), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// The client listener's address.
    pub fn addr(&self) -> std::net::SocketAddr {
        let port = self.url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// The development CA the client listener's certificate chains to.
    pub fn ca(&self) -> &Path {
        &self.ca
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url, Trust::CaFile(self.ca.clone())).unwrap()
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
        self.done = true;
    }

    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        self.done = true;
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
