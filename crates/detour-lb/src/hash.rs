//! Stable hashing: the same value on every host, every run and every Rust
//! release, so that several proxies in front of the same backends agree on
//! where a key goes (the standard library's `RandomState` is seeded per process
//! and `DefaultHasher` may change between releases).
//!
//! FNV-1a (Fowler, Noll, Vo; <http://www.isthe.com/chongo/tech/comp/fnv/>)
//! folds the bytes in, and the SplitMix64 finalizer (Steele, Lea, Flood,
//! "Fast splittable pseudorandom number generators", OOPSLA 2014) spreads the
//! result so that nearby inputs land far apart on a ring or a table. It is not
//! a keyed hash: a client can aim its own requests at one backend, which it
//! could do anyway by sending the same key.

use std::net::SocketAddr;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The SplitMix64 finalizer: a bijection on `u64` with full avalanche.
#[inline]
pub(crate) fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A streaming stable hasher (FNV-1a, then [`mix64`] in `finish`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StableHasher(u64);

impl StableHasher {
    /// A hasher in its initial state, with `domain` folded in first so that
    /// different uses of the same bytes hash apart.
    #[inline]
    pub(crate) fn new(domain: u8) -> Self {
        let mut h = StableHasher(FNV_OFFSET);
        h.write_u8(domain);
        h
    }

    #[inline]
    pub(crate) fn write_u8(&mut self, b: u8) {
        self.0 = (self.0 ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    }

    #[inline]
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u8(b);
        }
    }

    #[inline]
    pub(crate) fn write_u32(&mut self, v: u32) {
        self.write(&v.to_le_bytes());
    }

    #[inline]
    pub(crate) fn finish(self) -> u64 {
        mix64(self.0)
    }
}

/// Fold an address in a canonical form: the IP's octets, then the port.
pub(crate) fn write_addr(h: &mut StableHasher, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            h.write_u8(4);
            h.write(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            h.write_u8(6);
            h.write(&a.ip().octets());
        }
    }
    h.write(&addr.port().to_be_bytes());
}

/// Hash `bytes` with the stable hasher (the hash a [`HashKey`] produces for
/// the same bytes). Useful to compute a selection key yourself.
///
/// [`HashKey`]: crate::HashKey
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = StableHasher::new(DOMAIN_KEY);
    h.write(bytes);
    h.finish()
}

/// Domain tags keep the hashes of different uses apart.
pub(crate) const DOMAIN_KEY: u8 = 1;
pub(crate) const DOMAIN_RING: u8 = 2;
pub(crate) const DOMAIN_MAGLEV_OFFSET: u8 = 3;
pub(crate) const DOMAIN_MAGLEV_SKIP: u8 = 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_stable_across_releases() {
        // Pinned values: a change here moves every consistent-hash key in
        // production, so it must be deliberate.
        assert_eq!(hash_bytes(b""), 0xaa10_93e3_c79a_b7f9);
        assert_eq!(hash_bytes(b"user-42"), hash_bytes(b"user-42"));
        assert_ne!(hash_bytes(b"user-42"), hash_bytes(b"user-43"));
    }
}
