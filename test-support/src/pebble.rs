//! Pebble (Let's Encrypt's ACME test CA, Debian `pebble`) and `pebble-challtestsrv` (its DNS:
//! every name is 127.0.0.1) as child processes, as in `../shared/recipes/pebble.sh`.
//!
//! Pebble's validator connects to fixed ports — `tls-alpn-01` on 5001, `http-01` on 5002 —
//! and listens on fixed ports itself (ACME 14000, management 15000, DNS 8053), so one runs
//! at a time: [`Pebble::start`] takes a process-wide lock held until the value is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rustls::pki_types::CertificateDer;

/// The port pebble validates `tls-alpn-01` on: the gateway's client listener in the tests.
pub const TLS_ALPN_PORT: u16 = 5001;
/// The port pebble validates `http-01` on.
pub const HTTP01_PORT: u16 = 5002;
/// The ACME directory.
pub const DIRECTORY: &str = "https://127.0.0.1:14000/dir";

static EXCLUSIVE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A running pebble; killed on drop.
#[derive(Debug)]
pub struct Pebble {
    dir: tempfile::TempDir,
    pebble: Option<Child>,
    challtestsrv: Child,
    _lock: tokio::sync::MutexGuard<'static, ()>,
}

impl Pebble {
    /// Starts challtestsrv and pebble and waits for the directory to answer. Panics with a
    /// clear message when the Debian package is missing (`.ci/run` installs it).
    pub async fn start() -> Self {
        let lock = EXCLUSIVE.lock().await;
        let dir = tempfile::tempdir().unwrap();
        // Pebble's own HTTPS listener needs a certificate; the test trusts this CA for it.
        let ca = crate::pki::RcgenCa::new(dir.path(), "pebble-listener");
        let listener = ca.issue("listener", "127.0.0.1", 1, None);
        let config = serde_json::json!({ "pebble": {
            "listenAddress": "127.0.0.1:14000",
            "managementListenAddress": "127.0.0.1:15000",
            "certificate": listener.cert, "privateKey": listener.key,
            "httpPort": HTTP01_PORT, "tlsPort": TLS_ALPN_PORT,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }});
        std::fs::write(dir.path().join("pebble-config.json"), config.to_string()).unwrap();
        let challtestsrv = Command::new("pebble-challtestsrv")
            .args([
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                "127.0.0.1:8053",
            ])
            .args([
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                "127.0.0.1:8055",
            ])
            .stdout(Stdio::null())
            .stderr(log(dir.path(), "challtestsrv.log"))
            .spawn()
            .expect("pebble-challtestsrv (Debian package pebble; .ci/run installs it)");
        let mut p = Self {
            pebble: None,
            challtestsrv,
            dir,
            _lock: lock,
        };
        p.start_pebble().await;
        p
    }

    async fn start_pebble(&mut self) {
        let child = Command::new("pebble")
            .arg("-config")
            .arg(self.dir.path().join("pebble-config.json"))
            .args(["-dnsserver", "127.0.0.1:8053"])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log(self.dir.path(), "pebble.log"))
            .stderr(log(self.dir.path(), "pebble.log"))
            .spawn()
            .expect("pebble (Debian package pebble; .ci/run installs it)");
        self.pebble = Some(child);
        let log = self.dir.path().join("pebble.log");
        crate::eventually(
            &format!("pebble's directory (see {})", log.display()),
            Duration::from_secs(30),
            async || self.get(DIRECTORY).is_some(),
        )
        .await;
    }

    /// Stops pebble (the CA) but not its DNS; its state (accounts, roots) is lost.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.pebble.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts pebble again after [`Pebble::stop`]: a new CA with new roots.
    pub async fn restart(&mut self) {
        self.stop();
        self.start_pebble().await;
    }

    /// The CA file that makes the directory's HTTPS listener trusted.
    pub fn listener_ca(&self) -> PathBuf {
        self.dir.path().join("pebble-listener-ca.pem")
    }

    /// The roots (and intermediates) pebble issues under: what a client of the gateway
    /// trusts, and nothing else.
    pub fn issuing_roots(&self) -> Vec<CertificateDer<'static>> {
        let mut roots = Vec::new();
        for path in ["roots/0", "intermediates/0"] {
            let pem = self
                .get(&format!("https://127.0.0.1:15000/{path}"))
                .unwrap_or_else(|| panic!("pebble /{path}"));
            roots.extend(relay_net::pem::parse_certs(pem.as_bytes()).unwrap());
        }
        // Only the root anchors trust; the intermediate comes from the served chain.
        roots.truncate(1);
        roots
    }

    /// Pebble's word on a certificate by serial (lowercase hex): `Valid` or `Revoked`.
    pub fn cert_status(&self, serial_hex: &str) -> String {
        let body = self
            .get(&format!("https://127.0.0.1:15000/cert-status-by-serial/{serial_hex}"))
            .unwrap_or_else(|| panic!("pebble knows no certificate {serial_hex}: {}", self.log()));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["Status"].as_str().unwrap_or_default().to_owned()
    }

    /// Pebble's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }

    fn get(&self, url: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-fsS", "--max-time", "5", "--cacert"])
            .arg(self.listener_ca())
            .arg(url)
            .output()
            .expect("curl");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.challtestsrv.kill();
        let _ = self.challtestsrv.wait();
    }
}

fn log(dir: &Path, name: &str) -> Stdio {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .unwrap();
    Stdio::from(f)
}
