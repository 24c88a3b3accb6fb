//! `push-proxy`: run the push proxy.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// EX_USAGE: the configuration is invalid.
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(name = "push-proxy", version, about = "rcs-relay push proxy: pointer-only pushes")]
struct Cli {
    /// TOML configuration file (all keys optional).
    #[arg(long, env = "PUSH_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// Overrides `log.json`: `text` (human-readable) or `json` (one object per line).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Prepare the PKCS#11 token (`[keys] provider = "pkcs11"`): create its key-encryption
    /// key if missing, seal the clear handle keys, then exit.
    #[arg(long)]
    init_keys: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match push_proxy::config::Config::load(cli.config.as_deref()) {
        Ok(mut c) => {
            if let Some(format) = cli.log_format {
                c.log.json = matches!(format, LogFormat::Json);
            }
            c
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "push-proxy: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.init_keys {
        return match push_proxy::keys::init(&config) {
            Ok(lines) => {
                let mut out = std::io::stdout();
                for line in lines {
                    let _ = writeln!(out, "{line}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                let _ = writeln!(std::io::stderr(), "push-proxy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if config.log.json {
        logs.json().init();
    } else {
        logs.init();
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async {
                let shutdown = tokio_util::sync::CancellationToken::new();
                let running = push_proxy::server::start(config, shutdown.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .map_err(|e| e.to_string())?;
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                tracing::info!("shutting down");
                shutdown.cancel();
                running.stopped().await;
                Ok::<_, String>(())
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "push-proxy: {e}");
            ExitCode::FAILURE
        }
    }
}
