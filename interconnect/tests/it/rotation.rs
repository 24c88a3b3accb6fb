//! Rotating the interconnect's own certificate: new files, a reload, and the connections
//! already open between the carriers carry on while new handshakes see the new certificate.

use std::sync::Arc;

use relay_client::Recipient;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use test_support::framed_message;
use test_support::pki::{Leaf, RcgenCa};

use crate::{Carrier, Peer, admin, mtls, receive_all};

async fn connections_from(carrier: &Carrier, peer: &str) -> f64 {
    let text = admin(carrier.gw.admin_addr, "GET", "/metrics").await.unwrap();
    let needle = format!("interconnect_connections_total{{peer=\"{peer}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The serial of the certificate a new connection to `carrier`'s interconnect listener
/// gets (presenting `client`, which the listener must accept).
async fn served_serial(carrier: &Carrier, ca: &std::path::Path, client: &Leaf) -> u64 {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(relay_net::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            CertificateDer::pem_file_iter(&client.cert)
                .unwrap()
                .map(Result::unwrap)
                .collect(),
            rustls::pki_types::PrivateKeyDer::from_pem_file(&client.key).unwrap(),
        )
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(carrier.gw.interconnect_addr.unwrap())
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let serial = relay_net::acme::cert_info(&leaf).unwrap().serial;
    u64::from_str_radix(&serial, 16).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_by_reload_keeps_established_connections() {
    let pki = tempfile::tempdir().unwrap();
    let ca_a = RcgenCa::new(&pki.path().join("a"), "rotating-a");
    let ca_b = RcgenCa::new(&pki.path().join("b"), "rotating-b");
    let leaf_a = ca_a.issue("a", "rotating-a.test", 1, None);
    let leaf_b = ca_b.issue("b", "rotating-b.test", 1, None);
    let a = Carrier::start("rotating-a.test", "US", &leaf_a, &["+1555"], &["US", "GB"]).await;
    let b = Carrier::start("rotating-b.test", "GB", &leaf_b, &["+4477"], &[]).await;
    // Peer names of their own: the connection counters are per process.
    let peers_of_a = [Peer {
        name: "rot-b",
        domain: "rotating-b.test",
        port: b.ic_port(),
        ca: &ca_b.cert,
        prefixes: &["+4477"],
        jurisdiction: "GB",
        crls: vec![],
    }];
    let peers_of_b = [Peer {
        name: "rot-a",
        domain: "rotating-a.test",
        port: a.ic_port(),
        ca: &ca_a.cert,
        prefixes: &["+1555"],
        jurisdiction: "US",
        crls: vec![],
    }];
    a.set_peers(&peers_of_a).await;
    b.set_peers(&peers_of_b).await;
    let (alice, _) = a.gw.device("tel:+15550108001").await;
    let (bob, _) = b.gw.device("tel:+447700908001").await;
    let to_bob = [Recipient::address("tel:+447700908001")];

    let m1 = framed_message(b"before the rotation");
    alice.send(&to_bob, m1.clone(), None, false).await.unwrap();
    assert_eq!(receive_all(&bob, 1).await, vec![m1.clone()]);
    let opened = connections_from(&b, "rot-a").await;
    assert_eq!(opened, 1.0, "A reached B over one connection");
    assert_eq!(served_serial(&b, &ca_b.cert, &leaf_a).await, 1);

    // Both carriers rotate: new keys and certificates in the same files, then a reload.
    let leaf_a2 = ca_a.issue("a", "rotating-a.test", 2, None);
    let leaf_b2 = ca_b.issue("b", "rotating-b.test", 2, None);
    a.set_peers(&peers_of_a).await;
    b.set_peers(&peers_of_b).await;

    // New handshakes get the new certificate, and B accepts A's new one.
    assert_eq!(served_serial(&b, &ca_b.cert, &leaf_a2).await, 2);
    assert_eq!(served_serial(&a, &ca_a.cert, &leaf_b2).await, 2);
    let (status, _) = mtls(
        b.gw.interconnect_addr.unwrap(),
        &ca_b.cert,
        Some(&leaf_a2),
        false,
        "GET",
        "/healthz",
        None,
    )
    .await
    .unwrap();
    assert_ne!(status, 0);
    let probes = connections_from(&b, "rot-a").await;

    // The connection A opened before the rotation carries the next envelope: B counted no
    // new connection from A (a reload that dropped A's pool would make A reconnect).
    let m2 = framed_message(b"after the rotation");
    alice.send(&to_bob, m2.clone(), None, false).await.unwrap();
    assert_eq!(receive_all(&bob, 2).await, vec![m1, m2]);
    assert_eq!(
        connections_from(&b, "rot-a").await,
        probes,
        "the established connection was kept across the reload"
    );
    a.gw.stop().await;
    b.gw.stop().await;
}
