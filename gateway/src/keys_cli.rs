//! `gateway keys …`: the inventory, `init` and custody proof of a PKCS#11 token, and the
//! provisioning keys' rotation.

use std::io::Write as _;

use crate::admin_client::admin_request;

#[derive(Debug, clap::Subcommand)]
pub enum KeysAction {
    /// Every provider key: class, what holds it, fingerprint (never the key), custody
    /// attributes of keys in a PKCS#11 token; the provisioning keys' ids and states.
    List,
    /// Prepare the PKCS#11 token ([keys] provider = "pkcs11"): create the key-encryption and
    /// audit keys that are missing, seal the clear symmetric keys.
    Init,
    /// Ask the token to wrap each of its keys out (what an attacker with the PIN would try)
    /// and report its answer: every key must be refused.
    ProveCustody,
    /// A new provisioning signing key; the current one keeps verifying (retiring) until it
    /// is retired.
    Rotate {
        /// `provisioning`, `outbox` (the interconnect outbox sealing key) or `audit` (the
        /// handover checkpoint is signed by the old and the new key).
        name: String,
    },
    /// Stop accepting a provisioning key's tokens (`provisioning:<id>`).
    /// An outbox key version (`outbox:<v>`) is retired by the running gateway, which refuses
    /// while queued entries are still sealed under it.
    Retire {
        name: String,
        /// K_rid only: retire although addresses are still under it (they become
        /// unreachable; audited).
        #[arg(long)]
        force: bool,
    },
    /// Re-key, in the background, every address of a number range still under K_rid's
    /// previous version (after `keys rotate rid` and a restart); `relay_rid_rekey_remaining`
    /// shows the progress.
    MigrateRid {
        /// First number of the range (`tel:+…`).
        #[arg(long)]
        from: String,
        /// Last number of the range, as long as the first.
        #[arg(long)]
        to: String,
    },
    /// Mark a provisioning key compromised (`provisioning:<id>`): its tokens are refused;
    /// the key is kept as evidence. An outbox key version (`outbox:<v>`, not the current
    /// one) never seals again but still opens what is queued under it.
    MarkCompromised { name: String },
    /// Delete a retired or compromised provisioning key (`provisioning:<id>`). Dual control:
    /// another operator must first `gateway approve keys.destroy:provisioning:<id>`.
    Destroy { name: String },
}

/// `gateway keys list|rotate|retire|mark-compromised`: the key files change here, then the
/// running gateway is asked to reload (it audits each change); a stopped gateway reads them
/// at its next start.
pub fn run(settings: &crate::Settings, action: KeysAction) -> anyhow::Result<()> {
    use relay_core::provisioning::KeyState;
    let dir = crate::keys::key_dir(&settings.config.data_dir);
    let provisioning_id = |name: &str| -> anyhow::Result<String> {
        name.strip_prefix("provisioning:").map(str::to_owned).ok_or_else(|| {
            anyhow::anyhow!(
                "unknown key {name:?}: name it as provisioning:<id> or outbox:<version> (see `gateway keys list`)"
            )
        })
    };
    let provisioning = || {
        let provider = relay_keys::Provider::open(&settings.config.keys)?;
        crate::provisioning_keys::ProvisioningKeys::open(&dir, &provider, relay_net::clock::now_ms())
    };
    match action {
        KeysAction::List => {
            let keys = provisioning()?;
            let mut out = std::io::stdout();
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&crate::custody::inventory(&settings.config)?)?
            )?;
            for k in keys.list()? {
                writeln!(
                    out,
                    "provisioning:{} {} created_ms={}",
                    k.id,
                    k.state.as_str(),
                    k.created_ms
                )?;
            }
            return Ok(());
        }
        KeysAction::ProveCustody => {
            for line in crate::custody::prove(&settings.config)? {
                writeln!(std::io::stdout(), "{line}")?;
            }
            return Ok(());
        }
        KeysAction::Init => {
            for line in crate::custody::init(&settings.config)? {
                writeln!(std::io::stdout(), "{line}")?;
            }
            return Ok(());
        }
        KeysAction::Rotate { name } if name == "provisioning" => {
            let id = provisioning()?.rotate(relay_net::clock::now_ms())?;
            writeln!(
                std::io::stdout(),
                "provisioning:{id} active; the previous key is retiring"
            )?;
        }
        KeysAction::Rotate { name } if name == "audit" => {
            let provider = relay_keys::Provider::open(&settings.config.keys)?;
            let v = crate::audit_keys::rotate(&dir, &provider, relay_net::clock::now_ms())?;
            writeln!(
                std::io::stdout(),
                "audit:{v} active; the running gateway signs the handover checkpoint with both keys"
            )?;
        }
        KeysAction::Rotate { name } if name == "rid" => {
            let states = relay_keys::ring::states(&dir, crate::keys::RID_RING)?;
            if let Some((v, _)) = states
                .versions
                .iter()
                .find(|(v, s)| **v != states.current && s.state != relay_keys::ring::RETIRED)
            {
                anyhow::bail!(
                    "rid:{v} is not retired yet: the previous rotation's re-key must finish first (`gateway keys retire rid:{v}`)"
                );
            }
            let provider = relay_keys::Provider::open(&settings.config.keys)?;
            let v = provider.rotate_ring(&dir, crate::keys::RID_RING, relay_net::clock::now_ms())?;
            writeln!(
                std::io::stdout(),
                "rid:{v} created; restart the gateway: it then re-keys every address when it is next named (and `gateway keys migrate-rid` re-keys a number range)"
            )?;
            return Ok(());
        }
        KeysAction::MigrateRid { from, to } => {
            let path = format!(
                "/admin/keys/rid/migrate?from={}&to={}",
                crate::admin_client::query_value(&from),
                crate::admin_client::query_value(&to)
            );
            let (status, body) = admin_request(settings.config.admin_listen, "POST", &path)?;
            std::io::stdout().write_all(&body)?;
            anyhow::ensure!(status.is_success(), "the gateway answered {status}");
            return Ok(());
        }
        KeysAction::Rotate { name } if name == "outbox" => {
            let provider = relay_keys::Provider::open(&settings.config.keys)?;
            let v = provider.rotate_ring(&dir, interconnect::record::KEY_RING, relay_net::clock::now_ms())?;
            writeln!(std::io::stdout(), "outbox:{v} active; the previous version is retiring")?;
        }
        KeysAction::Rotate { name } => {
            anyhow::bail!(
                "{name:?} does not rotate this way: name a class, `provisioning`, `outbox`, `audit` or `rid` (a version such as provisioning:<id> is not rotated, its class is)"
            )
        }
        KeysAction::Retire { name, force } if name.starts_with("outbox:") || name.starts_with("rid:") => {
            let (status, body) = admin_request(
                settings.config.admin_listen,
                "POST",
                &format!(
                    "/admin/keys/retire?key={}{}",
                    crate::admin_client::query_value(&name),
                    if force { "&force=true" } else { "" }
                ),
            )
            .map_err(|e| {
                anyhow::anyhow!(
                    "retiring an outbox or K_rid version needs the running gateway (it checks what is still under it): {e:#}"
                )
            })?;
            std::io::stdout().write_all(&body)?;
            anyhow::ensure!(status.is_success(), "the gateway answered {status}");
            return Ok(());
        }
        KeysAction::MarkCompromised { name } if name.starts_with("outbox:") => {
            relay_keys::ring::set_state(
                &dir,
                interconnect::record::KEY_RING,
                outbox_version(&name)?,
                relay_keys::ring::COMPROMISED,
            )?;
        }
        KeysAction::Retire { name, .. } => {
            let id = provisioning_id(&name)?;
            provisioning()?.set_state(&id, KeyState::Retired)?;
        }
        KeysAction::MarkCompromised { name } => {
            let id = provisioning_id(&name)?;
            provisioning()?.set_state(&id, KeyState::Compromised)?;
        }
        KeysAction::Destroy { .. } => unreachable!("a dual-control call, made by the running gateway"),
    }
    match admin_request(settings.config.admin_listen, "POST", "/admin/keys/reload") {
        Ok((status, body)) => {
            std::io::stdout().write_all(&body)?;
            anyhow::ensure!(status.is_success(), "the gateway answered {status}");
        }
        Err(e) => writeln!(
            std::io::stdout(),
            "changed on disk; no running gateway answered ({e:#}): it reads the keys at start"
        )?,
    }
    Ok(())
}

/// The version in `outbox:<v>`.
pub fn outbox_version(name: &str) -> anyhow::Result<u8> {
    name.strip_prefix("outbox:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("name an outbox key as outbox:<version> (0-255; see `gateway keys list`)"))
}
