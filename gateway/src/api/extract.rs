//! What every handler does first: authenticate the bearer credential, read a bounded body
//! of the right media type, and answer in protobuf.

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use governor::clock::{Clock as _, DefaultClock};
use http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt as _;
use prost::Message;
use relay_core::credential::DeviceCredential;
use relay_core::wire::PROTOBUF;
use relay_core::{DeviceId, ErrorCode, Rid};
use storage::prelude::*;

use super::AppState;
use crate::error::ApiError;

/// Largest body of the small requests (register, ack, claims, push handles).
pub(super) const SMALL_BODY_LIMIT: usize = 64 * 1024;

/// An authenticated device.
#[derive(Debug, Clone, Copy)]
pub(super) struct Device {
    pub(super) rid: Rid,
    pub(super) id: DeviceId,
}

impl Device {
    pub(super) fn key(self) -> (Rid, DeviceId) {
        (self.rid, self.id)
    }
}

/// Checks the bearer credential, then the device's rate limit. Every failure of the
/// credential is the same 401, so a client learns nothing about which part was wrong.
pub(super) async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Device, ApiError> {
    let unauthorized = || ApiError::new(ErrorCode::Unauthorized, "missing or invalid credential");
    let value = headers.get(header::AUTHORIZATION).ok_or_else(unauthorized)?;
    let value = value.to_str().map_err(|_| unauthorized())?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(unauthorized)?;
    let cred = DeviceCredential::parse(token.trim()).map_err(|_| unauthorized())?;
    // What credential guessing costs us; a source past its failed authentications never
    // gets here (`guard_source`).
    metrics::counter!("relay_credential_lookups_total").increment(1);
    state.inner.lookups.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let auth = state
        .inner
        .store
        .device_by_lookup(cred.lookup())
        .await?
        .ok_or_else(unauthorized)?;
    if !cred.verify(&auth.credential_hash) {
        return Err(unauthorized());
    }
    let device = Device {
        rid: auth.rid,
        id: auth.device,
    };
    if let Err(not_until) = state.inner.limiter.check_key(&device.key()) {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        return Err(ApiError::rate_limited("too many requests for this credential", wait));
    }
    // Where several nodes share a database, the same limit across all of them.
    let mut key = Vec::with_capacity(37);
    key.push(b'c');
    key.extend_from_slice(&device.rid.0);
    key.extend_from_slice(&device.id.0.to_be_bytes());
    let (period, burst) = state.inner.credential_rate;
    if let Some(wait) = state.inner.store.shared_rate(&key, period, burst).await? {
        return Err(ApiError::rate_limited("too many requests for this credential", wait));
    }
    Ok(device)
}

/// Reads a protobuf body: media type, encoding, declared and actual size, read timeout.
pub(super) async fn read_proto<M: Message + Default>(
    state: &AppState,
    req: Request,
    limit: usize,
) -> Result<M, ApiError> {
    let bytes = read_body(state, req, limit, &[PROTOBUF, "application/protobuf"]).await?;
    M::decode(bytes).map_err(|_| ApiError::new(ErrorCode::InvalidBody, "body is not a valid protobuf message"))
}

/// Reads a body of one of the `media` types, checking encoding, size and read time.
pub(super) async fn read_body(state: &AppState, req: Request, limit: usize, media: &[&str]) -> Result<Bytes, ApiError> {
    let headers = req.headers();
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    if !given.as_deref().is_some_and(|g| media.contains(&g)) {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("body must be {}", media[0]),
        ));
    }
    if let Some(enc) = headers.get(header::CONTENT_ENCODING)
        && !enc.as_bytes().eq_ignore_ascii_case(b"identity")
    {
        return Err(ApiError::new(
            ErrorCode::UnsupportedContentEncoding,
            "ciphertext does not compress; send it uncompressed",
        ));
    }
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(body_too_large(limit));
    }
    let body = http_body_util::Limited::new(req.into_body(), limit);
    match tokio::time::timeout(state.inner.timeouts.body_read, body.collect()).await {
        Err(_) => Err(ApiError::new(
            ErrorCode::Timeout,
            "request body was not received in time",
        )),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(body_too_large(limit)),
        Ok(Err(_)) => Err(ApiError::new(ErrorCode::InvalidBody, "request body could not be read")),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

fn body_too_large(limit: usize) -> ApiError {
    ApiError::new(ErrorCode::BodyTooLarge, format!("request body exceeds {limit} bytes"))
}

pub(super) fn proto_response(status: StatusCode, m: &impl Message) -> Response {
    (status, [(header::CONTENT_TYPE, PROTOBUF)], m.encode_to_vec()).into_response()
}
