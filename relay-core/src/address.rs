//! `tel:` addresses in E.164 form.
//!
//! An [`Address`] can only be built by [`Address::parse`], which normalises visual
//! separators away (RFC 3966 section 5.1.1) and rejects anything that is not a global
//! number. The canonical form `tel:+<digits>` is what the recipient hash is computed
//! over, so two spellings of one number always land in the same mailbox.

use std::fmt;

/// A normalised `tel:+E.164` address. `Debug` never prints the number.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Address(String);

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address must start with \"tel:+\"")]
    NotTelUri,
    #[error("address has {0} digits; E.164 allows 7 to 15")]
    WrongLength(usize),
    #[error("E.164 numbers do not start with 0")]
    LeadingZero,
    #[error("address contains a character that is neither a digit nor a visual separator")]
    InvalidCharacter,
    #[error("address parameters (\";...\") are not accepted")]
    Parameters,
}

/// Longest input considered at all, so a hostile string is rejected before any work.
const MAX_INPUT_LEN: usize = 64;

impl Address {
    /// Parses and normalises `tel:+1 (555) 010-0001` into `tel:+15550100001`.
    pub fn parse(input: &str) -> Result<Self, AddressError> {
        if input.len() > MAX_INPUT_LEN {
            return Err(AddressError::WrongLength(input.len()));
        }
        let rest = match input.get(..4) {
            Some(scheme) if scheme.eq_ignore_ascii_case("tel:") => &input[4..],
            _ => return Err(AddressError::NotTelUri),
        };
        let Some(number) = rest.strip_prefix('+') else {
            return Err(AddressError::NotTelUri);
        };
        let mut canonical = String::with_capacity(5 + number.len());
        canonical.push_str("tel:+");
        let mut digits = 0usize;
        for c in number.chars() {
            match c {
                '0'..='9' => {
                    if digits == 0 && c == '0' {
                        return Err(AddressError::LeadingZero);
                    }
                    digits += 1;
                    canonical.push(c);
                }
                '-' | '.' | '(' | ')' | ' ' => {}
                ';' => return Err(AddressError::Parameters),
                _ => return Err(AddressError::InvalidCharacter),
            }
        }
        if !(7..=15).contains(&digits) {
            return Err(AddressError::WrongLength(digits));
        }
        Ok(Self(canonical))
    }

    /// The canonical `tel:+digits` form. Handle with care: this is personal data.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Address(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::needless_pass_by_value, reason = "data-driven test helper")]
    fn check(input: &str, expect: Result<&str, AddressError>) {
        let got = Address::parse(input);
        assert_eq!(
            got.as_ref().map(Address::as_str),
            expect.as_ref().map(|s| *s),
            "{input}"
        );
    }

    #[test]
    fn parses_and_normalises() {
        check("tel:+15550100001", Ok("tel:+15550100001"));
        check("TEL:+1 (555) 010-0001", Ok("tel:+15550100001"));
        check("tel:+44.20.7946.0000", Ok("tel:+442079460000"));
        check("tel:+123456789012345", Ok("tel:+123456789012345"));
    }

    #[test]
    fn rejects_malformed() {
        check("+15550100001", Err(AddressError::NotTelUri));
        check("tel:15550100001", Err(AddressError::NotTelUri));
        check("sip:+15550100001", Err(AddressError::NotTelUri));
        check("tel:+0155501", Err(AddressError::LeadingZero));
        check("tel:+123456", Err(AddressError::WrongLength(6)));
        check("tel:+1234567890123456", Err(AddressError::WrongLength(16)));
        check("tel:+1555010000a", Err(AddressError::InvalidCharacter));
        check("tel:+15550100001;ext=1", Err(AddressError::Parameters));
        check("tel:+", Err(AddressError::WrongLength(0)));
        check("té", Err(AddressError::NotTelUri));
    }

    #[test]
    fn debug_is_redacted() {
        let a = Address::parse("tel:+15550100001").unwrap();
        assert!(!format!("{a:?}").contains("555"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_canonical_is_fixed_point(s in "\\PC{0,40}") {
            if let Ok(a) = Address::parse(&s) {
                let again = Address::parse(a.as_str()).unwrap();
                proptest::prop_assert_eq!(again, a);
            }
        }
    }
}
