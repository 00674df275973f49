//! BLAKE3, faster for the two shapes strata hashes most: many 4 KiB
//! blocks (content ids) and short headers (checksums).
//!
//! `blake3::hash` of one 4 KiB block runs the SIMD kernel over that block's
//! four 1 KiB chunks only: on AVX-512 it fills 4 of 16 lanes and hashes
//! at about 2.6 GB/s per core here. A write of 1 MiB brings 256 blocks, so
//! this module hashes them side by side instead: chunk j of up to 16
//! blocks per kernel call (all at chunk counter j), then the two parent
//! nodes of every block, then every root — the same tree `blake3::hash`
//! computes, at about 8.7 GB/s per core (BENCHMARKS.md §1).
//!
//! It drives the crate's `platform::Platform::hash_many`, which the crate
//! marks as undocumented and unstable. Cargo.toml therefore pins the exact
//! blake3 version, and the tests below check the result against
//! `blake3::hash` for every batch size; a crate upgrade that changed the
//! call fails to compile or fails those tests, never silently.
//!
//! A header of at most 64 bytes is one BLAKE3 block: [`short`] compresses
//! it once, directly, instead of setting up a `blake3::Hasher` (whose
//! buffering was 6 % of the write path: two 60-byte header checksums per
//! 4 KiB block written).
//!
//! Depends on: nothing in the crate.

use blake3::IncrementCounter;
use blake3::platform::Platform;

/// The block size this batches (other lengths go through `blake3::hash`).
const BLOCK: usize = 4096;
const CHUNK: usize = 1024;
const CHUNKS: usize = BLOCK / CHUNK;
/// Blocks per kernel call: the widest SIMD degree (AVX-512).
const BATCH: usize = 16;
/// Fewer blocks than this go through `blake3::hash` one by one (a 4 KiB
/// random write must not pay for the batch: that cost 20 % of its IOPS).
const MIN_BATCH: usize = 4;
const OUT: usize = 32;
const BLOCK_LEN: usize = 64;

/// BLAKE3's IV (the SHA-256 IV), the key of the unkeyed hash.
const IV: [u32; 8] = [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19];
// Domain flags from the BLAKE3 specification, §2.1.
const CHUNK_START: u8 = 1 << 0;
const CHUNK_END: u8 = 1 << 1;
const PARENT: u8 = 1 << 2;
const ROOT: u8 = 1 << 3;

static PLATFORM: std::sync::LazyLock<Platform> = std::sync::LazyLock::new(Platform::detect);

/// `blake3::hash(data)` for inputs of at most 64 bytes (one block); longer
/// inputs go through `blake3::hash`.
pub fn short(data: &[u8]) -> [u8; OUT] {
    if data.len() > BLOCK_LEN {
        return *blake3::hash(data).as_bytes();
    }
    let mut block = [0u8; BLOCK_LEN];
    block[..data.len()].copy_from_slice(data);
    let mut cv = IV;
    // A one-block message: the block is its chunk's first and last and the
    // root; the root's output (first 32 bytes) is the chaining value.
    PLATFORM.compress_in_place(&mut cv, &block, data.len() as u8, 0, CHUNK_START | CHUNK_END | ROOT);
    let mut out = [0u8; OUT];
    for (o, w) in out.chunks_exact_mut(4).zip(cv) {
        o.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// `blake3::hash` of each input, batched for 4 KiB inputs.
pub fn hash_all(inputs: &[&[u8]]) -> Vec<blake3::Hash> {
    let mut out = Vec::with_capacity(inputs.len());
    let mut batch: Vec<&[u8; BLOCK]> = Vec::with_capacity(BATCH);
    let mut batch_at: Vec<usize> = Vec::with_capacity(BATCH);
    for (i, b) in inputs.iter().enumerate() {
        match <&[u8; BLOCK]>::try_from(*b) {
            Ok(block) => {
                batch.push(block);
                batch_at.push(i);
                out.push(blake3::Hash::from_bytes([0; OUT]));
                if batch.len() == BATCH {
                    flush(&mut batch, &mut batch_at, &mut out);
                }
            }
            Err(_) => out.push(blake3::hash(b)),
        }
    }
    flush(&mut batch, &mut batch_at, &mut out);
    out
}

fn flush(batch: &mut Vec<&[u8; BLOCK]>, at: &mut Vec<usize>, out: &mut [blake3::Hash]) {
    if batch.len() < MIN_BATCH {
        // One block alone already fills 4 lanes (its 4 chunks); the kernel
        // run on 1–3 messages would hash them one compression at a time.
        for (&i, b) in at.iter().zip(batch.iter()) {
            out[i] = blake3::hash(&b[..]);
        }
        batch.clear();
        at.clear();
        return;
    }
    let mut ids = [[0u8; OUT]; BATCH];
    hash_blocks(batch, &mut ids[..batch.len()]);
    for (&i, id) in at.iter().zip(ids) {
        out[i] = blake3::Hash::from_bytes(id);
    }
    batch.clear();
    at.clear();
}

/// The BLAKE3 hash of each of up to [`BATCH`] 4 KiB blocks.
fn hash_blocks(blocks: &[&[u8; BLOCK]], out: &mut [[u8; OUT]]) {
    hash_blocks_on(*PLATFORM, blocks, out)
}

fn hash_blocks_on(platform: Platform, blocks: &[&[u8; BLOCK]], out: &mut [[u8; OUT]]) {
    let n = blocks.len();
    assert!(n <= BATCH && out.len() == n, "a batch is at most {BATCH} blocks");
    // Chaining values of every chunk, laid out per block as cv0 cv1 cv2 cv3,
    // so each block's two parent inputs are adjacent 64-byte halves.
    let mut chunk_cvs = [0u8; BATCH * CHUNKS * OUT];
    let mut cvs = [0u8; BATCH * OUT];
    for j in 0..CHUNKS {
        let mut inputs: [&[u8; CHUNK]; BATCH] = [&[0; CHUNK]; BATCH];
        for (slot, b) in inputs.iter_mut().zip(blocks) {
            *slot = b[j * CHUNK..(j + 1) * CHUNK].try_into().expect("a chunk of a block");
        }
        platform.hash_many(
            &inputs[..n],
            &IV,
            j as u64,
            IncrementCounter::No,
            0,
            CHUNK_START,
            CHUNK_END,
            &mut cvs[..n * OUT],
        );
        for i in 0..n {
            let at = (i * CHUNKS + j) * OUT;
            chunk_cvs[at..at + OUT].copy_from_slice(&cvs[i * OUT..(i + 1) * OUT]);
        }
    }
    // Level 1: parent(cv0, cv1) and parent(cv2, cv3) of every block.
    let mut parents = [0u8; BATCH * 2 * OUT];
    {
        let mut inputs: [&[u8; 2 * OUT]; 2 * BATCH] = [&[0; 2 * OUT]; 2 * BATCH];
        for (k, slot) in inputs[..2 * n].iter_mut().enumerate() {
            *slot = chunk_cvs[k * 2 * OUT..(k + 1) * 2 * OUT].try_into().expect("two chaining values");
        }
        platform.hash_many(&inputs[..2 * n], &IV, 0, IncrementCounter::No, PARENT, 0, 0, &mut parents[..2 * n * OUT]);
    }
    // Root: parent(p0, p1) with the ROOT flag; its first 32 bytes are the hash.
    let mut inputs: [&[u8; 2 * OUT]; BATCH] = [&[0; 2 * OUT]; BATCH];
    for (k, slot) in inputs[..n].iter_mut().enumerate() {
        *slot = parents[k * 2 * OUT..(k + 1) * 2 * OUT].try_into().expect("two chaining values");
    }
    platform.hash_many(&inputs[..n], &IV, 0, IncrementCounter::No, PARENT | ROOT, 0, 0, &mut cvs[..n * OUT]);
    for (i, o) in out.iter_mut().enumerate() {
        o.copy_from_slice(&cvs[i * OUT..(i + 1) * OUT]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_bytes::xorshift_bytes as data;

    #[test]
    fn equals_blake3_hash_for_every_batch_size_and_mixed_lengths() {
        for n in [0, 1, 2, 3, 7, 15, 16, 17, 31, 32, 33, 64, 257] {
            let bytes = data(n * BLOCK, 0x9e37_79b9_7f4a_7c15 ^ n as u64);
            let blocks: Vec<&[u8]> = bytes.chunks(BLOCK).collect();
            let got = hash_all(&blocks);
            let want: Vec<blake3::Hash> = blocks.iter().map(|b| blake3::hash(b)).collect();
            assert_eq!(got, want, "{n} blocks");
        }
        // Other lengths mixed in keep their place and are hashed whole.
        let bytes = data(5 * BLOCK + 100, 7);
        let blocks: Vec<&[u8]> =
            vec![&bytes[..BLOCK], &bytes[BLOCK..BLOCK + 100], &bytes[100..100 + BLOCK], &[], &bytes[..2 * BLOCK]];
        let want: Vec<blake3::Hash> = blocks.iter().map(|b| blake3::hash(b)).collect();
        assert_eq!(hash_all(&blocks), want);
    }

    #[test]
    fn short_equals_blake3_hash_for_every_length_up_to_two_blocks() {
        let bytes = data(130, 11);
        for len in 0..=130 {
            assert_eq!(short(&bytes[..len]), *blake3::hash(&bytes[..len]).as_bytes(), "{len} bytes");
        }
        // The BLAKE3 test vector of the empty input.
        assert_eq!(
            blake3::Hash::from_bytes(short(b"")).to_hex().as_str(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn every_platform_the_cpu_has_gives_the_same_ids() {
        let bytes = data(40 * BLOCK, 3);
        let blocks: Vec<&[u8; BLOCK]> = bytes.chunks(BLOCK).map(|c| c.try_into().unwrap()).collect();
        let want: Vec<[u8; OUT]> = blocks.iter().map(|b| *blake3::hash(&b[..]).as_bytes()).collect();
        for p in [Some(Platform::portable()), Platform::sse2(), Platform::sse41(), Platform::avx2(), Platform::avx512()]
            .into_iter()
            .flatten()
        {
            for part in blocks.chunks(BATCH).zip(want.chunks(BATCH)) {
                let mut out = [[0u8; OUT]; BATCH];
                hash_blocks_on(p, part.0, &mut out[..part.0.len()]);
                assert_eq!(&out[..part.0.len()], part.1);
            }
        }
    }
}
