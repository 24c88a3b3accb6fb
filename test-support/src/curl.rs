//! `curl` (the Debian package) as an HTTP/2 client that must read every early error: many
//! POSTs of one kind, each checked for its status and JSON error code.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

/// One kind of bad request and the answer it must get.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    pub what: &'a str,
    pub content_type: &'a str,
    /// Extra headers (`name: value`).
    pub headers: Vec<String>,
    pub body_len: usize,
    pub status: u16,
    /// The JSON error code, in the field `field` (`error` or `code`).
    pub code: &'a str,
    pub field: &'a str,
}

/// POSTs `expect`'s request to `url` `rounds` times over HTTP/2 (four curl processes at a
/// time); `tls` holds curl's TLS arguments (`--cacert`, `--cert`, …). Returns a line per
/// answer that was not the expected one.
pub fn post_many(url: &str, tls: &[OsString], expect: &Expect<'_>, rounds: usize, dir: &Path) -> Vec<String> {
    let body = dir.join(format!("curl-body-{}", expect.body_len));
    std::fs::write(&body, vec![0x5au8; expect.body_len]).unwrap();
    let wrong = std::sync::Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < rounds {
                    if let Err(e) = post_once(url, tls, expect, &body) {
                        wrong.lock().unwrap().push(format!("{}: {e}", expect.what));
                    }
                }
            });
        }
    });
    wrong.into_inner().unwrap()
}

fn post_once(url: &str, tls: &[OsString], expect: &Expect<'_>, body: &Path) -> Result<(), String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--http2", "--max-time", "10", "-X", "POST", "-o", "-"])
        .args(["-w", "\n%{http_code} %{http_version}"])
        .args(tls)
        .args(["-H", &format!("content-type: {}", expect.content_type)])
        .arg("--data-binary")
        .arg(format!("@{}", body.display()));
    for h in &expect.headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().expect("curl (apt-get install curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (answer, trailer) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = serde_json::from_str::<serde_json::Value>(answer.trim())
        .ok()
        .and_then(|v| v[expect.field].as_str().map(str::to_owned));
    if trailer == format!("{} 2", expect.status) && code.as_deref() == Some(expect.code) {
        Ok(())
    } else {
        Err(format!(
            "got {trailer:?} {answer:?} ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
