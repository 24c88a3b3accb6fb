//! `push-sink`: a Web Push service on loopback, to see a real push arrive and decrypt it.
//!
//! ```text
//! push-sink serve --listen 127.0.0.1:8460 --dir push-sink   # runs until interrupted
//! push-sink wait --dir push-sink --count 1                  # prints the pushes received
//! ```
//! `serve` makes a Web Push subscription (a P-256 key pair and an auth secret, as a browser
//! would) and writes `DIR/subscription.json`, which is the push proxy's registration body as
//! it is, and `DIR/dev-ca.pem`, the CA of its certificate (the proxy's `delivery.ca_file`).
//! Every push it receives is checked as a Web Push service checks it (VAPID, RFC 8291
//! `aes128gcm`), decrypted with the subscription's key as the device would, and appended to
//! `DIR/pushes.log`: one line `<status> <decrypted payload>`. It is the push tests' sink
//! (`test_support::push_sinks`), so what the README shows is what the tests check.

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line tool")]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use push_proxy::providers::b64;
use test_support::push_sinks::{PushSink, SinkKind};

#[derive(Debug, Parser)]
#[command(
    name = "push-sink",
    about = "A local Web Push service that decrypts what it receives"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve until interrupted, writing each push to DIR/pushes.log.
    Serve {
        #[arg(long, default_value = "127.0.0.1:8460")]
        listen: SocketAddr,
        #[arg(long, default_value = "push-sink")]
        dir: PathBuf,
    },
    /// Wait until DIR/pushes.log holds COUNT pushes, then print them (exit 1 after the timeout).
    Wait {
        #[arg(long, default_value = "push-sink")]
        dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Serve { listen, dir } => serve(listen, &dir).await,
        Command::Wait {
            dir,
            count,
            timeout_secs,
        } => wait(&dir, count, Duration::from_secs(timeout_secs)).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("push-sink: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(listen: SocketAddr, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let ua_secret = push_proxy::webpush::random_secret();
    let auth: [u8; 16] = rand::random();
    let public = push_proxy::webpush::public_bytes(&ua_secret.public_key());
    let sink = PushSink::start_at(SinkKind::WebPush { ua_secret, auth }, listen, dir)
        .await
        .map_err(|e| format!("listening on {listen}: {e}"))?;
    let subscription = serde_json::json!({
        "platform": "webpush",
        "endpoint": format!("{}/push/device-1", sink.url()),
        "p256dh": b64(&public),
        "auth": b64(&auth),
    });
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("writing {}: {e}", dir.join(name).display()))
    };
    write("pushes.log", String::new())?;
    write("subscription.json", format!("{subscription}\n"))?;
    println!(
        "push-sink: Web Push service at {}; subscription in {}, CA in {}",
        sink.url(),
        dir.join("subscription.json").display(),
        sink.ca().display()
    );
    let mut shown = 0;
    let mut refused = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tick.tick() => {}
        }
        for reason in sink.refused().iter().skip(refused) {
            refused += 1;
            println!("refused: {reason}");
        }
        let pushes = sink.pushes();
        for p in pushes.iter().skip(shown) {
            shown += 1;
            let line = format!("{} {}\n", p.status, String::from_utf8_lossy(&p.payload));
            print!("push: {line}");
            std::fs::OpenOptions::new()
                .append(true)
                .open(dir.join("pushes.log"))
                .and_then(|mut f| f.write_all(line.as_bytes()))
                .map_err(|e| format!("writing pushes.log: {e}"))?;
        }
    }
}

async fn wait(dir: &Path, count: usize, timeout: Duration) -> Result<(), String> {
    let log = dir.join("pushes.log");
    let deadline = Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= count {
            print!("{text}");
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} of {count} pushes in {} after {timeout:?}",
                text.lines().count(),
                log.display()
            ));
        }
    }
}
