//! A throwaway SoftHSM2 token per test (Debian `softhsm2`, tools from `opensc`): its own
//! configuration and token directory in the test's temporary directory, so tests never share
//! a token. Processes reach it through `SOFTHSM2_CONF` ([`SoftHsm::env`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The SoftHSM2 PKCS#11 module Debian installs.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

#[derive(Debug)]
pub struct SoftHsm {
    pub conf: PathBuf,
    pub label: String,
    pub pin: String,
    /// A file holding the PIN (`[keys] pin_file`).
    pub pin_file: PathBuf,
}

impl SoftHsm {
    /// A new token labelled `label` with user PIN `pin` under `dir`.
    pub fn new(dir: &Path, label: &str, pin: &str) -> Self {
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            ),
        )
        .unwrap();
        let pin_file = dir.join("pin");
        std::fs::write(&pin_file, format!("{pin}\n")).unwrap();
        let hsm = Self {
            conf,
            label: label.to_owned(),
            pin: pin.to_owned(),
            pin_file,
        };
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &hsm.conf)
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--so-pin",
                "12345678",
                "--pin",
                pin,
            ])
            .output()
            .expect("softhsm2-util (Debian softhsm2) is installed");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        hsm
    }

    /// The environment a process needs to see this token.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("SOFTHSM2_CONF", self.conf.display().to_string())]
    }

    /// The `[keys]` section for this token.
    pub fn keys_toml(&self) -> String {
        format!(
            "[keys]\nprovider = \"pkcs11\"\npkcs11_module = \"{MODULE}\"\ntoken_label = \"{}\"\npin_file = \"{}\"\n",
            self.label,
            self.pin_file.display()
        )
    }

    /// `pkcs11-tool ARGS` logged in to this token.
    pub fn tool(&self, args: &[&str]) -> Output {
        Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &self.conf)
            .args([
                "--module",
                MODULE,
                "--token-label",
                &self.label,
                "--login",
                "--pin",
                &self.pin,
            ])
            .args(args)
            .output()
            .expect("pkcs11-tool (Debian opensc) is installed")
    }

    /// The labels of the objects in the token (`pkcs11-tool --list-objects`).
    pub fn objects(&self) -> String {
        String::from_utf8_lossy(&self.tool(&["--list-objects"]).stdout).into_owned()
    }
}

/// A file under `dir` holding, anywhere in it, the key sealed in `sealed` (found by its
/// fingerprint, which the sealed file carries in the clear): what a key in the clear would be.
pub fn key_in_clear(dir: &Path, sealed: &Path) -> Option<PathBuf> {
    let bytes = std::fs::read(sealed).unwrap();
    let fp = relay_keys::token::sealed_fingerprint(&bytes).expect("a sealed key");
    let mut want = [0u8; 16];
    for (i, b) in want.iter_mut().enumerate() {
        *b = u8::from_str_radix(&fp[2 * i..2 * i + 2], 16).unwrap();
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let data = std::fs::read(&p).unwrap_or_default();
            if data.windows(32).any(|w| relay_keys::fingerprint_bytes(w) == want) {
                return Some(p);
            }
        }
    }
    None
}
