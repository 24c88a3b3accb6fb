//! What the nodes on one database share besides the data: notifications (a send on one
//! node wakes the receivers on every node), the live receivers (so no node pushes to a
//! device another node is streaming to) and rate limits.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, NoTls, Socket};

use super::{PostgresStore, dev, i64_of, q01, u64_of, x};
use crate::watch::DeviceKey;
use crate::{DeviceId, Rid, StoreError};

/// A notification from another node (or this one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Heard {
    /// Envelopes were stored (or the device was removed): wake these devices' receivers.
    Mailbox(Vec<DeviceKey>),
    /// Entries were queued in the outbox.
    Outbox,
    /// A kill switch, suspension or re-key mark changed.
    Controls,
    /// The listening connection was (re-)established: anything may have been missed.
    Resync,
}

/// Parses a `relay_mailbox` payload: `rid-hex:device` items separated by commas.
pub(crate) fn parse_mailbox(payload: &str) -> Vec<DeviceKey> {
    payload
        .split(',')
        .filter_map(|item| {
            let (rid, device) = item.split_once(':')?;
            let rid: [u8; 32] = relay_core::hex::decode(rid)?.try_into().ok()?;
            Some((Rid(rid), DeviceId(device.parse().ok()?)))
        })
        .collect()
}

/// The `relay_mailbox` payload naming `keys`.
pub(crate) fn mailbox_payload(keys: &[DeviceKey]) -> String {
    keys.iter()
        .map(|(rid, device)| format!("{}:{}", relay_core::hex::encode(&rid.0), device.0))
        .collect::<Vec<_>>()
        .join(",")
}

impl PostgresStore {
    /// Listens on a connection of its own until `out` is closed, reconnecting (and saying
    /// [`Heard::Resync`]) after every loss.
    pub(crate) async fn listen(self, out: mpsc::UnboundedSender<Heard>) {
        let mut backoff = Duration::from_millis(100);
        while !out.is_closed() {
            let heard = match &self.tls {
                Some(t) => self.session(t.clone(), &out).await,
                None => self.session(NoTls, &out).await,
            };
            if heard {
                backoff = Duration::from_millis(100);
                if !out.is_closed() {
                    tracing::warn!("lost the postgres notification connection; reconnecting");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = out.closed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// One listening connection, until it is lost; whether it was established.
    async fn session<T>(&self, tls: T, out: &mpsc::UnboundedSender<Heard>) -> bool
    where
        T: MakeTlsConnect<Socket>,
        T::Stream: Send + 'static,
    {
        let (client, mut conn) = match self.pg.connect(tls).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(cause = %e, "postgres notification connection");
                return false;
            }
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            while let Some(m) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => {
                        let heard = match n.channel() {
                            "relay_mailbox" => Heard::Mailbox(parse_mailbox(n.payload())),
                            "relay_outbox" => Heard::Outbox,
                            _ => Heard::Controls,
                        };
                        if tx.send(heard).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        let listening = client
            .batch_execute("LISTEN relay_mailbox; LISTEN relay_outbox; LISTEN relay_controls")
            .await
            .is_ok();
        if listening {
            let _ = out.send(Heard::Resync);
            loop {
                tokio::select! {
                    heard = rx.recv() => match heard {
                        Some(h) => if out.send(h).is_err() { break },
                        None => break,
                    },
                    () = out.closed() => break,
                }
            }
        }
        driver.abort();
        listening
    }

    /// The value stored under `name`, `value` if there was none.
    pub(crate) async fn agree(&self, name: &str, value: &str) -> Result<String, StoreError> {
        let c = self.client().await?;
        x(
            &c,
            "INSERT INTO cluster (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&name, &value],
        )
        .await?;
        Ok(super::q1(&c, "SELECT value FROM cluster WHERE name = $1", &[&name])
            .await?
            .get(0))
    }

    /// Records that this node has (`true`) or no longer has a live receiver for `key`.
    pub(crate) async fn set_receiver(&self, key: DeviceKey, live: bool, now_ms: u64) -> Result<(), StoreError> {
        let c = self.client().await?;
        let (r, d) = (key.0.0.to_vec(), dev(key.1));
        if live {
            let until = i64_of(now_ms.saturating_add(self.cfg.receiver_lease.as_millis() as u64));
            x(
                &c,
                "INSERT INTO receivers (rid, device, node, until_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (rid, device, node) DO UPDATE SET until_ms = EXCLUDED.until_ms",
                &[&r, &d, &self.node, &until],
            )
            .await?;
        } else {
            x(
                &c,
                "DELETE FROM receivers WHERE rid = $1 AND device = $2 AND node = $3",
                &[&r, &d, &self.node],
            )
            .await?;
        }
        Ok(())
    }

    /// Extends this node's receiver leases.
    pub(crate) async fn refresh_receivers(&self, now_ms: u64) -> Result<(), StoreError> {
        let c = self.client().await?;
        let until = i64_of(now_ms.saturating_add(self.cfg.receiver_lease.as_millis() as u64));
        x(
            &c,
            "UPDATE receivers SET until_ms = $2 WHERE node = $1",
            &[&self.node, &until],
        )
        .await?;
        Ok(())
    }

    /// How often this node must refresh its receiver leases.
    pub(crate) fn receiver_refresh(&self) -> Duration {
        self.cfg.receiver_lease / 3
    }

    /// Whether another node has a live receiver for `key`.
    pub(crate) async fn live_elsewhere(&self, key: DeviceKey, now_ms: u64) -> Result<bool, StoreError> {
        let c = self.client().await?;
        Ok(q01(
            &c,
            "SELECT 1 FROM receivers WHERE rid = $1 AND device = $2 AND node <> $3 AND until_ms > $4 LIMIT 1",
            &[&key.0.0.to_vec(), &dev(key.1), &self.node, &i64_of(now_ms)],
        )
        .await?
        .is_some())
    }

    /// A shared rate limit (GCRA): one token per `period_ms`, up to `burst` at once, for
    /// `key` across every node. Takes `n` tokens at once if they are there; `Ok(None)` if
    /// taken, else the wait for one.
    pub(crate) async fn rate(
        &self,
        key: &[u8],
        period_ms: u64,
        burst: u32,
        n: u32,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let c = self.client().await?;
        let (now, period) = (i64_of(now_ms), i64_of(period_ms));
        let tolerance = period.saturating_mul(i64::from(burst.max(1) - 1));
        // n tokens fit when the theoretical arrival time after them is within the tolerance.
        let slack = tolerance - period.saturating_mul(i64::from(n.max(1) - 1));
        let cost = period.saturating_mul(i64::from(n.max(1)));
        let allowed = q01(
            &c,
            "INSERT INTO rate_limits AS r (key, tat_ms) VALUES ($1::bytea, $2::bigint + $3::bigint) \
             ON CONFLICT (key) DO UPDATE SET tat_ms = GREATEST(r.tat_ms, $2::bigint) + $3::bigint \
               WHERE GREATEST(r.tat_ms, $2::bigint) - $2::bigint <= $4::bigint \
             RETURNING tat_ms",
            &[&key, &now, &cost, &slack],
        )
        .await?;
        if allowed.is_some() {
            return Ok(None);
        }
        let tat: i64 = q01(&c, "SELECT tat_ms FROM rate_limits WHERE key = $1", &[&key])
            .await?
            .map_or(now, |r| r.get(0));
        Ok(Some(u64_of(tat - tolerance - now).max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_payloads_round_trip_and_junk_is_skipped() {
        let keys = vec![(Rid([7; 32]), DeviceId(3)), (Rid([0xab; 32]), DeviceId(u32::MAX))];
        assert_eq!(parse_mailbox(&mailbox_payload(&keys)), keys);
        assert!(parse_mailbox("").is_empty());
        assert_eq!(parse_mailbox("zz:1,07:2,").len(), 0);
    }
}
