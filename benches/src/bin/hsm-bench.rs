//! What key custody in a PKCS#11 token costs: an unseal (the token's `CKM_AES_GCM` decrypt of
//! a 32-byte key, what each start does per symmetric key) and an Ed25519 signature
//! (`CKM_EDDSA`, what each audit checkpoint and provisioning token costs), each against the
//! same operation in software (ring) measured in the same run. Makes its own SoftHSM2 token
//! in a temporary directory (Debian `softhsm2`) and runs itself again with `SOFTHSM2_CONF`.
//!
//!   hsm-bench [--ops 2000]

#![allow(clippy::print_stdout, reason = "a benchmark reports on standard output")]

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::signature::Ed25519KeyPair;

#[derive(Debug, Parser)]
struct Args {
    /// Operations of each kind.
    #[arg(long, default_value_t = 2000)]
    ops: u32,
}

const CHILD: &str = "RCS_HSM_BENCH_CHILD";

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if std::env::var_os(CHILD).is_none() {
        let dir = tempfile::tempdir()?;
        let hsm = test_support::softhsm::SoftHsm::new(dir.path(), "bench", "1234");
        let status = std::process::Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .envs(hsm.env())
            .env(CHILD, "1")
            .status()?;
        anyhow::ensure!(status.success(), "the measuring run failed");
        return Ok(());
    }
    let token = Arc::new(relay_keys::Token::open(
        std::path::Path::new(test_support::softhsm::MODULE),
        "bench",
        "1234",
    )?);
    token.init(&[relay_keys::token::AUDIT])?;
    let key = [7u8; 32];
    let sealed = token.seal("rid.key", &key)?;
    let n = args.ops;

    let t = Instant::now();
    for _ in 0..n {
        let plain = token.unseal("rid.key", &sealed)?;
        assert_eq!(plain.as_slice(), key);
    }
    let unseal = t.elapsed().as_secs_f64() / f64::from(n);
    let soft = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[9; 32]).map_err(|_| anyhow::anyhow!("key"))?);
    let mut boxed = key.to_vec();
    soft.seal_in_place_append_tag(Nonce::assume_unique_for_key([1; 12]), Aad::from(b"rid.key"), &mut boxed)
        .map_err(|_| anyhow::anyhow!("seal"))?;
    let t = Instant::now();
    for _ in 0..n {
        let mut buf = boxed.clone();
        let plain = soft
            .open_in_place(Nonce::assume_unique_for_key([1; 12]), Aad::from(b"rid.key"), &mut buf)
            .map_err(|_| anyhow::anyhow!("open"))?;
        assert_eq!(plain, key);
    }
    let soft_open = t.elapsed().as_secs_f64() / f64::from(n);

    let signer = token.signer(relay_keys::token::AUDIT)?;
    let message = [0x5au8; 120]; // about a checkpoint's size
    let t = Instant::now();
    for _ in 0..n {
        signer.sign(&message)?;
    }
    let sign = t.elapsed().as_secs_f64() / f64::from(n);
    let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).map_err(|_| anyhow::anyhow!("key"))?;
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|_| anyhow::anyhow!("key"))?;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(pair.sign(&message));
    }
    let soft_sign = t.elapsed().as_secs_f64() / f64::from(n);
    // The token's signature verifies with the public key it reports.
    let sig = signer.sign(&message)?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, signer.public_key())
        .verify(&message, &sig)
        .ok()
        .context("the token's Ed25519 signature does not verify")?;

    println!("ops={n} (SoftHSM2 2.6, one logged-in session)");
    println!(
        "unseal (C_Decrypt CKM_AES_GCM, 32-byte key): {:.1} us  software AES-GCM open: {:.2} us  ratio {:.0}x",
        unseal * 1e6,
        soft_open * 1e6,
        unseal / soft_open
    );
    println!(
        "sign (C_Sign CKM_EDDSA, Ed25519, 120 bytes):  {:.1} us  software Ed25519 (ring): {:.1} us  ratio {:.1}x",
        sign * 1e6,
        soft_sign * 1e6,
        sign / soft_sign
    );
    Ok(())
}
