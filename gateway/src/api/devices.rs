//! `/v1/devices`: registration with an operator-signed provisioning token, self-deletion,
//! and the device's push handle.

use axum::extract::{Request, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use rand::RngCore as _;
use relay_core::credential::DeviceCredential;
use relay_core::wire::v1;
use relay_core::{Address, ErrorCode, provisioning};
use relay_net::clock::now_ms;
use storage::NewDevice;
use storage::prelude::*;

use super::AppState;
use super::extract::{SMALL_BODY_LIMIT, authenticate, proto_response, read_proto};
use crate::error::ApiError;

/// Longest push handle accepted (the push proxy's handles are far shorter).
const MAX_PUSH_HANDLE: usize = 2048;

pub(super) async fn register(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    if state.inner.store.is_switched_off(storage::switch::REGISTRATION) {
        return Err(ApiError::switched_off(
            ErrorCode::RegistrationDisabled,
            "registration is switched off by the operator",
        ));
    }
    let body: v1::RegisterRequest = read_proto(&state, req, SMALL_BODY_LIMIT).await?;
    let now = now_ms();
    let (address, nonce, expires_at, key) = if body.provisioning_token.is_empty() && state.inner.open_registration {
        let address =
            Address::parse(&body.address).map_err(|e| ApiError::new(ErrorCode::InvalidAddress, e.to_string()))?;
        let mut nonce = [0u8; 16];
        rand::rng().fill_bytes(&mut nonce);
        (address, nonce, now + 60_000, "open".to_owned())
    } else {
        let keys = state.provisioning_keys();
        let (claims, key) = provisioning::verify_with(&body.provisioning_token, &keys, now)?;
        (
            claims.address,
            claims.nonce,
            claims.expires_at_ms,
            relay_core::hex::encode(&key),
        )
    };
    let mut random = [0u8; 48];
    rand::rng().fill_bytes(&mut random);
    let credential = DeviceCredential::from_random(random);
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    state.rekey(vec![address.clone()]).await?;
    let rid = state.inner.rid_key.rid(&address);
    if state.inner.store.is_suspended(&rid) {
        return Err(ApiError::new(ErrorCode::AddressSuspended, "this address is suspended"));
    }
    let new = NewDevice {
        rid,
        credential_lookup: credential.lookup(),
        credential_hash: credential.hash(salt),
        provisioning_nonce: nonce,
        provisioning_expires_at_ms: expires_at,
        provisioning_key: key.clone(),
        max_devices: state.inner.limits.max_devices_per_address,
        now_ms: now,
    };
    let device = state.inner.store.register_device(new).await?;
    metrics::counter!("relay_devices_registered_total").increment(1);
    // Per provisioning key: a burst under one key is what a stolen key looks like.
    metrics::counter!("relay_registrations_total", "key" => key).increment(1);
    let resp = v1::RegisterResponse {
        device_id: device.0,
        credential: credential.encode(),
    };
    Ok(proto_response(StatusCode::CREATED, &resp))
}

/// Storage wakes the device's open long-polls, so they end at once.
pub(super) async fn delete_self(State(state): State<AppState>, headers: HeaderMap) -> Result<StatusCode, ApiError> {
    let device = authenticate(&state, &headers).await?;
    state.inner.store.delete_device(device.rid, device.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn set_push_handle(State(state): State<AppState>, req: Request) -> Result<StatusCode, ApiError> {
    let device = authenticate(&state, req.headers()).await?;
    let body: v1::SetPushHandleRequest = read_proto(&state, req, SMALL_BODY_LIMIT).await?;
    let h = &body.handle;
    let well_formed = h.len() <= MAX_PUSH_HANDLE
        && h.strip_prefix("ph1.")
            .is_some_and(|b| !b.is_empty() && b.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
    if !well_formed {
        return Err(ApiError::new(
            ErrorCode::InvalidPushHandle,
            "a push handle is \"ph1.\" and base64url, as returned by the push proxy",
        ));
    }
    state
        .inner
        .store
        .set_push_handle(device.rid, device.id, Some(body.handle))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn clear_push_handle(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let device = authenticate(&state, &headers).await?;
    state.inner.store.set_push_handle(device.rid, device.id, None).await?;
    Ok(StatusCode::NO_CONTENT)
}
