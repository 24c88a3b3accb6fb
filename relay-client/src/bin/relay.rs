//! `relay`: the command-line client of rcs-relay.
//!
//! ```text
//! relay --server https://127.0.0.1:8443 --ca relay-data/tls/dev-ca.pem \
//!       --profile alice.toml register --token "$(gateway provision tel:+15550100001)"
//! relay --profile alice.toml send --to tel:+15550100002 --file message.mls
//! relay --profile bob.toml receive --out-dir inbox --ack
//! ```
//! A profile file keeps the server URL, the CA file and the device credential
//! (written with mode 0600); flags override it.

#![allow(clippy::print_stdout, reason = "a CLI reports on standard output")]

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use relay_client::{Client, Protocol, Recipient, Trust};
use serde::{Deserialize, Serialize};

#[derive(Debug, Parser)]
#[command(name = "relay", version, about = "Client for the rcs-relay gateway")]
struct Cli {
    /// Gateway URL, e.g. https://127.0.0.1:8443.
    #[arg(long, global = true, env = "RELAY_SERVER")]
    server: Option<String>,
    /// PEM file of the CA that signed the gateway certificate.
    #[arg(long, global = true, env = "RELAY_CA")]
    ca: Option<PathBuf>,
    /// Accept any server certificate (throwaway local setups only).
    #[arg(long, global = true)]
    insecure: bool,
    /// Speak HTTP/3 (QUIC, UDP on the same port) instead of HTTP/2.
    #[arg(long, global = true, env = "RELAY_HTTP3")]
    http3: bool,
    /// Profile file holding server, CA and credential.
    #[arg(long, global = true, env = "RELAY_PROFILE", default_value = "relay-profile.toml")]
    profile: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Register this device with a provisioning token; saves the profile.
    Register {
        /// The operator's provisioning token (`gateway provision ADDRESS`).
        #[arg(long, required_unless_present = "open_address", conflicts_with = "open_address")]
        token: Option<String>,
        /// Register as this address without a token (only on a loopback gateway started with
        /// `registration.danger_open_registration`).
        #[arg(long)]
        open_address: Option<String>,
    },
    /// Send one MLS message (a file holding exactly one MLSMessage).
    Send {
        /// Recipient `tel:+E.164`, optionally `/1,2` to pick device ids. Repeatable.
        #[arg(long = "to", required = true)]
        to: Vec<String>,
        /// The MLS message; `-` reads standard input.
        #[arg(long)]
        file: PathBuf,
        /// 32 hex digits making a retried send idempotent.
        #[arg(long)]
        client_message_id: Option<String>,
        #[arg(long)]
        urgent: bool,
    },
    /// Receive envelopes; prints one line per envelope.
    Receive {
        /// Cursor: receive envelopes after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Long-poll this many seconds for the first envelope.
        #[arg(long, default_value_t = 0)]
        wait: u32,
        /// Keep receiving (live) until interrupted.
        #[arg(long)]
        follow: bool,
        /// Write each envelope to DIR/<seq>-<server_id>.mls.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Acknowledge what was received (after writing it out).
        #[arg(long)]
        ack: bool,
    },
    /// Acknowledge envelopes by server id or up to a cursor.
    Ack {
        /// Server id (32 hex digits). Repeatable.
        #[arg(long = "id")]
        ids: Vec<String>,
        #[arg(long)]
        up_to: Option<u64>,
    },
    /// Delete this device and everything queued for it.
    DeleteDevice,
    /// Check the gateway answers.
    Health,
    /// The KeyPackage directory (RFC 9420 section 10; files hold TLS-encoded KeyPackages).
    #[command(subcommand)]
    Keypackages(KeyPackageCommand),
    /// This device's push handle (from the push proxy's `POST /v1/push/register` answer).
    #[command(subcommand)]
    Push(PushCommand),
    /// A group's latest GroupInfo, for external joins (RFC 9420 section 12.4.3.2).
    #[command(subcommand)]
    GroupInfo(GroupInfoCommand),
}

#[derive(Debug, Subcommand)]
enum GroupInfoCommand {
    /// Publish a GroupInfo MLSMessage for a group.
    Publish {
        /// The MLS group id, in hex.
        #[arg(long)]
        group: String,
        /// The GroupInfo MLSMessage; `-` reads standard input.
        #[arg(long)]
        file: PathBuf,
    },
    /// Fetch the latest GroupInfo published for a group.
    Get {
        /// The MLS group id, in hex.
        #[arg(long)]
        group: String,
        /// Write it here (default: only print its size).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum PushCommand {
    /// Store the handle with the gateway, so it wakes this device through the push proxy.
    Set {
        /// The handle (`ph1.…`).
        #[arg(long, conflicts_with = "handle_file", required_unless_present = "handle_file")]
        handle: Option<String>,
        /// A file holding the handle, or the push proxy's JSON answer `{"handle": "ph1.…"}`;
        /// `-` reads standard input.
        #[arg(long)]
        handle_file: Option<PathBuf>,
    },
    /// Remove the handle: no more pushes to this device.
    Clear,
    /// The handle this profile last stored (the gateway does not give handles back).
    Show,
}

#[derive(Debug, Subcommand)]
enum KeyPackageCommand {
    /// Upload KeyPackages made by this device's MLS client (at most 100 per call).
    Upload {
        #[arg(long = "file", required = true)]
        files: Vec<PathBuf>,
    },
    /// Claim one KeyPackage per device of each address.
    Claim {
        #[arg(long = "address", required = true)]
        addresses: Vec<String>,
        /// Write each package to DIR/<address>-<device>.kp.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// How many KeyPackages this device has left.
    Count,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    server: Option<String>,
    ca: Option<PathBuf>,
    #[serde(default)]
    insecure: bool,
    device_id: Option<u32>,
    credential: Option<String>,
    /// The push handle last stored with `relay push set`.
    #[serde(default)]
    push_handle: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::io::Write::write_fmt(&mut std::io::stderr(), format_args!("relay: {e:#}\n"));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut profile = load_profile(&cli.profile)?;
    let server = cli
        .server
        .clone()
        .or_else(|| profile.server.clone())
        .context("--server is required")?;
    let ca = cli.ca.clone().or_else(|| profile.ca.clone());
    let insecure = cli.insecure || profile.insecure;
    let trust = match (ca.clone(), insecure) {
        (Some(path), _) => Trust::CaFile(path),
        (None, true) => Trust::DangerAcceptAnyCertificate,
        (None, false) => bail!("pass --ca FILE (the gateway's CA) or --insecure"),
    };
    let protocol = if cli.http3 { Protocol::Http3 } else { Protocol::Http2 };
    let client = Client::connect(&server, trust, protocol)?;
    let authed = || -> anyhow::Result<Client> {
        let cred = std::env::var("RELAY_CREDENTIAL")
            .ok()
            .or_else(|| profile.credential.clone());
        Ok(client.with_credential(cred.context("no credential: run `relay register` first")?))
    };
    match cli.command {
        Command::Health => {
            client.healthz().await?;
            println!("ok");
        }
        Command::Register { token, open_address } => {
            let reg = match (token, open_address) {
                (Some(token), _) => client.register(&token).await?,
                (None, Some(address)) => client.register_open(&address).await?,
                (None, None) => bail!("pass --token or --open-address"),
            };
            profile.server = Some(server);
            profile.ca = ca.map(|p| std::path::absolute(&p).unwrap_or(p));
            profile.insecure = insecure;
            profile.device_id = Some(reg.device_id);
            profile.credential = Some(reg.credential);
            save_profile(&cli.profile, &profile)?;
            println!(
                "registered device {} (profile {})",
                reg.device_id,
                cli.profile.display()
            );
        }
        Command::Send {
            to,
            file,
            client_message_id,
            urgent,
        } => {
            let message = read_message(&file)?;
            let recipients = to
                .iter()
                .map(|t| parse_recipient(t))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let cmid = client_message_id.as_deref().map(parse_hex16).transpose()?;
            let resp = authed()?.send(&recipients, message, cmid, urgent).await?;
            // Recipients at peer carriers are queued for them: devices counts only ours.
            let peers = match resp.peer_recipients {
                0 => String::new(),
                n => format!(" peer_recipients={n}"),
            };
            println!(
                "{} devices={}{peers}{}",
                relay_core::hex::encode(&resp.server_id),
                resp.recipient_devices,
                if resp.duplicate { " duplicate" } else { "" }
            );
        }
        Command::Receive {
            after,
            limit,
            wait,
            follow,
            out_dir,
            ack,
        } => {
            let client = authed()?;
            if let Some(dir) = &out_dir {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let mut cursor = after;
            loop {
                let page = client.receive(cursor, limit, if follow { 30 } else { wait }).await?;
                for e in &page.envelopes {
                    let gap = if e.flags & 2 != 0 {
                        format!(" gap dropped={}", e.dropped)
                    } else if let Some(r) = &e.report {
                        report_line(r)
                    } else {
                        String::new()
                    };
                    println!(
                        "seq={} id={} bytes={}{gap}",
                        e.seq,
                        relay_core::hex::encode(&e.server_id),
                        e.message.len()
                    );
                    if let Some(dir) = &out_dir
                        && !e.message.is_empty()
                    {
                        let path = dir.join(format!("{}-{}.mls", e.seq, relay_core::hex::encode(&e.server_id)));
                        std::fs::write(&path, &e.message).with_context(|| format!("writing {}", path.display()))?;
                    }
                }
                if ack && !page.envelopes.is_empty() {
                    client.ack(&[], Some(page.next_cursor)).await?;
                }
                cursor = page.next_cursor;
                if page.queue_empty {
                    if !follow {
                        println!("queue_empty cursor={cursor}");
                        break;
                    }
                } else if !follow && page.envelopes.is_empty() {
                    break;
                }
            }
        }
        Command::Ack { ids, up_to } => {
            if ids.is_empty() && up_to.is_none() {
                bail!("pass --id or --up-to");
            }
            let ids = ids
                .iter()
                .map(|s| parse_hex16(s).map(|b| Bytes::copy_from_slice(&b)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            authed()?.ack(&ids, up_to).await?;
            println!("acknowledged");
        }
        Command::Keypackages(KeyPackageCommand::Upload { files }) => {
            let packages = files
                .iter()
                .map(|f| {
                    std::fs::read(f)
                        .map(Bytes::from)
                        .with_context(|| format!("reading {}", f.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let stored = authed()?.upload_key_packages(&packages).await?;
            println!("stored {stored}");
        }
        Command::Keypackages(KeyPackageCommand::Claim { addresses, out_dir }) => {
            let addrs: Vec<&str> = addresses.iter().map(String::as_str).collect();
            let claimed = authed()?.claim_key_packages(&addrs).await?;
            if let Some(dir) = &out_dir {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            for k in &claimed {
                let kind = if k.last_resort { " last_resort" } else { "" };
                println!(
                    "{} device={} bytes={}{kind}",
                    k.address,
                    k.device_id,
                    k.key_package.len()
                );
                if let Some(dir) = &out_dir {
                    let name = format!("{}-{}.kp", k.address.trim_start_matches("tel:+"), k.device_id);
                    std::fs::write(dir.join(&name), &k.key_package).with_context(|| format!("writing {name}"))?;
                }
            }
        }
        Command::Keypackages(KeyPackageCommand::Count) => {
            let c = authed()?.key_package_count().await?;
            println!("one_time={} last_resort={}", c.one_time, c.last_resort);
        }
        Command::DeleteDevice => {
            authed()?.delete_device().await?;
            println!("device deleted");
        }
        Command::Push(PushCommand::Set { handle, handle_file }) => {
            let handle = match (handle, handle_file) {
                (Some(h), _) => h,
                (None, Some(file)) => handle_from(&read_message(&file)?)?,
                (None, None) => bail!("pass --handle or --handle-file"),
            };
            authed()?.set_push_handle(&handle).await?;
            profile.push_handle = Some(handle);
            save_profile(&cli.profile, &profile)?;
            println!("push handle stored; the gateway wakes this device through the push proxy");
        }
        Command::Push(PushCommand::Clear) => {
            authed()?.clear_push_handle().await?;
            profile.push_handle = None;
            save_profile(&cli.profile, &profile)?;
            println!("push handle removed; no more pushes to this device");
        }
        Command::Push(PushCommand::Show) => match &profile.push_handle {
            Some(h) => println!("{h}"),
            None => println!("no push handle stored from this profile"),
        },
        Command::GroupInfo(GroupInfoCommand::Publish { group, file }) => {
            let group = parse_hex(&group)?;
            authed()?.put_group_info(&group, read_message(&file)?).await?;
            println!("group info published");
        }
        Command::GroupInfo(GroupInfoCommand::Get { group, out }) => {
            let info = authed()?.group_info(&parse_hex(&group)?).await?;
            if let Some(path) = &out {
                std::fs::write(path, &info).with_context(|| format!("writing {}", path.display()))?;
            }
            println!("group info bytes={}", info.len());
        }
    }
    Ok(())
}

/// What a delivery report says, on the envelope's line: which send, which recipients (by
/// position in that send), why, and which peer.
fn report_line(r: &relay_core::wire::v1::DeliveryReport) -> String {
    let positions: Vec<String> = r.recipient_indexes.iter().map(u32::to_string).collect();
    format!(
        " report send={} reason={} recipients={} peer={} peer_status={}",
        relay_core::hex::encode(&r.server_id),
        r.reason,
        positions.join(","),
        r.peer_domain,
        r.peer_status
    )
}

/// A handle from a file: the handle itself, or the push proxy's register answer (JSON).
fn handle_from(bytes: &[u8]) -> anyhow::Result<String> {
    let text = std::str::from_utf8(bytes)
        .context("the handle file is not text")?
        .trim();
    if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text).context("the handle file is not valid JSON")?;
        return v["handle"]
            .as_str()
            .map(str::to_owned)
            .context("the JSON has no \"handle\" field (expected the push proxy's register answer)");
    }
    Ok(text.to_owned())
}

fn parse_recipient(s: &str) -> anyhow::Result<Recipient> {
    match s.split_once('/') {
        None => Ok(Recipient::address(s)),
        Some((addr, devs)) => Ok(Recipient {
            address: addr.to_owned(),
            device_ids: devs
                .split(',')
                .map(|d| d.parse::<u32>().with_context(|| format!("device id {d:?}")))
                .collect::<anyhow::Result<_>>()?,
        }),
    }
}

fn read_message(file: &Path) -> anyhow::Result<Bytes> {
    if file == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        return Ok(buf.into());
    }
    Ok(std::fs::read(file)
        .with_context(|| format!("reading {}", file.display()))?
        .into())
}

fn parse_hex(s: &str) -> anyhow::Result<Vec<u8>> {
    relay_core::hex::decode(s)
        .filter(|b| !b.is_empty())
        .with_context(|| format!("expected an even number of hex digits, got {s:?}"))
}

fn parse_hex16(s: &str) -> anyhow::Result<[u8; 16]> {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("expected 32 hex digits, got {s:?}");
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)?;
    }
    Ok(out)
}

fn load_profile(path: &Path) -> anyhow::Result<Profile> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| format!("parsing profile {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Profile::default()),
        Err(e) => Err(e).with_context(|| format!("reading profile {}", path.display())),
    }
}

fn save_profile(path: &Path, profile: &Profile) -> anyhow::Result<()> {
    let text = toml::to_string(profile)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing profile {}", path.display()))?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(())
}
