//! JSON bodies of the MIMI-shaped endpoints (see the crate documentation for deviations).

use serde::{Deserialize, Serialize};

/// `POST /mimi/v1/notify/{envelope id}`: one envelope for named recipients.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyBody {
    pub recipients: Vec<String>,
    /// Standard base64 of one MLSMessage.
    pub message: String,
    #[serde(default)]
    pub urgent: bool,
}

/// `POST /mimi/v1/keyMaterial`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyMaterialRequest {
    pub requester: String,
    pub targets: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoteKeyPackage {
    pub address: String,
    pub device_id: u32,
    /// Standard base64 of the TLS-encoded KeyPackage.
    pub key_package: String,
    pub last_resort: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KeyMaterialResponse {
    pub key_packages: Vec<RemoteKeyPackage>,
}
