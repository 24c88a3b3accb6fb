//! Fixtures shared by the integration tests: an in-process gateway on a loopback port
//! picked at run time ([`TestGateway`]), real MLS members driven by openmls
//! ([`mls::Member`]), and helpers for tests that run the gateway binary.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod curl;
pub mod faulty_proxy;
pub mod h2flood;
pub mod independent;
pub mod mls;
pub mod mlsrs;
pub mod patroni;
pub mod pebble;
pub mod pki;
pub mod postgres;
pub mod process;
pub mod push_sinks;
pub mod softhsm;
mod wait;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use gateway::config::Config;
use relay_client::{Client, Protocol, Trust};
use storage::prelude::*;
use tokio_util::sync::CancellationToken;

/// What [`TestGateway::snapshot`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub stats: storage::Stats,
    pub digest: [u8; 32],
}

/// A gateway running in this process, with its own temporary data directory.
#[derive(Debug)]
pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The interconnect listener, when `[interconnect]` is configured.
    pub interconnect_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// The protocol `client()` speaks.
    pub protocol: Protocol,
    state: gateway::api::AppState,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: Option<tempfile::TempDir>,
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with a configuration adjusted by `tweak` (listeners on 127.0.0.1:0).
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut g = Self::start_in(dir.path(), tweak).await;
        g._dir = Some(dir);
        g
    }

    /// Starts on an existing data directory (restarts).
    pub async fn start_in(data_dir: &Path, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config {
            data_dir: data_dir.to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        config.rate_limit.requests_per_second = 10_000;
        config.rate_limit.burst = 10_000;
        // The abuse limits have their own tests (gateway/tests/it/abuse.rs); elsewhere one
        // sender writes to one recipient thousands of times a second.
        config.rate_limit.sender_recipient_burst = 1 << 40;
        config.rate_limit.sender_recipient_per_second = 1 << 30;
        config.rate_limit.recipient_bytes_burst = 1 << 50;
        config.rate_limit.recipient_bytes_per_second = 1 << 40;
        config.rate_limit.failed_auth_burst = 1 << 30;
        config.rate_limit.registration_burst = 1 << 30;
        config.rate_limit.sender_queue_share_percent = 0;
        // Small journal segments: each gateway preallocates one ahead of time.
        config.storage.journal_segment_mb = 2;
        tweak(&mut config);
        let settings = config.validate().unwrap();
        let shutdown = CancellationToken::new();
        let running = gateway::start(settings, shutdown.clone()).await.unwrap();
        let (addr, admin_addr, state) = (running.addr, running.admin_addr, running.state().clone());
        let interconnect_addr = running.interconnect_addr;
        let task = tokio::spawn(async move { running.wait().await.unwrap() });
        Self {
            protocol: Protocol::Http2,
            addr,
            admin_addr,
            interconnect_addr,
            data_dir: data_dir.to_path_buf(),
            state,
            shutdown,
            task,
            _dir: None,
        }
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn ca(&self) -> PathBuf {
        self.data_dir.join("tls/dev-ca.pem")
    }

    /// Makes `client()` speak `protocol`.
    #[must_use]
    pub fn speaking(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// An unauthenticated client that trusts the development CA, speaking `self.protocol`.
    pub fn client(&self) -> Client {
        self.client_over(self.protocol)
    }

    /// An unauthenticated client speaking `protocol`.
    pub fn client_over(&self, protocol: Protocol) -> Client {
        Client::connect(&self.url(), Trust::CaFile(self.ca()), protocol).unwrap()
    }

    /// A provisioning token for `address`, signed with this gateway's dev key.
    pub fn provision(&self, address: &str) -> String {
        provision_token(&self.data_dir, address, 3_600_000)
    }

    /// Registers a device of `address` and returns an authenticated client.
    pub async fn device(&self, address: &str) -> (Client, u32) {
        let c = self.client();
        let reg = c.register(&self.provision(address)).await.unwrap();
        (c.with_credential(reg.credential), reg.device_id)
    }

    /// The recipient id of `address` under this gateway's key.
    pub fn rid(&self, address: &str) -> relay_core::Rid {
        use gateway::keys::KeyProvider as _;
        let keys = gateway::keys::ProviderKeys::open_or_create(
            &gateway::keys::key_dir(&self.data_dir),
            &relay_keys::Provider::files(),
            None,
        )
        .unwrap();
        keys.rid_key().rid(&relay_core::Address::parse(address).unwrap())
    }

    pub async fn stats(&self) -> storage::Stats {
        self.state.store().stats().await.unwrap()
    }

    /// Counts and a hash of every stored record: equal snapshots mean nothing stored changed.
    pub async fn snapshot(&self) -> Snapshot {
        Snapshot {
            stats: self.stats().await,
            digest: self.state.store().digest().await.unwrap(),
        }
    }

    pub fn state(&self) -> &gateway::api::AppState {
        &self.state
    }

    /// Graceful shutdown; returns when storage is closed.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap();
    }
}

impl TestGateway {
    /// A raw TLS 1.3 connection to the client listener, trusting the dev CA, offering
    /// `alpn` (for tests that write HTTP by hand).
    pub async fn tls_connect(&self, alpn: &[u8]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(self.ca()).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![alpn.to_vec()];
        let tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap()
    }
}

pub use wait::eventually;

/// One plain HTTP/1.1 request to a gateway's admin listener: the raw response, or `None` if
/// the gateway is not answering.
pub async fn admin_request(addr: SocketAddr, method: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

/// Signs a provisioning token with the key in `data_dir/keys/`.
pub fn provision_token(data_dir: &Path, address: &str, valid_for_ms: u64) -> String {
    let key =
        gateway::keys::provisioning_signer(&gateway::keys::key_dir(data_dir), &relay_keys::Provider::files()).unwrap();
    let mut nonce = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut nonce);
    let claims = relay_core::provisioning::ProvisioningClaims {
        address: relay_core::Address::parse(address).unwrap(),
        expires_at_ms: relay_net::clock::now_ms().saturating_add(valid_for_ms),
        nonce,
    };
    key.sign(&claims).unwrap()
}

/// A token that expired a minute ago.
pub fn expired_token(data_dir: &Path, address: &str) -> String {
    let key =
        gateway::keys::provisioning_signer(&gateway::keys::key_dir(data_dir), &relay_keys::Provider::files()).unwrap();
    let claims = relay_core::provisioning::ProvisioningClaims {
        address: relay_core::Address::parse(address).unwrap(),
        expires_at_ms: relay_net::clock::now_ms() - 60_000,
        nonce: [1; 16],
    };
    key.sign(&claims).unwrap()
}

/// A distinct, well-formed MLS PrivateMessage carrying `tag` as its ciphertext.
pub fn framed_message(tag: &[u8]) -> bytes::Bytes {
    relay_core::envelope::frame_private_message(b"test-group", 1, tag).into()
}

/// Recursively searches every file under `dir` for `needle`; returns the offending paths.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && contains(&bytes, needle)
            {
                hits.push(p);
            }
        }
    }
    hits
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
