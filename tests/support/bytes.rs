//! Deterministic test data shared by the integration tests (each test file
//! includes it with `#[path = "support/bytes.rs"] mod bytes;`).
#![allow(dead_code)] // each test crate uses what it needs

/// `len` bytes of xorshift64 from state `x` (the low byte of each step):
/// deterministic, incompressible, never deduplicating.
pub fn xorshift_bytes(len: usize, mut x: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// [`xorshift_bytes`] seeded the usual way: `seed` × the golden ratio, odd.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    xorshift_bytes(len, seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
}
