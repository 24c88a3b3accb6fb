//! A second, independent MLS implementation (mls-rs) for cross-implementation tests:
//! what it produces must be accepted by the gateway exactly like openmls's output.

use bytes::Bytes;
use mls_rs::client_builder::MlsConfig;
use mls_rs::group::ReceivedMessage;
use mls_rs::identity::SigningIdentity;
use mls_rs::identity::basic::{BasicCredential, BasicIdentityProvider};
use mls_rs::{CipherSuite, CipherSuiteProvider as _, Client, CryptoProvider as _, Group, MlsMessage};
use mls_rs_crypto_rustcrypto::RustCryptoProvider;

/// Suite 0x0001, the same as `mls::SUITE`.
pub const SUITE: CipherSuite = CipherSuite::CURVE25519_AES128;

/// An mls-rs client with at most one group.
pub struct RsMember<C: MlsConfig> {
    client: Client<C>,
    group: Option<Group<C>>,
}

impl<C: MlsConfig> std::fmt::Debug for RsMember<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsMember").finish_non_exhaustive()
    }
}

/// A new mls-rs member whose basic credential identity is `identity`.
pub fn member(identity: &str) -> RsMember<impl MlsConfig> {
    let crypto = RustCryptoProvider::default();
    let suite = crypto.cipher_suite_provider(SUITE).unwrap();
    let (secret, public) = suite.signature_key_generate().unwrap();
    let credential = BasicCredential::new(identity.as_bytes().to_vec());
    let signing_identity = SigningIdentity::new(credential.into_credential(), public);
    let client = Client::builder()
        .identity_provider(BasicIdentityProvider)
        .crypto_provider(crypto)
        .signing_identity(signing_identity, secret, SUITE)
        .build();
    RsMember { client, group: None }
}

impl<C: MlsConfig> RsMember<C> {
    /// A fresh KeyPackage, TLS-encoded as the directory stores it (the MLSMessage
    /// framing — version and wire format, RFC 9420 section 6 — removed).
    pub fn key_package_bytes(&self) -> Bytes {
        let msg = self
            .client
            .generate_key_package_message(Default::default(), Default::default(), None)
            .unwrap();
        let bytes = msg.to_bytes().unwrap();
        assert_eq!(&bytes[..4], &[0x00, 0x01, 0x00, 0x05], "mls10 key_package MLSMessage");
        Bytes::copy_from_slice(&bytes[4..])
    }

    /// Joins from a Welcome received through the relay.
    pub fn join(&mut self, welcome: &[u8]) {
        let msg = MlsMessage::from_bytes(welcome).unwrap();
        let (group, _) = self.client.join_group(None, &msg, None).unwrap();
        self.group = Some(group);
    }

    pub fn epoch(&self) -> u64 {
        self.group.as_ref().map_or(0, Group::current_epoch)
    }

    pub fn encrypt(&mut self, plaintext: &[u8]) -> Bytes {
        let group = self.group.as_mut().expect("member has a group");
        group
            .encrypt_application_message(plaintext, Default::default())
            .unwrap()
            .to_bytes()
            .unwrap()
            .into()
    }

    /// A commit (empty: a path update) left pending until the DS accepts it.
    pub fn pending_commit(&mut self) -> Bytes {
        let group = self.group.as_mut().expect("member has a group");
        group
            .commit(Vec::new())
            .unwrap()
            .commit_message
            .to_bytes()
            .unwrap()
            .into()
    }

    pub fn merge_pending(&mut self) {
        self.group
            .as_mut()
            .expect("member has a group")
            .apply_pending_commit()
            .unwrap();
    }

    /// Processes bytes from the relay; returns the plaintext of an application message.
    pub fn process(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        let group = self.group.as_mut().expect("member has a group");
        match group
            .process_incoming_message(MlsMessage::from_bytes(bytes).unwrap())
            .unwrap()
        {
            ReceivedMessage::ApplicationMessage(m) => Some(m.data().to_vec()),
            _ => None,
        }
    }
}
