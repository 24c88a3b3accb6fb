//! `Envelope::parse` on real openmls messages of every wire format the relay routes: what it
//! extracts (the group header of a PublicMessage, the new members' KeyPackageRefs of a
//! Welcome, the group id of a GroupInfo) is what the DS routes and orders by.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use openmls::prelude::tls_codec::Serialize as _;
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use relay_core::Limits;
use relay_core::envelope::{Envelope, MessageContentType, MessageKind};

const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

struct Client {
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
}

fn client(identity: &str) -> Client {
    let provider = OpenMlsRustCrypto::default();
    let signer = SignatureKeyPair::new(SUITE.signature_algorithm()).unwrap();
    signer.store(provider.storage()).unwrap();
    let credential = CredentialWithKey {
        credential: BasicCredential::new(identity.as_bytes().to_vec()).into(),
        signature_key: signer.to_public_vec().into(),
    };
    Client {
        provider,
        signer,
        credential,
    }
}

fn parse(bytes: Vec<u8>) -> Envelope {
    Envelope::parse(Bytes::from(bytes), &Limits::default()).unwrap()
}

#[test]
fn public_message_welcome_and_group_info_are_read_as_routed() {
    let alice = client("alice");
    let bob = client("bob");
    let bob_kp = KeyPackage::builder()
        .build(SUITE, &bob.provider, &bob.signer, bob.credential.clone())
        .unwrap();
    let config = MlsGroupCreateConfig::builder()
        .ciphersuite(SUITE)
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_PLAINTEXT_WIRE_FORMAT_POLICY)
        .build();
    let mut group = MlsGroup::new(&alice.provider, &alice.signer, &config, alice.credential.clone()).unwrap();
    let (commit, welcome, _) = group
        .add_members(&alice.provider, &alice.signer, &[bob_kp.key_package().clone()])
        .unwrap();
    group.merge_pending_commit(&alice.provider).unwrap();
    let group_id = group.group_id().as_slice().to_vec();

    // The commit, in the clear: its header names the group, epoch 0 and the content type.
    let commit = parse(commit.to_bytes().unwrap());
    assert_eq!(commit.kind(), MessageKind::PublicMessage);
    let header = commit.header().expect("a PublicMessage has a group header");
    assert_eq!(header.group_id.as_ref(), group_id.as_slice());
    assert_eq!((header.epoch, header.content_type), (0, MessageContentType::Commit));
    assert!(commit.welcome_refs().is_empty() && commit.group_info_group_id().is_none());

    // The Welcome names exactly Bob's KeyPackageRef (how the DS finds his device).
    let welcome = parse(welcome.to_bytes().unwrap());
    assert_eq!(welcome.kind(), MessageKind::Welcome);
    let bob_ref = bob_kp.key_package().hash_ref(alice.provider.crypto()).unwrap();
    assert_eq!(welcome.welcome_refs(), [bob_ref.as_slice().to_vec()]);
    assert!(welcome.header().is_none() && welcome.group_info_group_id().is_none());

    // A GroupInfo names its group.
    let info = group
        .export_group_info(alice.provider.crypto(), &alice.signer, true)
        .unwrap();
    let info = parse(info.to_bytes().unwrap());
    assert_eq!(info.kind(), MessageKind::GroupInfo);
    assert_eq!(info.group_info_group_id(), Some(group_id.as_slice()));
    assert!(info.header().is_none() && info.welcome_refs().is_empty());

    // A KeyPackage parses, with nothing to route by.
    let kp = MlsMessageOut::from(bob_kp.key_package().clone())
        .tls_serialize_detached()
        .unwrap();
    let kp = parse(kp);
    assert_eq!(kp.kind(), MessageKind::KeyPackage);
    assert!(kp.header().is_none() && kp.welcome_refs().is_empty() && kp.group_info_group_id().is_none());
}
