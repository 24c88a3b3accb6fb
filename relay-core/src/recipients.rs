//! A request's list of addresses → parsed, hashed and de-duplicated recipients.
//!
//! Every endpoint that names people (a send, a KeyPackage claim, a peer's notify and key
//! material request) does the same three steps; [`resolve`] is the one implementation, so
//! they agree on which index an error names and on what counts as "listed twice".

use crate::{Address, AddressError, Rid, RidKey};

/// One parsed, hashed recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub address: Address,
    pub rid: Rid,
}

/// Why a list of addresses was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipientError {
    #[error("recipient {index}: {source}")]
    Invalid {
        index: usize,
        #[source]
        source: AddressError,
    },
    #[error("recipient {index} is listed twice")]
    Duplicate { index: usize },
}

/// What to do with an address listed twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplicates {
    /// Refuse the list ([`RecipientError::Duplicate`]): clients list each person once.
    Refuse,
    /// Keep the first occurrence (a peer's list is merged, as before).
    Merge,
}

/// Parses each address, hashes it with `key` and de-duplicates by rid (two spellings of
/// one number are the same recipient).
pub fn resolve<'a>(
    key: &RidKey,
    addresses: impl IntoIterator<Item = &'a str>,
    duplicates: Duplicates,
) -> Result<Vec<Recipient>, RecipientError> {
    let addresses = addresses.into_iter();
    let mut out: Vec<Recipient> = Vec::with_capacity(addresses.size_hint().0);
    let mut seen = std::collections::HashSet::with_capacity(addresses.size_hint().0);
    for (index, a) in addresses.enumerate() {
        let address = Address::parse(a).map_err(|source| RecipientError::Invalid { index, source })?;
        let rid = key.rid(&address);
        if !seen.insert(rid) {
            match duplicates {
                Duplicates::Refuse => return Err(RecipientError::Duplicate { index }),
                Duplicates::Merge => continue,
            }
        }
        out.push(Recipient { address, rid });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(list: &[&str], duplicates: Duplicates, expect: &Result<usize, RecipientError>) {
        let key = RidKey::from_bytes([7; 32]);
        let got = resolve(&key, list.iter().copied(), duplicates).map(|r| r.len());
        assert_eq!(&got, expect, "{list:?}");
    }

    #[test]
    fn resolves_refuses_and_merges() {
        let a = "tel:+15550100001";
        let a_spaced = "tel:+1 555 010 0001";
        let b = "tel:+15550100002";
        check(&[a, b], Duplicates::Refuse, &Ok(2));
        check(
            &[a, b, a_spaced],
            Duplicates::Refuse,
            &Err(RecipientError::Duplicate { index: 2 }),
        );
        check(&[a, b, a_spaced], Duplicates::Merge, &Ok(2));
        check(
            &[a, "mailto:x"],
            Duplicates::Merge,
            &Err(RecipientError::Invalid {
                index: 1,
                source: AddressError::NotTelUri,
            }),
        );
        check(&[], Duplicates::Refuse, &Ok(0));
    }

    #[test]
    fn same_rid_as_the_key() {
        let key = RidKey::from_bytes([9; 32]);
        let r = resolve(&key, ["tel:+15550100001"], Duplicates::Refuse).unwrap();
        assert_eq!(r[0].rid, key.rid(&Address::parse("tel:+15550100001").unwrap()));
    }
}
