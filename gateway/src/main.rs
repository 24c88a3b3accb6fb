//! `gateway`: run the relay, mint a provisioning token, or ask the running gateway about its
//! certificate and audit log.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gateway::admin_client::{admin_call, admin_request, query_value};
use gateway::config::{Config, Overrides};

/// mimalloc: glibc's allocator spent a sixth of the gateway's CPU under load (request bodies,
/// sled nodes and HTTP/2 buffers freed on other threads than they were allocated on).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// EX_USAGE: the configuration is invalid.
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "gateway", version, about = "rcs-relay: ciphertext-only MLS message relay")]
struct Cli {
    /// TOML configuration file (all keys optional).
    #[arg(long, global = true, env = "RELAY_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `data_dir`.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Overrides `listen` (client API, TLS).
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    /// Overrides `admin_listen` (metrics, health).
    #[arg(long, global = true)]
    admin_listen: Option<SocketAddr>,
    /// Operator client certificate (PEM) for the mutual-TLS operator listener
    /// (`[admin] operator_listen`).
    #[arg(long, global = true, env = "RELAY_OPERATOR_CERT")]
    operator_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, global = true, env = "RELAY_OPERATOR_KEY")]
    operator_key: Option<PathBuf>,
    /// CA of the gateway's certificate, for the operator listener (default: the development
    /// CA in `data_dir/tls/dev-ca.pem`).
    #[arg(long, global = true, env = "RELAY_ADMIN_CA")]
    admin_ca: Option<PathBuf>,
    /// Overrides `log.json`: `text` (human-readable) or `json` (one object per line).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Print a provisioning token for ADDRESS, signed with the key in `data_dir/keys/`.
    Provision {
        /// `tel:+E.164` address the token allows to register.
        address: String,
        /// Validity of the token in seconds.
        #[arg(long, default_value_t = 3600)]
        valid_for: u64,
    },
    /// The client listener's ACME certificate, through the running gateway's admin listener.
    Acme {
        #[command(subcommand)]
        action: AcmeAction,
    },
    /// The audit log, through the running gateway's admin listener.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Kill switches, durable across restarts: `registration`, `keypackage_upload`, `push`,
    /// `peer:<name>` (its envelopes stay queued until it is back on).
    Switch {
        #[command(subcommand)]
        action: SwitchAction,
    },
    /// Revoke a device: its credential fails at once (open long-polls too), its KeyPackages
    /// can no longer be claimed, Welcomes to them are refused.
    Revoke {
        /// The device's address (`tel:+E.164`).
        #[arg(required_unless_present = "rid", conflicts_with = "rid")]
        address: Option<String>,
        /// The address's rid instead (64 hex digits, as `gateway registered` lists it).
        #[arg(long)]
        rid: Option<String>,
        #[arg(long)]
        device: u32,
    },
    /// Suspend an address (it may not register or send); `--lift` ends the suspension.
    Suspend {
        address: String,
        #[arg(long)]
        lift: bool,
    },
    /// Approve a destructive call another operator will make (dual control), e.g.
    /// `keys.destroy:provisioning:<id>`.
    Approve { action: String },
    /// Provider keys: inventory and the provisioning keys' rotation (the running gateway
    /// picks changes up at once and audits them).
    Keys {
        #[command(subcommand)]
        action: gateway::keys_cli::KeysAction,
    },
    /// The evidence bundle: audit log and checkpoint, key inventory, configuration hash,
    /// peer table and residency policy, certificates and CRLs in use — signed.
    Evidence {
        #[command(subcommand)]
        action: EvidenceAction,
    },
    /// Devices registered in a time window (from the audit log), by rid: what a stolen
    /// provisioning key registered.
    Registered {
        /// Start of the window, milliseconds since the Unix epoch.
        #[arg(long, default_value_t = 0)]
        since_ms: u64,
        /// End of the window (default: now).
        #[arg(long)]
        until_ms: Option<u64>,
        /// Only devices registered with tokens of this provisioning key (its id).
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum EvidenceAction {
    /// Write the bundle (a tar archive with a manifest signed by the audit key).
    Export {
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a bundle: the manifest's signature, every file's hash, the audit log in it.
    Verify {
        file: PathBuf,
        /// The audit verifier key; default: `data_dir/keys/audit.vkey`.
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum SwitchAction {
    /// The switches that are off.
    List,
    /// Switch NAME off.
    Off { name: String },
    /// Switch NAME back on.
    On { name: String },
}

#[derive(Debug, Subcommand)]
enum AuditAction {
    /// Every record, oldest first, one JSON object per line (seq, at_ms, kind, detail, hash),
    /// after the gateway has checked the hash chain.
    Show,
    /// Records and signed checkpoints, one JSON object per line (for a SIEM, or `verify`).
    Export,
    /// Sign a checkpoint of the log as it is now and print it (an auditor keeps it, to check
    /// later that the log still holds exactly these records).
    Checkpoint,
    /// Check every record, the Merkle tree and every checkpoint's signature; exits 1 naming
    /// the first record that cannot be proven.
    Verify {
        /// An export (`gateway audit export > FILE`); default: the running gateway's.
        #[arg(long)]
        file: Option<PathBuf>,
        /// An earlier checkpoint (`gateway audit checkpoint > FILE`) the log must still match.
        #[arg(long)]
        against: Option<PathBuf>,
        /// The audit verifier key; default: `data_dir/keys/audit.vkey`.
        #[arg(long)]
        key: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AcmeAction {
    /// Serial, expiry, next renewal and recent failures.
    Status,
    /// Renew the certificate (the gateway also renews on its own schedule).
    Renew {
        /// Renew now, whatever the schedule says (required: a reminder that it asks the CA).
        #[arg(long)]
        now: bool,
    },
    /// Revoke the certificate being served, then obtain one with a new key.
    Revoke {
        /// RFC 5280 reason: keyCompromise, superseded, affiliationChanged,
        /// cessationOfOperation, unspecified.
        #[arg(long, value_parser = relay_net::acme::REVOCATION_REASONS)]
        reason: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        data_dir: cli.data_dir,
        listen: cli.listen,
        admin_listen: cli.admin_listen,
    };
    let settings = match Config::load(cli.config.as_deref(), &overrides) {
        Ok(mut s) => {
            if let Some(format) = cli.log_format {
                s.config.log.json = matches!(format, LogFormat::Json);
            }
            s
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "gateway: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let (Some(addr), Some(_)) = (
        settings.config.admin.operator_listen,
        &settings.config.admin.operator_ca,
    ) {
        let ca = cli
            .admin_ca
            .clone()
            .unwrap_or_else(|| settings.config.data_dir.join("tls/dev-ca.pem"));
        gateway::admin_client::use_operator_listener(gateway::admin_client::OperatorTarget {
            addr,
            ca,
            identity: cli.operator_cert.clone().zip(cli.operator_key.clone()),
        });
    }
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings),
        Command::Provision { address, valid_for } => provision(&settings, &address, valid_for),
        Command::Acme { action } => {
            let path = match action {
                AcmeAction::Status => ("GET", "/admin/acme".to_owned()),
                AcmeAction::Renew { now: true } => ("POST", "/admin/acme/renew".to_owned()),
                AcmeAction::Renew { now: false } => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "gateway: the gateway renews on its own schedule (see `gateway acme status`); pass --now to renew immediately"
                    );
                    return ExitCode::from(EXIT_CONFIG);
                }
                AcmeAction::Revoke { reason } => ("POST", format!("/admin/acme/revoke?reason={reason}")),
            };
            admin_call(settings.config.admin_listen, path.0, &path.1)
        }
        Command::Switch { action } => {
            let path = match action {
                SwitchAction::List => ("GET", "/admin/switches".to_owned()),
                SwitchAction::Off { name } => ("POST", format!("/admin/switches/{name}/off")),
                SwitchAction::On { name } => ("POST", format!("/admin/switches/{name}/on")),
            };
            admin_call(settings.config.admin_listen, path.0, &path.1)
        }
        Command::Revoke { address, rid, device } => {
            let who = match (address, rid) {
                (Some(a), _) => format!("address={}", query_value(&a)),
                (None, Some(r)) => format!("rid={}", query_value(&r)),
                (None, None) => unreachable!("clap requires one"),
            };
            admin_call(
                settings.config.admin_listen,
                "POST",
                &format!("/admin/devices/revoke?{who}&device={device}"),
            )
        }
        Command::Suspend { address, lift } => admin_call(
            settings.config.admin_listen,
            "POST",
            &format!(
                "/admin/addresses/{}?address={}",
                if lift { "unsuspend" } else { "suspend" },
                query_value(&address)
            ),
        ),
        Command::Registered {
            since_ms,
            until_ms,
            key,
        } => admin_call(
            settings.config.admin_listen,
            "GET",
            &format!(
                "/admin/devices/registered?since_ms={since_ms}&until_ms={}{}",
                until_ms.unwrap_or_else(relay_net::clock::now_ms),
                key.map(|k| format!("&key={}", query_value(&k))).unwrap_or_default()
            ),
        ),
        Command::Evidence { action } => evidence(&settings, cli.config.as_deref(), action),
        Command::Keys {
            action: gateway::keys_cli::KeysAction::Destroy { name },
        } => admin_call(
            settings.config.admin_listen,
            "POST",
            &format!("/admin/keys/destroy?key={}", query_value(&name)),
        ),
        Command::Keys { action } => gateway::keys_cli::run(&settings, action),
        Command::Approve { action } => admin_call(
            settings.config.admin_listen,
            "POST",
            &format!("/admin/approvals?action={}", query_value(&action)),
        ),
        Command::Audit { action } => match action {
            AuditAction::Show => admin_call(settings.config.admin_listen, "GET", "/admin/audit"),
            AuditAction::Export => admin_call(settings.config.admin_listen, "GET", "/admin/audit/export"),
            AuditAction::Checkpoint => admin_call(settings.config.admin_listen, "POST", "/admin/audit/checkpoint"),
            AuditAction::Verify { file, against, key } => {
                audit_verify(&settings, file.as_deref(), against.as_deref(), key)
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(settings: gateway::Settings) -> anyhow::Result<()> {
    gateway::telemetry::init_logging(settings.config.log.json);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let running = gateway::start(settings, shutdown.clone()).await?;
        gateway::shutdown_signal().await;
        tracing::info!("shutdown requested");
        shutdown.cancel();
        running.wait().await
    })
}

/// `gateway audit verify`: the export (a file or the running gateway's) against the
/// verifier key and, optionally, an auditor's earlier checkpoint.
fn audit_verify(
    settings: &gateway::Settings,
    file: Option<&Path>,
    against: Option<&Path>,
    key: Option<PathBuf>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let read = |p: &Path| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()));
    let export = match file {
        Some(f) => read(f)?,
        None => {
            let (status, body) = admin_request(settings.config.admin_listen, "GET", "/admin/audit/export")?;
            anyhow::ensure!(
                status.is_success(),
                "the gateway answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
            String::from_utf8(body.to_vec()).context("the export is not UTF-8")?
        }
    };
    let key = key.unwrap_or_else(|| gateway::keys::key_dir(&settings.config.data_dir).join("audit.vkey"));
    let vkey = read(&key)?;
    let against = against.map(read).transpose()?;
    let v = gateway::audit::parse_export(&export)?
        .verify(&vkey, against.as_deref())
        .map_err(|bad| anyhow::anyhow!("the audit log does not verify: {bad}"))?;
    writeln!(
        std::io::stdout(),
        "ok: {} records, {} checkpoints{}; {} records after the last checkpoint",
        v.records,
        v.checkpoints,
        if against.is_some() { " and the given one" } else { "" },
        v.uncovered
    )?;
    Ok(())
}

/// `gateway evidence export|verify`.
fn evidence(settings: &gateway::Settings, config_file: Option<&Path>, action: EvidenceAction) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let keys = gateway::keys::key_dir(&settings.config.data_dir);
    match action {
        EvidenceAction::Export { out } => {
            let admin = settings.config.admin_listen;
            let fetch = |method: &str, path: &str| -> anyhow::Result<String> {
                let (status, body) = admin_request(admin, method, path)?;
                anyhow::ensure!(status.is_success(), "the gateway answered {status} to {path}");
                Ok(String::from_utf8(body.to_vec())?)
            };
            // The checkpoint first: the export then holds every record it commits to (each
            // call adds its own audit record after it is answered).
            let checkpoint = fetch("POST", "/admin/audit/checkpoint")?;
            let live = gateway::evidence::FromGateway {
                audit_export: fetch("GET", "/admin/audit/export")?,
                checkpoint,
            };
            let provider = relay_keys::Provider::open(&settings.config.keys)?;
            let signer = gateway::keys::audit_signer(&keys, &provider)?;
            let archive = gateway::evidence::export(settings, config_file, live, &signer, relay_net::clock::now_ms())?;
            std::fs::write(&out, archive).with_context(|| format!("writing {}", out.display()))?;
            writeln!(std::io::stdout(), "evidence written to {}", out.display())?;
        }
        EvidenceAction::Verify { file, key } => {
            let archive = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let key = key.unwrap_or_else(|| keys.join("audit.vkey"));
            let vkey = std::fs::read_to_string(&key).with_context(|| format!("reading {}", key.display()))?;
            let v = gateway::evidence::verify(&archive, &vkey)?;
            writeln!(
                std::io::stdout(),
                "ok: {} files match the signed manifest; the audit log verifies ({} records)",
                v.files,
                v.audit.records
            )?;
        }
    }
    Ok(())
}

fn provision(settings: &gateway::Settings, address: &str, valid_for: u64) -> anyhow::Result<()> {
    let key_dir = gateway::keys::key_dir(&settings.config.data_dir);
    let provider = relay_keys::Provider::open(&settings.config.keys)?;
    let token = gateway::keys::provisioning_token(&key_dir, &provider, address, valid_for, relay_net::clock::now_ms())?;
    writeln!(std::io::stdout(), "{token}")?;
    Ok(())
}
