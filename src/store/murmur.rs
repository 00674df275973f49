//! MurmurHash3 x64-128 over a byte slice (Austin Appleby's public-domain
//! algorithm, the hash VDO signs blocks with).
//!
//! The `murmur3` crate computes the same function through a `Read`
//! adapter, which made it 16 % of the write path's CPU in a profile
//! (BENCHMARKS.md); this version works on the slice directly. Tests check it
//! against the crate bit for bit.

#[inline(always)]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

/// MurmurHash3 x64-128 of `data` with `seed`, as `(h2 << 64) | h1` (the
/// same packing as the `murmur3` crate's `u128`).
pub fn x64_128(data: &[u8], seed: u32) -> u128 {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    let len = data.len();
    let mut h1 = seed as u64;
    let mut h2 = seed as u64;
    let mut blocks = data.chunks_exact(16);
    for b in &mut blocks {
        let mut k1 = u64::from_le_bytes(b[0..8].try_into().expect("8 bytes"));
        let mut k2 = u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"));
        k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 ^= k1;
        h1 = h1.rotate_left(27).wrapping_add(h2).wrapping_mul(5).wrapping_add(0x52dc_e729);
        k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 ^= k2;
        h2 = h2.rotate_left(31).wrapping_add(h1).wrapping_mul(5).wrapping_add(0x3849_5ab5);
    }
    let tail = blocks.remainder();
    let mut k1 = 0u64;
    let mut k2 = 0u64;
    for (i, &byte) in tail.iter().enumerate() {
        if i < 8 {
            k1 |= (byte as u64) << (8 * i);
        } else {
            k2 |= (byte as u64) << (8 * (i - 8));
        }
    }
    if tail.len() > 8 {
        k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
        h2 ^= k2;
    }
    if !tail.is_empty() {
        k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
        h1 ^= k1;
    }
    h1 ^= len as u64;
    h2 ^= len as u64;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix64(h1);
    h2 = fmix64(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    ((h2 as u128) << 64) | h1 as u128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_murmur3_crate_for_every_tail_length_and_blocks() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in (0..64).chain([4095, 4096, 4097, 10_000]) {
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            for seed in [0u32, 1, 0x62ea_60be] {
                let want = murmur3::murmur3_x64_128(&mut std::io::Cursor::new(&data), seed).unwrap();
                assert_eq!(x64_128(&data, seed), want, "len {len} seed {seed:#x}");
            }
        }
    }

    #[test]
    fn golden_value_of_the_empty_input_and_a_known_string() {
        // Reference values of MurmurHash3_x64_128 (smhasher), seed 0.
        assert_eq!(x64_128(b"", 0), 0);
        assert_eq!(x64_128(b"hello", 0) as u64, 0xcbd8_a7b3_41bd_9b02);
    }
}
