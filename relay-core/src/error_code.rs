//! Machine-readable error codes of the client API (`{"error": "<code>", ...}`).
//!
//! The code names the problem in the request; the HTTP status is derived from it in one
//! place ([`ErrorCode::status`]) so both transports answer identically.

/// Every error the client API can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidBody,
    InvalidMls,
    EnvelopeTooLarge,
    BodyTooLarge,
    NoRecipients,
    TooManyRecipients,
    DuplicateRecipient,
    InvalidAddress,
    UnknownRecipient,
    UnknownDevice,
    InvalidClientMessageId,
    ClientMessageIdConflict,
    InvalidServerId,
    Unauthorized,
    InvalidProvisioningToken,
    ProvisioningTokenExpired,
    ProvisioningTokenUsed,
    TooManyDevices,
    UnsupportedMediaType,
    UnsupportedContentEncoding,
    InvalidCursor,
    InvalidLimit,
    InvalidWait,
    RateLimited,
    NotFound,
    MethodNotAllowed,
    Timeout,
    Unavailable,
    Internal,
    InvalidKeyPackage,
    UnsupportedCiphersuite,
    KeyPackageExpired,
    IdentityMismatch,
    DuplicateKeyPackage,
    TooManyKeyPackages,
    WrongEpoch,
    EpochTooOld,
    UnknownGroup,
    UnknownKeyPackage,
    UnexpectedMessageType,
    InvalidRecipients,
    InvalidPushHandle,
    ResidencyPolicy,
    PeerUnavailable,
    /// One sender → one recipient, messages (DESIGN §5: 60 burst at 1/s).
    SenderRecipientLimited,
    /// Bytes into one recipient, from everyone (DESIGN §5: 128 MiB burst at 2,000 B/s).
    RecipientInboundLimited,
    /// Failed authentications from this source address.
    TooManyFailedAuth,
    /// Registrations from this source address.
    RegistrationRateLimited,
    /// One sender's share of a recipient's queue (bytes within the envelope lifetime).
    SenderShareExceeded,
    /// The operator switched registration off (kill switch).
    RegistrationDisabled,
    /// The operator switched KeyPackage uploads off (kill switch).
    KeyPackageUploadDisabled,
    /// The operator suspended this address: it cannot register or send.
    AddressSuspended,
    /// The provisioning token was signed by a key that is retired or compromised.
    ProvisioningKeyRevoked,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidBody => "invalid_body",
            Self::InvalidMls => "invalid_mls",
            Self::EnvelopeTooLarge => "envelope_too_large",
            Self::BodyTooLarge => "body_too_large",
            Self::NoRecipients => "no_recipients",
            Self::TooManyRecipients => "too_many_recipients",
            Self::DuplicateRecipient => "duplicate_recipient",
            Self::InvalidAddress => "invalid_address",
            Self::UnknownRecipient => "unknown_recipient",
            Self::UnknownDevice => "unknown_device",
            Self::InvalidClientMessageId => "invalid_client_message_id",
            Self::ClientMessageIdConflict => "client_message_id_conflict",
            Self::InvalidServerId => "invalid_server_id",
            Self::Unauthorized => "unauthorized",
            Self::InvalidProvisioningToken => "invalid_provisioning_token",
            Self::ProvisioningTokenExpired => "provisioning_token_expired",
            Self::ProvisioningTokenUsed => "provisioning_token_used",
            Self::TooManyDevices => "too_many_devices",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::UnsupportedContentEncoding => "unsupported_content_encoding",
            Self::InvalidCursor => "invalid_cursor",
            Self::InvalidLimit => "invalid_limit",
            Self::InvalidWait => "invalid_wait",
            Self::RateLimited => "rate_limited",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::InvalidKeyPackage => "invalid_key_package",
            Self::UnsupportedCiphersuite => "unsupported_ciphersuite",
            Self::KeyPackageExpired => "key_package_expired",
            Self::IdentityMismatch => "identity_mismatch",
            Self::DuplicateKeyPackage => "duplicate_key_package",
            Self::TooManyKeyPackages => "too_many_key_packages",
            Self::WrongEpoch => "wrong_epoch",
            Self::EpochTooOld => "epoch_too_old",
            Self::UnknownGroup => "unknown_group",
            Self::UnknownKeyPackage => "unknown_key_package",
            Self::UnexpectedMessageType => "unexpected_message_type",
            Self::InvalidRecipients => "invalid_recipients",
            Self::InvalidPushHandle => "invalid_push_handle",
            Self::ResidencyPolicy => "residency_policy",
            Self::PeerUnavailable => "peer_unavailable",
            Self::SenderRecipientLimited => "sender_recipient_limited",
            Self::RecipientInboundLimited => "recipient_inbound_limited",
            Self::TooManyFailedAuth => "too_many_failed_auth",
            Self::RegistrationRateLimited => "registration_rate_limited",
            Self::SenderShareExceeded => "sender_share_exceeded",
            Self::RegistrationDisabled => "registration_disabled",
            Self::KeyPackageUploadDisabled => "key_package_upload_disabled",
            Self::AddressSuspended => "address_suspended",
            Self::ProvisioningKeyRevoked => "provisioning_key_revoked",
        }
    }

    /// The HTTP status code that goes with the error.
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidBody
            | Self::InvalidMls
            | Self::NoRecipients
            | Self::DuplicateRecipient
            | Self::InvalidAddress
            | Self::InvalidClientMessageId
            | Self::InvalidServerId
            | Self::InvalidCursor
            | Self::InvalidLimit
            | Self::InvalidWait => 400,
            Self::Unauthorized
            | Self::InvalidProvisioningToken
            | Self::ProvisioningTokenExpired
            | Self::ProvisioningKeyRevoked => 401,
            Self::TooManyDevices => 403,
            Self::UnknownRecipient | Self::UnknownDevice | Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::Timeout => 408,
            Self::ClientMessageIdConflict | Self::ProvisioningTokenUsed => 409,
            Self::EnvelopeTooLarge | Self::BodyTooLarge | Self::TooManyRecipients => 413,
            Self::UnsupportedMediaType | Self::UnsupportedContentEncoding => 415,
            Self::RateLimited
            | Self::SenderRecipientLimited
            | Self::RecipientInboundLimited
            | Self::TooManyFailedAuth
            | Self::RegistrationRateLimited
            | Self::SenderShareExceeded => 429,
            Self::Internal => 500,
            Self::InvalidKeyPackage => 400,
            Self::UnsupportedCiphersuite => 400,
            Self::KeyPackageExpired => 400,
            Self::IdentityMismatch => 403,
            Self::DuplicateKeyPackage => 409,
            Self::TooManyKeyPackages => 413,
            Self::WrongEpoch => 409,
            Self::EpochTooOld => 409,
            Self::UnknownGroup => 404,
            Self::UnknownKeyPackage => 404,
            Self::UnexpectedMessageType => 400,
            Self::InvalidRecipients | Self::InvalidPushHandle => 400,
            Self::Unavailable | Self::RegistrationDisabled | Self::KeyPackageUploadDisabled => 503,
            Self::AddressSuspended => 403,
            Self::ResidencyPolicy => 451,
            Self::PeerUnavailable => 502,
        }
    }

    /// Parses a code received from a server (client side).
    pub fn parse(s: &str) -> Option<Self> {
        ALL.iter().copied().find(|c| c.as_str() == s)
    }
}

const ALL: [ErrorCode; 53] = [
    ErrorCode::InvalidBody,
    ErrorCode::InvalidMls,
    ErrorCode::EnvelopeTooLarge,
    ErrorCode::BodyTooLarge,
    ErrorCode::NoRecipients,
    ErrorCode::TooManyRecipients,
    ErrorCode::DuplicateRecipient,
    ErrorCode::InvalidAddress,
    ErrorCode::UnknownRecipient,
    ErrorCode::UnknownDevice,
    ErrorCode::InvalidClientMessageId,
    ErrorCode::ClientMessageIdConflict,
    ErrorCode::InvalidServerId,
    ErrorCode::Unauthorized,
    ErrorCode::InvalidProvisioningToken,
    ErrorCode::ProvisioningTokenExpired,
    ErrorCode::ProvisioningTokenUsed,
    ErrorCode::TooManyDevices,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::UnsupportedContentEncoding,
    ErrorCode::InvalidCursor,
    ErrorCode::InvalidLimit,
    ErrorCode::InvalidWait,
    ErrorCode::RateLimited,
    ErrorCode::NotFound,
    ErrorCode::MethodNotAllowed,
    ErrorCode::Timeout,
    ErrorCode::Unavailable,
    ErrorCode::Internal,
    ErrorCode::InvalidKeyPackage,
    ErrorCode::UnsupportedCiphersuite,
    ErrorCode::KeyPackageExpired,
    ErrorCode::IdentityMismatch,
    ErrorCode::DuplicateKeyPackage,
    ErrorCode::TooManyKeyPackages,
    ErrorCode::WrongEpoch,
    ErrorCode::EpochTooOld,
    ErrorCode::UnknownGroup,
    ErrorCode::UnknownKeyPackage,
    ErrorCode::UnexpectedMessageType,
    ErrorCode::InvalidRecipients,
    ErrorCode::InvalidPushHandle,
    ErrorCode::ResidencyPolicy,
    ErrorCode::PeerUnavailable,
    ErrorCode::SenderRecipientLimited,
    ErrorCode::RecipientInboundLimited,
    ErrorCode::TooManyFailedAuth,
    ErrorCode::RegistrationRateLimited,
    ErrorCode::SenderShareExceeded,
    ErrorCode::RegistrationDisabled,
    ErrorCode::KeyPackageUploadDisabled,
    ErrorCode::AddressSuspended,
    ErrorCode::ProvisioningKeyRevoked,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in ALL {
            assert!(seen.insert(c.as_str()));
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
            assert!((400..600).contains(&c.status()));
        }
    }
}
