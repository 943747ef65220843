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
    /// Starts every id and token: a cluster node's id and a dot (`n1.`), else nothing.
    prefix: String,
}

impl IdGenerator {
    pub(crate) fn new(seed: [u8; 32]) -> Self {
        Self {
            seed,
            counter: 0,
            prefix: String::new(),
        }
    }

    /// Ids and tokens that name this cluster node: `node.…`.
    pub(crate) fn naming(mut self, node: &str) -> Self {
        self.prefix = format!("{node}.");
        self
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
        let p = &self.prefix;
        (
            format!("{p}{}", URL_SAFE_NO_PAD.encode(id)),
            format!("{p}{}", URL_SAFE_NO_PAD.encode(token)),
        )
    }

    /// HMAC-SHA256 of `parts` under the seed.
    pub(crate) fn tag(&self, parts: &[&[u8]]) -> [u8; 32] {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.seed) else {
            unreachable!("HMAC takes keys of any length")
        };
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// A fresh public id, and a classic connection token the relay can verify later, even once
    /// its connection is gone: the counter, a tag proving the relay issued it, and a tag
    /// binding it to the bearer token the client negotiated with (28 bytes, base64url).
    pub(crate) fn next_classic(&mut self, bearer: Option<[u8; 32]>) -> (String, String) {
        let (id, _) = self.next_pair();
        let n = self.counter.to_be_bytes();
        let mut token = Vec::with_capacity(CLASSIC_TOKEN_LEN);
        token.extend_from_slice(&n);
        token.extend_from_slice(&self.tag(&[b"classic", &n])[..12]);
        let bound = self.tag(&[b"bearer", &n, bearer.as_ref().map_or(&[][..], |b| &b[..])]);
        token.extend_from_slice(&bound[..8]);
        (
            id,
            format!("{}{}", self.prefix, URL_SAFE_NO_PAD.encode(token)),
        )
    }

    /// What a classic connection token is, for a request bearing `bearer`.
    pub(crate) fn check_classic(&self, token: &str, bearer: Option<[u8; 32]>) -> TokenCheck {
        let Some(token) = token.strip_prefix(self.prefix.as_str()) else {
            return TokenCheck::Forged;
        };
        let Ok(raw) = URL_SAFE_NO_PAD.decode(token) else {
            return TokenCheck::Forged;
        };
        if raw.len() != CLASSIC_TOKEN_LEN {
            return TokenCheck::Forged;
        }
        let (n, rest) = raw.split_at(8);
        let (issued, bound) = rest.split_at(12);
        if !constant_time_eq(issued, &self.tag(&[b"classic", n])[..12]) {
            return TokenCheck::Forged;
        }
        let expected = self.tag(&[b"bearer", n, bearer.as_ref().map_or(&[][..], |b| &b[..])]);
        if constant_time_eq(bound, &expected[..8]) {
            TokenCheck::Genuine
        } else {
            TokenCheck::AnotherBearer
        }
    }
}

const CLASSIC_TOKEN_LEN: usize = 8 + 12 + 8;

/// A classic connection token, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenCheck {
    /// Not one this relay issued (or not a token at all).
    Forged,
    /// Issued, for a client that bore another access token.
    AnotherBearer,
    /// Issued to this bearer.
    Genuine,
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_tokens_verify_and_bind_to_their_bearer() {
        let mut ids = IdGenerator::new([7; 32]);
        let alice = Some([1; 32]);
        let (_, token) = ids.next_classic(alice);
        assert_eq!(ids.check_classic(&token, alice), TokenCheck::Genuine);
        assert_eq!(
            ids.check_classic(&token, Some([2; 32])),
            TokenCheck::AnotherBearer
        );
        assert_eq!(ids.check_classic(&token, None), TokenCheck::AnotherBearer);
        let other_relay = IdGenerator::new([8; 32]);
        assert_eq!(other_relay.check_classic(&token, alice), TokenCheck::Forged);
        let mut flipped = URL_SAFE_NO_PAD.decode(&token).expect("base64url");
        flipped[9] ^= 1;
        let flipped = URL_SAFE_NO_PAD.encode(flipped);
        assert_eq!(ids.check_classic(&flipped, alice), TokenCheck::Forged);
        for junk in ["", "nope", "a:b", &token[..token.len() - 2]] {
            assert_eq!(ids.check_classic(junk, alice), TokenCheck::Forged, "{junk}");
        }
    }

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
