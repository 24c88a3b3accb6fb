//! A second implementation for the push tests to check against: JWT signatures and Web Push
//! decryption done by Python's `cryptography` (OpenSSL) in `independent.py`, not by the push
//! proxy's own `jwt` and `webpush` modules — a bug shared by the proxy and a sink built on
//! the proxy's code cannot pass here.

use std::io::Write as _;
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{Value, json};

const SCRIPT: &str = include_str!("independent.py");

fn call(op: &str, request: &Value) -> Result<Value, String> {
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT, op])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(request.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !err.contains("No module named 'cryptography'"),
            "install Python's cryptography package: {err}"
        );
        return Err(err);
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Where the verifying key comes from.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    /// A SubjectPublicKeyInfo PEM.
    PublicPem(&'a str),
    /// The public half of a PKCS#8 private key PEM.
    PrivatePem(&'a str),
    /// A P-256 point, uncompressed, base64url (VAPID's `k=`).
    Point(&'a str),
}

/// Verifies `jwt` (`alg` = "ES256" or "RS256") with `key`; returns (header, claims).
pub fn verify_jwt(jwt: &str, alg: &str, key: Key<'_>) -> Result<(Value, Value), String> {
    let mut req = json!({ "jwt": jwt, "alg": alg });
    match key {
        Key::PublicPem(p) => req["public_pem"] = p.into(),
        Key::PrivatePem(p) => req["private_pem"] = p.into(),
        Key::Point(p) => req["point"] = p.into(),
    }
    let v = call("verify_jwt", &req)?;
    Ok((v["header"].clone(), v["claims"].clone()))
}

/// Decrypts an RFC 8291 (aes128gcm) Web Push body for the subscription whose private key is
/// `ua_private_pem` (PKCS#8) and auth secret `auth`: (plaintext, padded length).
pub fn webpush_decrypt(body: &[u8], ua_private_pem: &str, auth: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let v = call(
        "webpush_decrypt",
        &json!({ "body": b64.encode(body), "ua_private_pem": ua_private_pem, "auth": b64.encode(auth) }),
    )?;
    let plaintext = b64
        .decode(v["plaintext"].as_str().ok_or("no plaintext")?)
        .map_err(|e| e.to_string())?;
    Ok((plaintext, v["padded_len"].as_u64().ok_or("no length")? as usize))
}
