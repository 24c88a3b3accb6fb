//! Setup: devices registered with tokens signed by the gateway's development key, spread
//! over a few connections; and the messages a run sends.

use anyhow::Context as _;
use bytes::Bytes;
use relay_client::{Client, Protocol, Recipient, Trust};
use relay_net::clock::now_ms;
pub(crate) use relay_net::clock::now_us;
use ring::signature::Ed25519KeyPair;

use crate::args::{Args, Scenario};

/// The clients of a run.
pub(crate) struct Setup {
    pub(crate) senders: Vec<Client>,
    pub(crate) receivers: Vec<Client>,
    pub(crate) recipients: Vec<Recipient>,
    /// `abuse`: the attacker's device and whom it floods (a recipient of its own, so only
    /// the per-credential limit is in play).
    pub(crate) attacker: Option<(Client, Vec<Recipient>)>,
}

pub(crate) async fn setup(args: &Args) -> anyhow::Result<Setup> {
    let key_path = args.data_dir.join("keys/provisioning.pk8");
    let pkcs8 = std::fs::read(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let key = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| anyhow::anyhow!("provisioning key: {e}"))?;
    let protocol = if args.http3 { Protocol::Http3 } else { Protocol::Http2 };
    let trust = Trust::CaFile(args.data_dir.join("tls/dev-ca.pem"));
    let run_id: u32 = rand::random::<u32>() % 100_000;
    // Devices share `connections` connections (HTTP/2 or QUIC multiplexing), so thousands
    // of receivers do not need thousands of sockets.
    let bases = (0..args.connections.max(1))
        .map(|i| {
            let local = args
                .source_ips
                .map(|n| std::net::IpAddr::from([127, 0, 0, 1 + (i % usize::from(n.max(1))) as u8]));
            Client::connect_from(&args.server, trust.clone(), protocol, local)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let register = |n: usize| {
        let key = &key;
        let base = bases[n % bases.len()].clone();
        async move {
            let address = format!("tel:+1{run_id:05}{n:06}");
            let claims = relay_core::provisioning::ProvisioningClaims {
                address: relay_core::Address::parse(&address)?,
                expires_at_ms: now_ms() + 600_000,
                nonce: rand::random(),
            };
            let reg = base
                .register(&relay_core::provisioning::sign(key, &claims))
                .await
                .map_err(|e| {
                    let hint = if e.status() == Some(429) {
                        " (the gateway's registration limit: raise [rate_limit] registration_burst for a load test)"
                    } else {
                        ""
                    };
                    anyhow::anyhow!("registering device {n}: {e}{hint}")
                })?;
            anyhow::Ok((base.with_credential(reg.credential), address))
        }
    };
    let mut senders = Vec::new();
    for i in 0..args.connections.max(1) {
        senders.push(register(i).await?.0);
    }
    let wanted = if matches!(args.scenario, Scenario::Fanout | Scenario::Idle) {
        args.recipients.max(1)
    } else {
        1
    };
    let mut receivers = Vec::new();
    let mut recipients = Vec::new();
    for i in 0..wanted {
        let (client, address) = register(1000 + i).await?;
        receivers.push(client);
        recipients.push(Recipient::address(address));
    }
    let attacker = if args.scenario == Scenario::Abuse {
        let (client, _) = register(2000).await?;
        let (_, target) = register(2001).await?;
        Some((client, vec![Recipient::address(target)]))
    } else {
        None
    };
    Ok(Setup {
        senders,
        receivers,
        recipients,
        attacker,
    })
}

/// Set in a message's sequence number when it was sent in the measured period.
pub(crate) const MEASURED: u64 = 1 << 63;

/// A distinct well-formed MLS message carrying the wall-clock send time (for `live`).
pub(crate) fn message(size: usize, seq: u64) -> Bytes {
    let mut ct = vec![0u8; size.max(16)];
    // The ciphertext is the last field of the frame (RFC 9420 section 6.3), so its tail is
    // the message's tail: sequence number, then send time.
    let n = ct.len();
    ct[n - 16..n - 8].copy_from_slice(&seq.to_be_bytes());
    ct[n - 8..].copy_from_slice(&now_us().to_be_bytes());
    relay_core::envelope::frame_private_message(b"loadtest", 1, &ct).into()
}

/// The sequence number and send time embedded by [`message`]: the last 16 bytes.
pub(crate) fn live_stamp(message: &[u8]) -> Option<(u64, u64)> {
    let tail = message.get(message.len().checked_sub(16)?..)?;
    Some((
        u64::from_be_bytes(tail[..8].try_into().ok()?),
        u64::from_be_bytes(tail[8..].try_into().ok()?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_through_the_frame() {
        let m = message(64, 7 | MEASURED);
        let (seq, sent_us) = live_stamp(&m).unwrap();
        assert_eq!(seq, 7 | MEASURED);
        assert!(sent_us.abs_diff(now_us()) < 60_000_000);
        relay_core::Envelope::parse(m, &relay_core::Limits::default()).unwrap();
    }
}
