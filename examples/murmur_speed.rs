//! MurmurHash3 x64-128 over 4 KiB blocks: the `murmur3` crate (Read-based)
//! against `store::murmur` (slice-based). `cargo run --release --example murmur_speed`
use std::time::Instant;
fn main() {
    let data: Vec<u8> = (0..64u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let t = Instant::now();
    let mut acc = 0u128;
    for b in data.chunks(4096) {
        acc ^= murmur3::murmur3_x64_128(&mut std::io::Cursor::new(b), 0x62ea60be).unwrap();
    }
    let crate_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut acc2 = 0u128;
    for b in data.chunks(4096) {
        acc2 ^= strata::store::murmur::x64_128(b, 0x62ea60be);
    }
    let ours_s = t.elapsed().as_secs_f64();
    assert_eq!(acc, acc2);
    let mb = data.len() as f64 / 1e6;
    println!("murmur3 crate: {:.0} MB/s; store::murmur: {:.0} MB/s", mb / crate_s, mb / ours_s);
}
