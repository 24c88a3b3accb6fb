//! `/v1/keypackages`: upload (validated with openmls), claim (exactly once per one-time
//! package; peers' subscribers through the interconnect), count.

use std::collections::HashMap;

use axum::extract::{Request, State};
use axum::response::Response;
use base64::Engine as _;
use bytes::Bytes;
use governor::clock::{Clock as _, DefaultClock};
use http::{HeaderMap, StatusCode};
use relay_core::recipients::{Duplicates, Recipient, resolve};
use relay_core::wire::v1;
use relay_core::{Address, ErrorCode, Rid};
use relay_net::clock::now_ms;
use storage::prelude::*;

use super::AppState;
use super::extract::{Device, SMALL_BODY_LIMIT, authenticate, proto_response, read_proto};
use crate::error::ApiError;

/// Largest KeyPackage upload body: 100 packages of a few KiB each.
const KEY_PACKAGE_BODY_LIMIT: usize = 1 << 20;

pub(super) async fn upload(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let device = authenticate(&state, req.headers()).await?;
    if state.inner.store.is_switched_off(storage::switch::KEYPACKAGE_UPLOAD) {
        return Err(ApiError::switched_off(
            ErrorCode::KeyPackageUploadDisabled,
            "KeyPackage uploads are switched off by the operator",
        ));
    }
    let body: v1::UploadKeyPackagesRequest = read_proto(&state, req, KEY_PACKAGE_BODY_LIMIT).await?;
    let mls = &state.inner.mls;
    if body.key_packages.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidKeyPackage,
            "no KeyPackage in the upload",
        ));
    }
    if body.key_packages.len() > mls.max_key_packages_per_upload {
        return Err(ApiError::new(
            ErrorCode::TooManyKeyPackages,
            format!(
                "{} KeyPackages, at most {} per upload",
                body.key_packages.len(),
                mls.max_key_packages_per_upload
            ),
        ));
    }
    let now = now_ms();
    let packages = body
        .key_packages
        .iter()
        .enumerate()
        .map(|(index, bytes)| {
            let mut kp = crate::mls::validate_key_package(bytes, &device.rid, state.rid_keys(), mls, now)
                .map_err(|e| ApiError::from(e).about(format_args!("KeyPackage {index}")))?;
            // Its credential names the address: sealed at rest (relay_core::atrest).
            kp.bytes = state.at_rest_for(&device.rid).seal_key_package(&device.rid, &kp.bytes);
            Ok::<_, ApiError>(kp)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let stored = state
        .inner
        .store
        .upload_key_packages(device.rid, device.id, packages, mls.max_key_packages_per_device, now)
        .await?;
    metrics::counter!("relay_key_packages_uploaded_total").increment(u64::from(stored));
    Ok(proto_response(
        StatusCode::CREATED,
        &v1::UploadKeyPackagesResponse { stored },
    ))
}

pub(super) async fn claim(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let device = authenticate(&state, req.headers()).await?;
    let body: v1::ClaimKeyPackagesRequest = read_proto(&state, req, SMALL_BODY_LIMIT).await?;
    metrics::counter!("relay_key_package_claims_total").increment(1);
    if body.addresses.is_empty() || body.addresses.len() > state.inner.limits.max_recipients {
        return Err(ApiError::new(
            ErrorCode::InvalidRecipients,
            format!("claim 1..={} addresses", state.inner.limits.max_recipients),
        ));
    }
    let targets = resolve(
        &state.inner.rid_key,
        body.addresses.iter().map(String::as_str),
        Duplicates::Refuse,
    )?;
    // Rate limit per (requester, target), checked for all before any package is handed out.
    for t in &targets {
        if let Err(not_until) = state.inner.claim_limiter.check_key(&(device.rid, t.rid)) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(ApiError::rate_limited(
                "too many KeyPackage claims for this address",
                wait,
            ));
        }
    }
    // The same limits across the nodes sharing a database.
    let (period, burst) = state.inner.claim_rate;
    for t in &targets {
        let mut key = Vec::with_capacity(65);
        key.push(b'k');
        key.extend_from_slice(&device.rid.0);
        key.extend_from_slice(&t.rid.0);
        if let Some(wait) = state.inner.store.shared_rate(&key, period, burst).await? {
            return Err(ApiError::rate_limited(
                "too many KeyPackage claims for this address",
                wait,
            ));
        }
    }
    // During a K_rid rotation the targets' records move to their new rids first.
    state.rekey(targets.iter().map(|t| t.address.clone()).collect()).await?;
    let (local, mut key_packages) = claim_remote(&state, device, &body.requester, targets).await?;
    let by_rid: HashMap<Rid, String> = local.iter().map(|t| (t.rid, t.address.as_str().to_owned())).collect();
    let claimed = if local.is_empty() {
        Vec::new()
    } else {
        let rids = local.iter().map(|t| t.rid).collect();
        state.inner.store.claim_key_packages(rids, now_ms()).await?
    };
    metrics::counter!("relay_key_packages_claimed_total").increment(claimed.len() as u64);
    key_packages.splice(
        0..0,
        claimed.into_iter().map(|c| v1::ClaimedKeyPackage {
            address: by_rid.get(&c.rid).cloned().unwrap_or_default(),
            device_id: c.device.0,
            key_package: state.at_rest().open_key_package(&c.rid, &c.bytes).unwrap_or_default(),
            last_resort: c.last_resort,
        }),
    );
    Ok(proto_response(
        StatusCode::OK,
        &v1::ClaimKeyPackagesResponse { key_packages },
    ))
}

/// Claims the targets served by peer carriers through the interconnect; returns the local
/// targets and what the peers handed out.
async fn claim_remote(
    state: &AppState,
    device: Device,
    requester: &str,
    targets: Vec<Recipient>,
) -> Result<(Vec<Recipient>, Vec<v1::ClaimedKeyPackage>), ApiError> {
    let Some(ic) = state.interconnect() else {
        return Ok((targets, Vec::new()));
    };
    let addresses: Vec<Address> = targets.iter().map(|t| t.address.clone()).collect();
    let plan = ic.route(&addresses).await?;
    if plan.is_local_only() {
        return Ok((targets, Vec::new()));
    }
    // The peer's request names the requester; the client says who it is, and the gateway
    // checks that against the credential.
    let requester = Address::parse(requester)
        .ok()
        .filter(|a| state.rid_keys().is_rid_of(a, &device.rid))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidAddress,
                "claiming from a peer carrier needs `requester`: your own address",
            )
        })?;
    let remote = ic.claim_remote(&plan, &requester).await?;
    let local = plan.local.iter().map(|&i| targets[i].clone()).collect();
    let claimed = remote
        .into_iter()
        .filter_map(|r| {
            let kp = base64::engine::general_purpose::STANDARD.decode(&r.key_package).ok()?;
            Some(v1::ClaimedKeyPackage {
                address: r.address,
                device_id: r.device_id,
                key_package: Bytes::from(kp),
                last_resort: r.last_resort,
            })
        })
        .collect();
    Ok((local, claimed))
}

pub(super) async fn count(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let device = authenticate(&state, &headers).await?;
    let count = state
        .inner
        .store
        .key_package_count(device.rid, device.id, now_ms())
        .await?;
    let resp = v1::KeyPackageCountResponse {
        one_time: count.one_time,
        last_resort: count.last_resort,
    };
    Ok(proto_response(StatusCode::OK, &resp))
}
