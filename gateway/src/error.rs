//! API errors become responses here, in one place, for every transport: every domain error
//! a handler can meet has a `From` impl below, so handlers use `?` and never map inline.

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use relay_core::ErrorCode;
use relay_core::envelope::EnvelopeError;
use relay_core::provisioning::ProvisioningError;
use relay_core::recipients::RecipientError;
use storage::{KeyPackageError, RegisterError, SendError, StoreError};

use crate::mls::KeyPackageRejection;

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

    /// `429` with `Retry-After` rounded up to whole seconds.
    pub fn rate_limited(detail: &'static str, wait: std::time::Duration) -> Self {
        Self::limited(ErrorCode::RateLimited, detail, wait)
    }

    /// A `429` of one of the named limits, with `Retry-After` rounded up to whole seconds
    /// (at least 1).
    pub fn limited(code: ErrorCode, detail: &'static str, wait: std::time::Duration) -> Self {
        static LOGGED: relay_net::throttle::Throttle = relay_net::throttle::Throttle::per_minute();
        if LOGGED.due(code.as_str()) {
            tracing::info!(
                code = code.as_str(),
                "a request was refused with 429 ({detail}); more of the same are counted in relay_http_requests_total with status 429, not logged, for a minute (README \"Limits\")"
            );
        }
        let mut e = Self::new(code, detail);
        e.retry_after_secs = Some((wait.as_secs_f64().ceil() as u64).max(1));
        e
    }

    /// `503` for a call the operator switched off (a kill switch), with `Retry-After`.
    pub fn switched_off(code: ErrorCode, detail: &'static str) -> Self {
        let mut e = Self::new(code, detail);
        e.retry_after_secs = Some(SWITCHED_OFF_RETRY_SECS);
        e
    }

    /// Prefixes the detail with which item of a list it is about (`"KeyPackage 3: …"`).
    #[must_use]
    pub fn about(mut self, item: impl std::fmt::Display) -> Self {
        self.detail = format!("{item}: {}", self.detail).into();
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

/// `Retry-After` of a 503 while storage is unavailable: a failover takes seconds.
const STORAGE_RETRY_SECS: u64 = 1;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Closed => Self::new(ErrorCode::Unavailable, "shutting down"),
            // The database is away (a failover, an outage) or a conflict outlasted the
            // retries: nothing was stored, or (a commit in flight) the client's retry with
            // the same client message id is answered from the first attempt.
            StoreError::Unavailable(_) | StoreError::Conflict(_) => {
                metrics::counter!("relay_storage_unavailable_total").increment(1);
                let mut e = Self::new(ErrorCode::Unavailable, "storage is unavailable; retry");
                e.retry_after_secs = Some(STORAGE_RETRY_SECS);
                e
            }
            other => Self::internal(&other),
        }
    }
}

impl From<RegisterError> for ApiError {
    fn from(e: RegisterError) -> Self {
        match e {
            RegisterError::TooManyDevices(n) => Self::new(
                ErrorCode::TooManyDevices,
                format!("this address already has {n} devices"),
            ),
            RegisterError::TokenUsed => {
                Self::new(ErrorCode::ProvisioningTokenUsed, "provisioning token was already used")
            }
            RegisterError::LookupCollision => Self::internal(&"credential lookup collision"),
            RegisterError::Store(e) => e.into(),
        }
    }
}

impl From<SendError> for ApiError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::UnknownRecipient { index } => Self::new(
                ErrorCode::UnknownRecipient,
                format!("recipient {index} has no registered device"),
            ),
            SendError::UnknownDevice { index } => Self::new(
                ErrorCode::UnknownDevice,
                format!("recipient {index} names an unknown device"),
            ),
            SendError::ClientMessageIdConflict => Self::new(
                ErrorCode::ClientMessageIdConflict,
                "client_message_id was used for a different message",
            ),
            SendError::WrongEpoch { epoch, current } => Self::new(
                ErrorCode::WrongEpoch,
                format!("message is for epoch {epoch}; the group is at epoch {current}"),
            )
            .with_current_epoch(current),
            SendError::EpochTooOld { epoch, current } => Self::new(
                ErrorCode::EpochTooOld,
                format!("application message is for epoch {epoch}; the group is at epoch {current}"),
            )
            .with_current_epoch(current),
            SendError::UnknownGroup => Self::new(
                ErrorCode::UnknownGroup,
                "the group is unknown: its first commit must be for epoch 0",
            ),
            SendError::Store(e) => e.into(),
        }
    }
}

impl From<KeyPackageError> for ApiError {
    fn from(e: KeyPackageError) -> Self {
        match e {
            KeyPackageError::Duplicate { index } => Self::new(
                ErrorCode::DuplicateKeyPackage,
                format!("KeyPackage {index} was uploaded before"),
            ),
            KeyPackageError::TooMany { max } => Self::new(
                ErrorCode::TooManyKeyPackages,
                format!("a device holds at most {max} KeyPackages"),
            ),
            KeyPackageError::Store(e) => e.into(),
        }
    }
}

impl From<KeyPackageRejection> for ApiError {
    fn from(e: KeyPackageRejection) -> Self {
        let code = match e {
            KeyPackageRejection::Malformed | KeyPackageRejection::Invalid(_) => ErrorCode::InvalidKeyPackage,
            KeyPackageRejection::Ciphersuite(_) => ErrorCode::UnsupportedCiphersuite,
            KeyPackageRejection::Lifetime => ErrorCode::KeyPackageExpired,
            KeyPackageRejection::Identity => ErrorCode::IdentityMismatch,
        };
        Self::new(code, e.to_string())
    }
}

/// The same codes for every endpoint that takes an MLS message.
impl From<EnvelopeError> for ApiError {
    fn from(e: EnvelopeError) -> Self {
        let code = match e {
            EnvelopeError::TooLarge { .. } => ErrorCode::EnvelopeTooLarge,
            _ => ErrorCode::InvalidMls,
        };
        Self::new(code, e.to_string())
    }
}

impl From<ProvisioningError> for ApiError {
    fn from(e: ProvisioningError) -> Self {
        let code = match e {
            ProvisioningError::Expired => ErrorCode::ProvisioningTokenExpired,
            ProvisioningError::KeyNotAccepted => ErrorCode::ProvisioningKeyRevoked,
            _ => ErrorCode::InvalidProvisioningToken,
        };
        Self::new(code, e.to_string())
    }
}

impl From<RecipientError> for ApiError {
    fn from(e: RecipientError) -> Self {
        let code = match e {
            RecipientError::Invalid { .. } => ErrorCode::InvalidAddress,
            RecipientError::Duplicate { .. } => ErrorCode::DuplicateRecipient,
        };
        Self::new(code, e.to_string())
    }
}

impl From<interconnect::ResidencyRefusal> for ApiError {
    fn from(e: interconnect::ResidencyRefusal) -> Self {
        Self::new(ErrorCode::ResidencyPolicy, e.to_string())
    }
}

/// The cause is logged (it names the peer's failure); the client learns only which peer.
impl From<interconnect::ClaimError> for ApiError {
    fn from(e: interconnect::ClaimError) -> Self {
        tracing::warn!(cause = %e, "remote KeyPackage claim failed");
        let peer = match &e {
            interconnect::ClaimError::UnknownPeer(p)
            | interconnect::ClaimError::Exchange { peer: p, .. }
            | interconnect::ClaimError::Status { peer: p, .. }
            | interconnect::ClaimError::Body { peer: p, .. } => p.clone(),
        };
        Self::new(
            ErrorCode::PeerUnavailable,
            format!("peer {peer} did not answer the claim"),
        )
    }
}

/// What a client is told to wait when a call is switched off: the operator decides when it
/// comes back, so a minute, not a back-off schedule.
const SWITCHED_OFF_RETRY_SECS: u64 = 60;
