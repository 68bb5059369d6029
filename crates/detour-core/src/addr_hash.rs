//! A cheap hash for maps keyed by backend address.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;

/// A `HashMap` keyed by backend address, hashed with [`AddrHash`].
pub type AddrMap<V> = HashMap<SocketAddr, V, AddrHash>;

/// A multiply-rotate hash for maps whose keys are backend addresses, looked
/// up on every request (connection pools, breakers, outlier slots).
///
/// SipHash, the standard library's default, defends against keys chosen to
/// collide; these keys come from configuration or discovery, never from
/// clients, so that defence buys nothing and costs a few hundred instructions
/// a lookup.
///
/// ```
/// use detour_core::AddrMap;
///
/// let mut m: AddrMap<u32> = AddrMap::default();
/// m.insert("127.0.0.1:8080".parse().unwrap(), 1);
/// assert_eq!(m.get(&"127.0.0.1:8080".parse().unwrap()), Some(&1));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct AddrHash;

impl BuildHasher for AddrHash {
    type Hasher = AddrHasher;
    fn build_hasher(&self) -> AddrHasher {
        AddrHasher(0)
    }
}

/// The hasher [`AddrHash`] builds.
#[derive(Debug)]
pub struct AddrHasher(u64);

impl AddrHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

impl Hasher for AddrHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(w));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }
    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }
    fn finish(&self) -> u64 {
        // A product's low bits depend only on the factors' low bits, and hash
        // tables index by the low bits: fold the well-mixed high half down.
        self.0 ^ (self.0 >> 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_addresses_spread() {
        // Neighbouring ports and addresses must not pile into a few buckets.
        let mut low_bits = std::collections::HashSet::new();
        for ip in 1..=16u8 {
            for port in 8000..8016u16 {
                let a = SocketAddr::from(([10, 0, 0, ip], port));
                low_bits.insert(AddrHash.hash_one(a) & 0xff);
            }
        }
        assert!(
            low_bits.len() > 150,
            "{} of 256 buckets used",
            low_bits.len()
        );
    }
}
