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
        /// Only `provisioning` rotates this way for now.
        name: String,
    },
    /// Stop accepting a provisioning key's tokens (`provisioning:<id>`).
    Retire { name: String },
    /// Mark a provisioning key compromised (`provisioning:<id>`): its tokens are refused;
    /// the key is kept as evidence.
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
        name.strip_prefix("provisioning:")
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("name the key as provisioning:<id> (see `gateway keys list`)"))
    };
    let provisioning = || crate::provisioning_keys::ProvisioningKeys::open(&dir, relay_net::clock::now_ms());
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
        KeysAction::Rotate { name } => {
            anyhow::ensure!(name == "provisioning", "only `provisioning` rotates this way for now");
            let id = provisioning()?.rotate(relay_net::clock::now_ms())?;
            writeln!(
                std::io::stdout(),
                "provisioning:{id} active; the previous key is retiring"
            )?;
        }
        KeysAction::Retire { name } => provisioning()?.set_state(&provisioning_id(&name)?, KeyState::Retired)?,
        KeysAction::MarkCompromised { name } => {
            provisioning()?.set_state(&provisioning_id(&name)?, KeyState::Compromised)?
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
