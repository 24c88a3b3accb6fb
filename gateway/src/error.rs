//! API errors become responses here, in one place, for every transport.

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use relay_core::ErrorCode;

/// An error answer: machine code, a short human detail, optional `Retry-After`.
#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub detail: Cow<'static, str>,
    pub retry_after_secs: Option<u64>,
    /// For `wrong_epoch` and `epoch_too_old`: the group's current epoch (MIMI's wrongEpoch).
    pub current_epoch: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, detail: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            detail: detail.into(),
            retry_after_secs: None,
            current_epoch: None,
        }
    }

    #[must_use]
    pub fn with_current_epoch(mut self, epoch: u64) -> Self {
        self.current_epoch = Some(epoch);
        self
    }

    /// A server-side failure: the cause is logged once, the client sees a generic message.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(cause = %cause, "request failed");
        Self::new(ErrorCode::Internal, "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = serde_json::json!({ "error": self.code.as_str(), "detail": self.detail });
        if let Some(epoch) = self.current_epoch {
            body["current_epoch"] = serde_json::Value::from(epoch);
        }
        let mut resp = (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if self.code == ErrorCode::Unauthorized {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<storage::StoreError> for ApiError {
    fn from(e: storage::StoreError) -> Self {
        match e {
            storage::StoreError::Closed => Self::new(ErrorCode::Unavailable, "shutting down"),
            other => Self::internal(&other),
        }
    }
}
