//! The API calls: one method per endpoint of `relay_core::wire::v1`.

use bytes::Bytes;
use http::{Method, StatusCode, header};
use prost::Message as _;
use relay_core::wire::v1;

use crate::{Client, ClientError, RawResponse, Recipient, Registration};

impl Client {
    /// `GET /healthz`.
    pub async fn healthz(&self) -> Result<(), ClientError> {
        let resp = self.raw(Method::GET, "/healthz", &[], Bytes::new()).await?;
        expect_status(&resp, StatusCode::OK)?;
        Ok(())
    }

    /// Registers a device with an operator-issued provisioning token.
    pub async fn register(&self, provisioning_token: &str) -> Result<Registration, ClientError> {
        self.register_with(v1::RegisterRequest {
            provisioning_token: provisioning_token.to_owned(),
            address: String::new(),
        })
        .await
    }

    /// Registers without a token (only on gateways with `danger_open_registration`).
    pub async fn register_open(&self, address: &str) -> Result<Registration, ClientError> {
        self.register_with(v1::RegisterRequest {
            provisioning_token: String::new(),
            address: address.to_owned(),
        })
        .await
    }

    async fn register_with(&self, body: v1::RegisterRequest) -> Result<Registration, ClientError> {
        let r: v1::RegisterResponse = self
            .call(Method::POST, "/v1/devices", &body, StatusCode::CREATED)
            .await?;
        Ok(Registration {
            device_id: r.device_id,
            credential: r.credential,
        })
    }

    /// Sends one MLS message to recipients. Returns once the gateway has it durably.
    pub async fn send(
        &self,
        recipients: &[Recipient],
        message: Bytes,
        client_message_id: Option<[u8; 16]>,
        urgent: bool,
    ) -> Result<v1::SendResponse, ClientError> {
        let body = v1::SendRequest {
            recipients: recipients
                .iter()
                .map(|r| v1::Recipient {
                    address: r.address.clone(),
                    device_ids: r.device_ids.clone(),
                })
                .collect(),
            message,
            client_message_id: client_message_id
                .map(|c| Bytes::copy_from_slice(&c))
                .unwrap_or_default(),
            urgent,
        };
        let resp = self.raw_proto(Method::POST, "/v1/messages", &body).await?;
        if resp.status != StatusCode::CREATED && resp.status != StatusCode::OK {
            return Err(api_error(&resp));
        }
        v1::SendResponse::decode(resp.body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Reads envelopes after cursor `after`; with `wait_secs > 0`, waits for one.
    pub async fn receive(&self, after: u64, limit: u32, wait_secs: u32) -> Result<v1::ReceiveResponse, ClientError> {
        let path = format!("/v1/messages?after={after}&limit={limit}&wait={wait_secs}");
        let resp = self.raw(Method::GET, &path, &[], Bytes::new()).await?;
        expect_status(&resp, StatusCode::OK)?;
        v1::ReceiveResponse::decode(resp.body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Acknowledges envelopes by server id and/or every envelope up to a cursor.
    pub async fn ack(&self, server_ids: &[Bytes], up_to: Option<u64>) -> Result<(), ClientError> {
        let body = v1::AckRequest {
            server_ids: server_ids.to_vec(),
            up_to: up_to.unwrap_or(0),
        };
        let resp = self.raw_proto(Method::POST, "/v1/messages/ack", &body).await?;
        expect_status(&resp, StatusCode::NO_CONTENT)
    }

    /// Uploads TLS-encoded KeyPackages (at most 100 per call) to the directory.
    pub async fn upload_key_packages(&self, key_packages: &[Bytes]) -> Result<u32, ClientError> {
        let body = v1::UploadKeyPackagesRequest {
            key_packages: key_packages.to_vec(),
        };
        let r: v1::UploadKeyPackagesResponse = self
            .call(Method::POST, "/v1/keypackages", &body, StatusCode::CREATED)
            .await?;
        Ok(r.stored)
    }

    /// Claims one KeyPackage per device of each address (one-time packages exactly once,
    /// then the last-resort package).
    pub async fn claim_key_packages(&self, addresses: &[&str]) -> Result<Vec<v1::ClaimedKeyPackage>, ClientError> {
        self.claim_key_packages_as("", addresses).await
    }

    /// [`Client::claim_key_packages`] naming the claimer's own address, which a claim from a
    /// peer carrier's subscribers needs.
    pub async fn claim_key_packages_as(
        &self,
        requester: &str,
        addresses: &[&str],
    ) -> Result<Vec<v1::ClaimedKeyPackage>, ClientError> {
        let body = v1::ClaimKeyPackagesRequest {
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            requester: requester.to_owned(),
        };
        let r: v1::ClaimKeyPackagesResponse = self
            .call(Method::POST, "/v1/keypackages/claim", &body, StatusCode::OK)
            .await?;
        Ok(r.key_packages)
    }

    /// How many KeyPackages this device has left in the directory.
    pub async fn key_package_count(&self) -> Result<v1::KeyPackageCountResponse, ClientError> {
        let resp = self
            .raw(Method::GET, "/v1/keypackages/count", &[], Bytes::new())
            .await?;
        expect_status(&resp, StatusCode::OK)?;
        v1::KeyPackageCountResponse::decode(resp.body).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Publishes a group's latest GroupInfo (an MLSMessage) for external joins.
    pub async fn put_group_info(&self, group_id: &[u8], group_info: Bytes) -> Result<(), ClientError> {
        let path = format!("/v1/groups/{}/info", relay_core::hex::encode(group_id));
        let ct = [(header::CONTENT_TYPE, "message/mls".to_owned())];
        let resp = self.raw(Method::PUT, &path, &ct, group_info).await?;
        expect_status(&resp, StatusCode::NO_CONTENT)
    }

    /// The latest GroupInfo published for a group.
    pub async fn group_info(&self, group_id: &[u8]) -> Result<Bytes, ClientError> {
        let resp = self
            .raw(
                Method::GET,
                &format!("/v1/groups/{}/info", relay_core::hex::encode(group_id)),
                &[],
                Bytes::new(),
            )
            .await?;
        expect_status(&resp, StatusCode::OK)?;
        Ok(resp.body)
    }

    /// Stores this device's push handle (from the push proxy) at the gateway.
    pub async fn set_push_handle(&self, handle: &str) -> Result<(), ClientError> {
        let body = v1::SetPushHandleRequest { handle: handle.into() };
        let resp = self.raw_proto(Method::PUT, "/v1/devices/self/push", &body).await?;
        expect_status(&resp, StatusCode::NO_CONTENT)
    }

    /// Removes this device's push handle: no more pushes.
    pub async fn clear_push_handle(&self) -> Result<(), ClientError> {
        let resp = self
            .raw(Method::DELETE, "/v1/devices/self/push", &[], Bytes::new())
            .await?;
        expect_status(&resp, StatusCode::NO_CONTENT)
    }

    /// Deletes this device and its queued envelopes.
    pub async fn delete_device(&self) -> Result<(), ClientError> {
        let resp = self.raw(Method::DELETE, "/v1/devices/self", &[], Bytes::new()).await?;
        expect_status(&resp, StatusCode::NO_CONTENT)
    }
}

pub(crate) fn expect_status(resp: &RawResponse, expect: StatusCode) -> Result<(), ClientError> {
    if resp.status == expect {
        Ok(())
    } else {
        Err(api_error(resp))
    }
}

pub(crate) fn api_error(resp: &RawResponse) -> ClientError {
    let json = serde_json::from_slice::<serde_json::Value>(&resp.body).ok();
    let field = |name: &str| json.as_ref().and_then(|v| v.get(name));
    let code = field("error").and_then(|e| e.as_str()).unwrap_or("unknown").to_owned();
    let detail = match &json {
        Some(_) => field("detail").and_then(|e| e.as_str()).unwrap_or("").to_owned(),
        None => String::from_utf8_lossy(&resp.body).into_owned(),
    };
    let current_epoch = field("current_epoch").and_then(serde_json::Value::as_u64);
    let retry_after = resp
        .headers
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    ClientError::Api {
        status: resp.status.as_u16(),
        code,
        detail,
        retry_after,
        current_epoch,
    }
}
