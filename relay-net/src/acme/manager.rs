//! The background task that keeps one listener's certificate current, and the handle
//! operator commands reach it through.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::*;

/// Where a [`Manager`] puts what it obtains: the service's certificate store.
pub trait CertSink: Send + Sync + 'static {
    /// Stores the new chain and key durably, then serves them to new connections.
    fn install(&self, issued: &Issued) -> Result<(), String>;
    /// The leaf certificate being served, if any.
    fn leaf(&self) -> Option<CertificateDer<'static>>;
}

/// What an operator command produced.
#[derive(Debug, Clone)]
pub struct Renewed {
    /// Serial of the new certificate (lowercase hex).
    pub serial: String,
    /// Its `notAfter`, seconds since the Unix epoch.
    pub not_after: i64,
    /// Serial of the certificate revoked before, for a revocation.
    pub revoked_serial: Option<String>,
}

/// The state the admin API reports.
#[derive(Debug, Clone)]
pub struct Status {
    pub serial: Option<String>,
    pub not_after: Option<i64>,
    /// When the next renewal is due (seconds since the Unix epoch).
    pub renew_at: Option<i64>,
    /// Failed attempts since the last success.
    pub failures: u32,
    pub last_error: Option<String>,
}

enum Command {
    Renew(oneshot::Sender<Result<Renewed, AcmeError>>),
    Revoke(RevocationReason, oneshot::Sender<Result<Renewed, AcmeError>>),
    Status(oneshot::Sender<Status>),
}

/// Sends operator commands to a running [`Manager`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct AcmeHandle {
    tx: mpsc::Sender<Command>,
}

impl AcmeHandle {
    /// Renews now, whatever the schedule says.
    pub async fn renew_now(&self) -> Result<Renewed, AcmeError> {
        self.ask(Command::Renew).await?
    }

    /// Revokes the certificate being served, then obtains one with a new key.
    pub async fn revoke(&self, reason: RevocationReason) -> Result<Renewed, AcmeError> {
        self.ask(|tx| Command::Revoke(reason, tx)).await?
    }

    pub async fn status(&self) -> Result<Status, AcmeError> {
        self.ask(Command::Status).await
    }

    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, AcmeError> {
        let gone = || AcmeError {
            stage: Stage::Install,
            message: "the certificate manager has stopped".into(),
        };
        let (tx, rx) = oneshot::channel();
        self.tx.send(command(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

/// The longest single sleep: the schedule is re-read at least this often (clock changes).
const MAX_SLEEP: Duration = Duration::from_secs(6 * 3600);

/// Keeps one listener's certificate current.
pub struct Manager {
    client: AcmeClient,
    sink: Arc<dyn CertSink>,
    listener: &'static str,
    backoff: schedule::Backoff,
    rx: mpsc::Receiver<Command>,
    last_error: Option<String>,
    /// A failed attempt (scheduled or an operator's) is retried with backoff, whatever the
    /// schedule says, until one succeeds.
    retry_pending: bool,
    jitter: f64,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// `listener`: the metric label (`client`, `device`).
    pub fn new(client: AcmeClient, sink: Arc<dyn CertSink>, listener: &'static str) -> (Self, AcmeHandle) {
        for stage in [
            Stage::Unreachable,
            Stage::Directory,
            Stage::Account,
            Stage::Order,
            Stage::Challenge,
            Stage::Finalize,
            Stage::Certificate,
            Stage::Revoke,
            Stage::Install,
            Stage::Timeout,
        ] {
            metrics::counter!("relay_acme_failures_total", "listener" => listener, "reason" => stage.as_str())
                .increment(0);
        }
        metrics::counter!("relay_acme_renewals_total", "listener" => listener).increment(0);
        let backoff = schedule::Backoff::new(
            Duration::from_secs(client.config().retry_min_secs),
            Duration::from_secs(client.config().retry_max_secs),
        );
        let (tx, rx) = mpsc::channel(8);
        // Where in a renewal window this gateway asks, so that many do not ask at once.
        let jitter = rand::random::<f64>();
        (
            Self {
                client,
                sink,
                listener,
                backoff,
                rx,
                last_error: None,
                retry_pending: false,
                jitter,
            },
            AcmeHandle { tx },
        )
    }

    /// Obtains the first certificate when none is served yet (start-up). One attempt: a
    /// service that cannot get a certificate at first start should say so and stop.
    pub async fn obtain_initial(&mut self) -> Result<(), AcmeError> {
        if self.sink.leaf().is_some() {
            return Ok(());
        }
        let started = Instant::now();
        self.renew().await?;
        tracing::info!(
            listener = self.listener,
            secs = format!("{:.2}", started.elapsed().as_secs_f64()),
            "ACME certificate obtained"
        );
        Ok(())
    }

    /// Renews on schedule and runs commands until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut next = self.next_attempt().await;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(next.into()) => {
                    next = if self.retry_pending || self.due().await {
                        let r = self.renew().await;
                        self.attempt(r).await
                    } else {
                        self.next_attempt().await
                    };
                }
                Some(command) = self.rx.recv() => match command {
                    Command::Renew(reply) => {
                        let r = self.renew().await;
                        next = self.attempt(r.clone()).await;
                        let _ = reply.send(r);
                    }
                    Command::Revoke(reason, reply) => {
                        let r = self.revoke_and_reissue(reason).await;
                        next = match r {
                            // A revocation that did not happen is the operator's to retry:
                            // renewing would take the certificate they want revoked out of
                            // service, unrevoked.
                            Err((_, false)) => self.next_attempt().await,
                            ref r => self.attempt(r.clone().map_err(|(e, _)| e)).await,
                        };
                        let _ = reply.send(r.map_err(|(e, _)| e));
                    }
                    Command::Status(reply) => {
                        let _ = reply.send(self.status(next).await);
                    }
                },
            }
        }
    }

    /// When to try next after an attempt that ended with `result`.
    async fn attempt(&mut self, result: Result<Renewed, AcmeError>) -> Instant {
        match result {
            Ok(_) => {
                self.retry_pending = false;
                self.next_attempt().await
            }
            Err(_) => {
                self.retry_pending = true;
                Instant::now() + self.backoff.failed()
            }
        }
    }

    async fn status(&self, next: Instant) -> Status {
        let leaf = self.sink.leaf();
        let info = leaf.as_ref().and_then(cert_info);
        let wait = next.saturating_duration_since(Instant::now());
        Status {
            serial: info.as_ref().map(|i| i.serial.clone()),
            not_after: info.as_ref().map(|i| i.not_after),
            renew_at: Some(crate::clock::unix_secs() as i64 + wait.as_secs() as i64),
            failures: self.backoff.failures(),
            last_error: self.last_error.clone(),
        }
    }

    /// When the schedule says to renew the served certificate (now, without one).
    async fn renew_time(&self) -> SystemTime {
        let Some(leaf) = self.sink.leaf() else {
            return SystemTime::now();
        };
        let Some(info) = cert_info(&leaf) else {
            return SystemTime::now();
        };
        let window = self.client.renewal_window(&leaf).await;
        schedule::renew_at(
            unix(info.not_before),
            unix(info.not_after),
            self.client.config().renew_after,
            window,
            self.jitter,
        )
    }

    async fn due(&self) -> bool {
        self.renew_time().await <= SystemTime::now()
    }

    async fn next_attempt(&self) -> Instant {
        let wait = self
            .renew_time()
            .await
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        Instant::now() + wait.min(MAX_SLEEP)
    }

    async fn renew(&mut self) -> Result<Renewed, AcmeError> {
        let result = match self.client.issue().await {
            Ok(issued) => self
                .sink
                .install(&issued)
                .map_err(|message| AcmeError {
                    stage: Stage::Install,
                    message,
                })
                .and_then(|()| {
                    self.sink.leaf().as_ref().and_then(cert_info).ok_or_else(|| AcmeError {
                        stage: Stage::Install,
                        message: "the installed certificate does not parse".into(),
                    })
                }),
            Err(e) => Err(e),
        };
        match result {
            Ok(info) => {
                self.backoff.succeeded();
                self.last_error = None;
                metrics::counter!("relay_acme_renewals_total", "listener" => self.listener).increment(1);
                tracing::info!(
                    listener = self.listener,
                    serial = %info.serial,
                    not_after = info.not_after,
                    "ACME certificate installed"
                );
                Ok(Renewed {
                    serial: info.serial,
                    not_after: info.not_after,
                    revoked_serial: None,
                })
            }
            Err(e) => {
                self.fail(&e);
                Err(e)
            }
        }
    }

    fn fail(&mut self, e: &AcmeError) {
        metrics::counter!("relay_acme_failures_total", "listener" => self.listener, "reason" => e.stage.as_str())
            .increment(1);
        tracing::warn!(
            listener = self.listener,
            reason = e.stage.as_str(),
            cause = %e.message,
            "ACME renewal failed; the current certificate stays in service"
        );
        self.last_error = Some(e.to_string());
    }

    /// On error, also whether the revocation itself went through.
    async fn revoke_and_reissue(&mut self, reason: RevocationReason) -> Result<Renewed, (AcmeError, bool)> {
        let leaf = self.sink.leaf().ok_or_else(|| {
            let e = AcmeError {
                stage: Stage::Revoke,
                message: "no certificate is being served".into(),
            };
            (e, false)
        })?;
        let old = cert_info(&leaf).map(|i| i.serial);
        if let Err(e) = self.client.revoke(&leaf, reason).await {
            self.fail(&e);
            return Err((e, false));
        }
        tracing::warn!(listener = self.listener, serial = ?old, "ACME certificate revoked; reissuing with a new key");
        let mut renewed = self.renew().await.map_err(|e| (e, true))?;
        renewed.revoked_serial = old;
        Ok(renewed)
    }
}

fn unix(secs: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}

/// What the manager needs from a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// Lowercase hex of the serial number's bytes.
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
}

/// Serial and validity of a DER certificate.
pub fn cert_info(cert: &CertificateDer<'_>) -> Option<CertInfo> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let serial = parsed
        .tbs_certificate
        .raw_serial()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(CertInfo {
        serial,
        not_before: parsed.validity().not_before.timestamp(),
        not_after: parsed.validity().not_after.timestamp(),
    })
}
