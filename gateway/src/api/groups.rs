//! `/v1/groups/{hex group id}/info`: the latest GroupInfo of a group, for external joins.

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse as _, Response};
use http::{HeaderMap, StatusCode, header};
use relay_core::{Envelope, ErrorCode};
use storage::prelude::*;

use super::AppState;
use super::extract::{authenticate, read_body};
use crate::error::ApiError;

/// Media type of a raw MLSMessage (RFC 9420 section 17.10).
const MESSAGE_MLS: &str = "message/mls";

fn group_id_from_path(hex: &str) -> Result<Vec<u8>, ApiError> {
    crate::mls::decode_group_id(hex)
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidBody, "the group id in the path must be non-empty hex"))
}

/// `PUT`: a member publishes the group's latest GroupInfo (an MLSMessage, `message/mls`).
/// The DS checks it is a GroupInfo for that group; joiners verify its signature themselves.
pub(super) async fn put_info(
    State(state): State<AppState>,
    Path(group): Path<String>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    authenticate(&state, req.headers()).await?;
    let group_id = group_id_from_path(&group)?;
    let limit = state.inner.limits.max_envelope_bytes;
    let body = read_body(&state, req, limit, &[MESSAGE_MLS]).await?;
    let envelope = Envelope::parse(body, &state.inner.limits)?;
    let Some(info_group) = envelope.group_info_group_id() else {
        return Err(ApiError::new(
            ErrorCode::UnexpectedMessageType,
            "the body must be a GroupInfo MLSMessage",
        ));
    };
    if info_group != group_id.as_slice() {
        return Err(ApiError::new(
            ErrorCode::InvalidMls,
            "the GroupInfo describes another group",
        ));
    }
    let key = crate::mls::group_key(&group_id);
    // With the ratchet tree it names every member: sealed at rest (relay_core::atrest).
    let sealed = state
        .at_rest()
        .seal_group_info(&group_id, &envelope.into_ciphertext().into_bytes());
    state.inner.store.set_group_info(key, sealed).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET`: the latest GroupInfo, `message/mls`.
pub(super) async fn get_info(
    State(state): State<AppState>,
    Path(group): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authenticate(&state, &headers).await?;
    let group_id = group_id_from_path(&group)?;
    match state.inner.store.group_info(crate::mls::group_key(&group_id)).await? {
        Some(stored) => {
            let bytes = state
                .at_rest()
                .open_group_info(&group_id, &stored)
                .or_else(|| state.previous_at_rest()?.open_group_info(&group_id, &stored))
                .ok_or_else(|| ApiError::internal(&"a stored GroupInfo does not open under this gateway's key"))?;
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, MESSAGE_MLS)], bytes).into_response())
        }
        None => Err(ApiError::new(
            ErrorCode::UnknownGroup,
            "no GroupInfo was published for this group",
        )),
    }
}
