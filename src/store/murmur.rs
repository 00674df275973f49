//! MurmurHash3 x64-128 over a byte slice (Austin Appleby's public-domain
//! algorithm, the hash VDO signs blocks with).
//!
//! The `murmur3` crate computes the same function through a `Read`
//! adapter, which made it 16 % of the write path's CPU in a profile
//! (BENCHMARKS.md); this version works on the slice directly. Tests check it
//! against the crate bit for bit.
//!
//! The body loop is one long dependency chain (h1 feeds h2 feeds h1), so
//! one message leaves most of a core's ALUs idle: [`x64_128_pair`] runs two
//! equal-length messages through it side by side (about 1.3× the
//! throughput per core, measured on 4 KiB blocks). Where the CPU has
//! AVX-512 (F and DQ: 64-bit lanes, 64-bit multiplies and rotates),
//! [`x64_128_lo_many`] runs eight messages in the eight lanes of one
//! register instead — 32 GB/s per core against 10 for the pair and 8 for
//! one message (4 KiB blocks, this machine's EPYC). The lanes read each
//! message's next 64 bytes as eight 64-bit words and transpose the 8×8
//! words, so lane j always holds message j.

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
    let body = data.len() & !15;
    let mut h = [seed as u64; 2];
    for blk in data[..body].chunks_exact(16) {
        let k1 = u64::from_le_bytes(blk[0..8].try_into().expect("8 bytes"));
        let k2 = u64::from_le_bytes(blk[8..16].try_into().expect("8 bytes"));
        round(&mut h, k1, k2);
    }
    finish(h, &data[body..], data.len())
}

/// [`x64_128`] of two messages of the same length, interleaved.
pub fn x64_128_pair(a: &[u8], b: &[u8], seed: u32) -> (u128, u128) {
    if a.len() != b.len() {
        return (x64_128(a, seed), x64_128(b, seed));
    }
    let body = a.len() & !15;
    let mut h = [[seed as u64; 2]; 2];
    for (ba, bb) in a[..body].chunks_exact(16).zip(b[..body].chunks_exact(16)) {
        for (h, blk) in h.iter_mut().zip([ba, bb]) {
            let k1 = u64::from_le_bytes(blk[0..8].try_into().expect("8 bytes"));
            let k2 = u64::from_le_bytes(blk[8..16].try_into().expect("8 bytes"));
            round(h, k1, k2);
        }
    }
    let tails = [&a[body..], &b[body..]];
    let [ra, rb] = [0, 1].map(|i| finish(h[i], tails[i], a.len()));
    (ra, rb)
}

const C1: u64 = 0x87c3_7b91_1142_53d5;
const C2: u64 = 0x4cf5_ad43_2745_937f;

/// The low 64 bits of [`x64_128`] of each message (the dedup signature),
/// eight at a time on AVX-512, else two at a time.
pub fn x64_128_lo_many(msgs: &[&[u8]], seed: u32) -> Vec<u64> {
    let mut out = Vec::with_capacity(msgs.len());
    let mut rest = msgs;
    #[cfg(target_arch = "x86_64")]
    if *AVX512 {
        while let Some((eight, tail)) = rest.split_first_chunk::<8>() {
            if eight.iter().any(|m| m.len() != eight[0].len()) {
                break;
            }
            // SAFETY: AVX512 says the CPU has AVX-512 F and DQ.
            let h = unsafe { x8::x64_128(*eight, seed) };
            out.extend(h.iter().map(|h| *h as u64));
            rest = tail;
        }
    }
    for pair in rest.chunks(2) {
        match pair {
            [a, b] => {
                let (ha, hb) = x64_128_pair(a, b, seed);
                out.extend([ha as u64, hb as u64]);
            }
            _ => out.push(x64_128(pair[0], seed) as u64),
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
static AVX512: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
    std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512dq")
});

#[cfg(target_arch = "x86_64")]
mod x8 {
    use super::{C1, C2, finish, round};
    use std::arch::x86_64::*;

    /// One round of the body for all eight lanes.
    #[inline]
    #[target_feature(enable = "avx512f,avx512dq")]
    fn round8(h1: &mut __m512i, h2: &mut __m512i, k1: __m512i, k2: __m512i) {
        {
            let (c1, c2) = (_mm512_set1_epi64(C1 as i64), _mm512_set1_epi64(C2 as i64));
            let k1 = _mm512_mullo_epi64(_mm512_rol_epi64::<31>(_mm512_mullo_epi64(k1, c1)), c2);
            *h1 = _mm512_xor_si512(*h1, k1);
            *h1 = _mm512_add_epi64(_mm512_rol_epi64::<27>(*h1), *h2);
            // h * 5 + c as h + (h << 2) + c.
            *h1 = _mm512_add_epi64(_mm512_add_epi64(_mm512_slli_epi64::<2>(*h1), *h1), _mm512_set1_epi64(0x52dc_e729));
            let k2 = _mm512_mullo_epi64(_mm512_rol_epi64::<33>(_mm512_mullo_epi64(k2, c2)), c1);
            *h2 = _mm512_xor_si512(*h2, k2);
            *h2 = _mm512_add_epi64(_mm512_rol_epi64::<31>(*h2), *h1);
            *h2 = _mm512_add_epi64(_mm512_add_epi64(_mm512_slli_epi64::<2>(*h2), *h2), _mm512_set1_epi64(0x3849_5ab5));
        }
    }

    /// MurmurHash3 x64-128 of eight messages of one length.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F and DQ.
    #[target_feature(enable = "avx512f,avx512dq")]
    pub unsafe fn x64_128(m: [&[u8]; 8], seed: u32) -> [u128; 8] {
        let len = m[0].len();
        debug_assert!(m.iter().all(|x| x.len() == len));
        let body = len & !63;
        let mut h1 = _mm512_set1_epi64(seed as i64);
        let mut h2 = h1;
        let mut off = 0;
        while off < body {
            // SAFETY: off + 64 <= len for every message.
            let r: [__m512i; 8] =
                std::array::from_fn(|j| unsafe { _mm512_loadu_si512(m[j].as_ptr().add(off) as *const _) });
            // Transpose 8×8 words so q[i] holds word i of every message.
            let a = [
                _mm512_unpacklo_epi64(r[0], r[1]),
                _mm512_unpackhi_epi64(r[0], r[1]),
                _mm512_unpacklo_epi64(r[2], r[3]),
                _mm512_unpackhi_epi64(r[2], r[3]),
                _mm512_unpacklo_epi64(r[4], r[5]),
                _mm512_unpackhi_epi64(r[4], r[5]),
                _mm512_unpacklo_epi64(r[6], r[7]),
                _mm512_unpackhi_epi64(r[6], r[7]),
            ];
            // Even 128-bit lanes of two vectors, and odd ones.
            let ev = |x, y| _mm512_shuffle_i64x2::<0b10_00_10_00>(x, y);
            let od = |x, y| _mm512_shuffle_i64x2::<0b11_01_11_01>(x, y);
            let b = [ev(a[0], a[2]), od(a[0], a[2]), ev(a[1], a[3]), od(a[1], a[3])];
            let c = [ev(a[4], a[6]), od(a[4], a[6]), ev(a[5], a[7]), od(a[5], a[7])];
            let q = [
                ev(b[0], c[0]),
                ev(b[2], c[2]),
                ev(b[1], c[1]),
                ev(b[3], c[3]),
                od(b[0], c[0]),
                od(b[2], c[2]),
                od(b[1], c[1]),
                od(b[3], c[3]),
            ];
            for k in q.chunks_exact(2) {
                round8(&mut h1, &mut h2, k[0], k[1]);
            }
            off += 64;
        }
        let (mut v1, mut v2) = ([0u64; 8], [0u64; 8]);
        // SAFETY: 64-byte stores into 64-byte arrays.
        unsafe {
            _mm512_storeu_si512(v1.as_mut_ptr() as *mut _, h1);
            _mm512_storeu_si512(v2.as_mut_ptr() as *mut _, h2);
        }
        // Whole 16-byte rounds past the last 64 bytes, the tail, the finish.
        std::array::from_fn(|j| {
            let mut h = [v1[j], v2[j]];
            let rest = &m[j][body..];
            let whole = rest.len() & !15;
            for blk in rest[..whole].chunks_exact(16) {
                let k1 = u64::from_le_bytes(blk[0..8].try_into().expect("8 bytes"));
                let k2 = u64::from_le_bytes(blk[8..16].try_into().expect("8 bytes"));
                round(&mut h, k1, k2);
            }
            finish(h, &rest[whole..], len)
        })
    }
}

#[inline(always)]
fn round(h: &mut [u64; 2], mut k1: u64, mut k2: u64) {
    k1 = k1.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
    h[0] ^= k1;
    h[0] = h[0].rotate_left(27).wrapping_add(h[1]).wrapping_mul(5).wrapping_add(0x52dc_e729);
    k2 = k2.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
    h[1] ^= k2;
    h[1] = h[1].rotate_left(31).wrapping_add(h[0]).wrapping_mul(5).wrapping_add(0x3849_5ab5);
}

/// The tail (< 16 bytes) and finalisation.
#[inline(always)]
fn finish(h: [u64; 2], tail: &[u8], len: usize) -> u128 {
    let [mut h1, mut h2] = h;
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
    use crate::test_bytes::xorshift_bytes;

    #[test]
    fn matches_the_murmur3_crate_for_every_tail_length_and_blocks() {
        for len in (0..64).chain([4095, 4096, 4097, 10_000]) {
            let data = xorshift_bytes(len, 0x1234_5678_9abc_def0 + len as u64);
            for seed in [0u32, 1, 0x62ea_60be] {
                let want = murmur3::murmur3_x64_128(&mut std::io::Cursor::new(&data), seed).unwrap();
                assert_eq!(x64_128(&data, seed), want, "len {len} seed {seed:#x}");
            }
        }
    }

    #[test]
    fn pairs_equal_two_single_hashes() {
        let mut n = 0u64;
        let mut data = |len: usize| {
            n += 1;
            xorshift_bytes(len, 0xfeed_f00d + n)
        };
        for (la, lb) in [(0, 0), (15, 15), (16, 16), (31, 31), (4096, 4096), (4096, 100), (7, 4096)] {
            let (a, b) = (data(la), data(lb));
            for seed in [0u32, 0x62ea_60be] {
                assert_eq!(x64_128_pair(&a, &b, seed), (x64_128(&a, seed), x64_128(&b, seed)), "{la} {lb}");
            }
        }
    }

    #[test]
    fn many_equals_one_at_a_time_for_every_length_and_group() {
        let mut n = 0u64;
        let mut data = |len: usize| {
            n += 1;
            xorshift_bytes(len, 0x0123_4567_89ab_cdef + n)
        };
        // Lengths around the 64-byte SIMD step and the 16-byte round.
        for len in [0, 1, 15, 16, 17, 63, 64, 65, 80, 127, 128, 200, 4095, 4096] {
            for n in [1, 7, 8, 9, 16, 17, 33] {
                let msgs: Vec<Vec<u8>> = (0..n).map(|_| data(len)).collect();
                let refs: Vec<&[u8]> = msgs.iter().map(|m| &m[..]).collect();
                let want: Vec<u64> = refs.iter().map(|m| x64_128(m, 0x62ea_60be) as u64).collect();
                assert_eq!(x64_128_lo_many(&refs, 0x62ea_60be), want, "{n} messages of {len} bytes");
            }
        }
        // Mixed lengths fall back per message and keep their order.
        let msgs: Vec<Vec<u8>> = (0..20).map(|i| data(64 + i)).collect();
        let refs: Vec<&[u8]> = msgs.iter().map(|m| &m[..]).collect();
        let want: Vec<u64> = refs.iter().map(|m| x64_128(m, 1) as u64).collect();
        assert_eq!(x64_128_lo_many(&refs, 1), want);
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx512_kernel_equals_the_scalar_hash_when_the_cpu_has_it() {
        if !*AVX512 {
            eprintln!("no AVX-512 F+DQ here: kernel not exercised");
            return;
        }
        let msgs: Vec<Vec<u8>> =
            (0..8u8).map(|i| (0..4096).map(|b| (b as u8).wrapping_mul(i | 1) ^ i).collect()).collect();
        let refs: [&[u8]; 8] = std::array::from_fn(|j| &msgs[j][..]);
        // SAFETY: checked above.
        let got = unsafe { x8::x64_128(refs, 9) };
        for j in 0..8 {
            assert_eq!(got[j], x64_128(refs[j], 9));
        }
    }

    #[test]
    fn golden_value_of_the_empty_input_and_a_known_string() {
        // Reference values of MurmurHash3_x64_128 (smhasher), seed 0.
        assert_eq!(x64_128(b"", 0), 0);
        assert_eq!(x64_128(b"hello", 0) as u64, 0xcbd8_a7b3_41bd_9b02);
    }
}
