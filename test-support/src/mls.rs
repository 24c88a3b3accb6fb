//! Real MLS members, driven by openmls, for end-to-end tests.

use bytes::Bytes;
use openmls::prelude::tls_codec::{DeserializeBytes as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

pub const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// One MLS client with at most one group.
pub struct Member {
    pub identity: String,
    provider: OpenMlsRustCrypto,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    group: Option<MlsGroup>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// What processing an incoming message produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Processed {
    Application(Vec<u8>),
    /// A commit from another member, now merged.
    Commit,
    Proposal,
    /// A Welcome: this member joined the group.
    Joined,
}

impl Member {
    pub fn new(identity: &str) -> Self {
        let provider = OpenMlsRustCrypto::default();
        let signer = SignatureKeyPair::new(SUITE.signature_algorithm()).unwrap();
        signer.store(provider.storage()).unwrap();
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity.as_bytes().to_vec()).into(),
            signature_key: signer.to_public_vec().into(),
        };
        Self {
            identity: identity.to_owned(),
            provider,
            signer,
            credential,
            group: None,
        }
    }

    /// A fresh KeyPackage, and its MLSMessage encoding.
    pub fn key_package(&self) -> (KeyPackage, Bytes) {
        let bundle = KeyPackage::builder()
            .build(SUITE, &self.provider, &self.signer, self.credential.clone())
            .unwrap();
        let kp = bundle.key_package().clone();
        let bytes = MlsMessageOut::from(kp.clone()).to_bytes().unwrap();
        (kp, bytes.into())
    }

    /// A fresh one-time KeyPackage as the directory stores it (TLS-encoded KeyPackage).
    pub fn key_package_bytes(&self) -> Bytes {
        self.key_package().0.tls_serialize_detached().unwrap().into()
    }

    /// A KeyPackage with the given lifetime (seconds since the Unix epoch), TLS-encoded.
    pub fn key_package_with_lifetime_bytes(&self, not_before: u64, not_after: u64) -> Bytes {
        let bundle = KeyPackage::builder()
            .key_package_lifetime(Lifetime::init(not_before, not_after))
            .build(SUITE, &self.provider, &self.signer, self.credential.clone())
            .unwrap();
        bundle.key_package().tls_serialize_detached().unwrap().into()
    }

    /// A last-resort KeyPackage (RFC 9420 section 16.8), TLS-encoded.
    pub fn last_resort_key_package_bytes(&self) -> Bytes {
        let caps = Capabilities::new(None, None, Some(&[ExtensionType::LastResort]), None, None);
        let bundle = KeyPackage::builder()
            .leaf_node_capabilities(caps)
            .mark_as_last_resort()
            .build(SUITE, &self.provider, &self.signer, self.credential.clone())
            .unwrap();
        bundle.key_package().tls_serialize_detached().unwrap().into()
    }

    /// Parses and verifies a KeyPackage claimed from the directory.
    pub fn verify_key_package(&self, bytes: &[u8]) -> KeyPackage {
        KeyPackageIn::tls_deserialize_exact_bytes(bytes)
            .unwrap()
            .validate(self.provider.crypto(), ProtocolVersion::Mls10)
            .unwrap()
    }

    /// A self-update commit left pending: merge it with [`Member::merge_pending`] once
    /// the DS accepted it, or drop it with [`Member::discard_pending`] if it lost.
    pub fn pending_update(&mut self) -> Bytes {
        let (provider, signer) = (&self.provider, &self.signer);
        let group = self.group.as_mut().expect("member has a group");
        let bundle = group
            .self_update(provider, signer, LeafNodeParameters::default())
            .unwrap();
        let (commit, _, _) = bundle.into_contents();
        commit.to_bytes().unwrap().into()
    }

    pub fn merge_pending(&mut self) {
        let provider = &self.provider;
        self.group
            .as_mut()
            .expect("member has a group")
            .merge_pending_commit(provider)
            .unwrap();
    }

    pub fn discard_pending(&mut self) {
        let provider = &self.provider;
        self.group
            .as_mut()
            .expect("member has a group")
            .clear_pending_commit(provider.storage())
            .unwrap();
    }

    pub fn create_group(&mut self) {
        // Send ciphertext, accept PublicMessage too (mls-rs sends commits in the clear).
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(SUITE)
            .use_ratchet_tree_extension(true)
            .wire_format_policy(MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .build();
        self.group = Some(MlsGroup::new(&self.provider, &self.signer, &config, self.credential.clone()).unwrap());
    }

    fn group(&mut self) -> &mut MlsGroup {
        self.group.as_mut().expect("member has a group")
    }

    pub fn epoch(&self) -> u64 {
        self.group.as_ref().map_or(0, |g| g.epoch().as_u64())
    }

    pub fn group_id(&self) -> Vec<u8> {
        self.group
            .as_ref()
            .map(|g| g.group_id().as_slice().to_vec())
            .unwrap_or_default()
    }

    /// Adds members; returns (commit, welcome) bytes. The commit is merged at once.
    pub fn add(&mut self, key_packages: &[KeyPackage]) -> (Bytes, Bytes) {
        let (provider, signer) = (&self.provider, &self.signer);
        let group = self.group.as_mut().expect("member has a group");
        let (commit, welcome, _) = group.add_members(provider, signer, key_packages).unwrap();
        group.merge_pending_commit(provider).unwrap();
        (commit.to_bytes().unwrap().into(), welcome.to_bytes().unwrap().into())
    }

    /// Removes the member at `leaf`; returns the commit bytes (merged at once).
    pub fn remove(&mut self, leaf: u32) -> Bytes {
        let (provider, signer) = (&self.provider, &self.signer);
        let group = self.group.as_mut().expect("member has a group");
        let (commit, _, _) = group
            .remove_members(provider, signer, &[LeafNodeIndex::new(leaf)])
            .unwrap();
        group.merge_pending_commit(provider).unwrap();
        commit.to_bytes().unwrap().into()
    }

    /// A self-update commit (merged at once).
    pub fn update(&mut self) -> Bytes {
        let commit = self.pending_update();
        self.merge_pending();
        commit
    }

    /// Leaf index of a member with `identity`.
    pub fn leaf_of(&mut self, identity: &str) -> u32 {
        self.group()
            .members()
            .find(|m| m.credential.serialized_content() == identity.as_bytes())
            .map(|m| m.index.u32())
            .expect("identity is a member")
    }

    /// The group's current GroupInfo (signed, with the ratchet tree) as an MLSMessage.
    pub fn group_info(&mut self) -> Bytes {
        let (provider, signer) = (&self.provider, &self.signer);
        let group = self.group.as_mut().expect("member has a group");
        group
            .export_group_info(provider.crypto(), signer, true)
            .unwrap()
            .to_bytes()
            .unwrap()
            .into()
    }

    pub fn encrypt(&mut self, plaintext: &[u8]) -> Bytes {
        let (provider, signer) = (&self.provider, &self.signer);
        let group = self.group.as_mut().expect("member has a group");
        group
            .create_message(provider, signer, plaintext)
            .unwrap()
            .to_bytes()
            .unwrap()
            .into()
    }

    /// Processes bytes received from the relay.
    pub fn process(&mut self, bytes: &[u8]) -> Processed {
        let msg = MlsMessageIn::tls_deserialize_exact_bytes(bytes).unwrap();
        match msg.extract() {
            MlsMessageBodyIn::Welcome(welcome) => {
                let config = MlsGroupJoinConfig::builder()
                    .use_ratchet_tree_extension(true)
                    .wire_format_policy(MIXED_CIPHERTEXT_WIRE_FORMAT_POLICY)
                    .build();
                let staged = StagedWelcome::new_from_welcome(&self.provider, &config, welcome, None).unwrap();
                self.group = Some(staged.into_group(&self.provider).unwrap());
                Processed::Joined
            }
            MlsMessageBodyIn::PrivateMessage(m) => self.process_protocol(m.into()),
            MlsMessageBodyIn::PublicMessage(m) => self.process_protocol(m.into()),
            other => panic!("unexpected message {other:?}"),
        }
    }

    fn process_protocol(&mut self, m: ProtocolMessage) -> Processed {
        let provider = &self.provider;
        let group = self.group.as_mut().expect("member has a group");
        let processed = group.process_message(provider, m).unwrap();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(a) => Processed::Application(a.into_bytes()),
            ProcessedMessageContent::StagedCommitMessage(c) => {
                group.merge_staged_commit(provider, *c).unwrap();
                Processed::Commit
            }
            _ => Processed::Proposal,
        }
    }
}
