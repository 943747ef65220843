//! Unguessable connection ids and tokens, without hidden randomness.
//!
//! The host passes a random 32-byte seed in once; each id is HMAC-SHA256(seed, counter), so
//! ids are unpredictable to anyone without the seed, and a simulation with a fixed seed is
//! reproducible.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Connection handles, never reused.
#[derive(Debug, Default)]
pub(crate) struct Handles(u64);

impl Handles {
    pub(crate) fn next(&mut self) -> super::ConnHandle {
        self.0 += 1;
        super::ConnHandle(self.0)
    }
}

#[derive(Debug)]
pub(crate) struct IdGenerator {
    seed: [u8; 32],
    counter: u64,
}

impl IdGenerator {
    pub(crate) fn new(seed: [u8; 32]) -> Self {
        Self { seed, counter: 0 }
    }

    /// A fresh (public id, secret token) pair: 16 bytes each, base64url (22 characters, safe
    /// in URLs unencoded, as the clients append them).
    pub(crate) fn next_pair(&mut self) -> (String, String) {
        self.counter += 1;
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.seed) else {
            unreachable!("HMAC takes keys of any length")
        };
        mac.update(&self.counter.to_be_bytes());
        let bytes = mac.finalize().into_bytes();
        let (id, token) = bytes.split_at(16);
        (URL_SAFE_NO_PAD.encode(id), URL_SAFE_NO_PAD.encode(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_url_safe_and_reproducible() {
        let mut a = IdGenerator::new([7; 32]);
        let mut b = IdGenerator::new([7; 32]);
        let mut c = IdGenerator::new([8; 32]);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let (id, token) = a.next_pair();
            assert_eq!(b.next_pair(), (id.clone(), token.clone()));
            assert_ne!(c.next_pair().0, id);
            assert_eq!(id.len(), 22);
            assert!(id
                .bytes()
                .chain(token.bytes())
                .all(|ch| ch.is_ascii_alphanumeric() || ch == b'-' || ch == b'_'));
            assert!(seen.insert(id));
            assert!(seen.insert(token));
        }
    }
}
