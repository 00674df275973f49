//! Scale measurements (issues 4 and 7), release build:
//!   cargo run --release --example scale -- big   [GiB written, default 20]
//!   cargo run --release --example scale -- many  [volumes, default 1000]
//! `big`: a 2 TiB sparse volume with N GiB written in 1 MiB pieces spread
//! over the whole volume (contents repeat, so the test measures maps, not
//! disk bandwidth); then snapshot time, store open + volume open time, and
//! the maps' memory. `many`: volumes with 10 snapshots each; then the time
//! to list them all.
use std::time::Instant;
use strata::volume::{Engine, InitOptions, OpenOptions, WritePolicy};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("big");
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let p = dir.path().join("store");
    Engine::init(&p, &InitOptions { write_policy: WritePolicy::Async, ..Default::default() }).unwrap();
    match what {
        "big" => {
            let gib: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(20);
            let cap = 2u64 << 40;
            {
                let e = Engine::open(&p, &OpenOptions::default()).unwrap();
                e.create_volume("big", cap).unwrap();
                let v = e.open_volume("big").unwrap();
                let bufs: Vec<Vec<u8>> =
                    (0..16u8).map(|k| (0..1usize << 20).map(|i| (i as u8).wrapping_mul(k | 1) ^ k).collect()).collect();
                let t = Instant::now();
                let n = gib * 1024;
                let stride = cap / n;
                for i in 0..n {
                    let off = (i * stride) & !((1 << 20) - 1);
                    v.write_at(&bufs[(i % 16) as usize], off).unwrap();
                }
                v.flush().unwrap();
                println!("wrote {gib} GiB into a 2 TiB volume in {:.1} s", t.elapsed().as_secs_f64());
                let t = Instant::now();
                e.snapshot_create("big", "s1").unwrap();
                println!(
                    "snapshot create: {:.1} ms (2 TiB volume, {gib} GiB written)",
                    t.elapsed().as_secs_f64() * 1e3
                );
                drop(v);
                e.close().unwrap();
            }
            let before = rss_kib();
            let t = Instant::now();
            let e = Engine::open(&p, &OpenOptions::default()).unwrap();
            let v = e.open_volume("big").unwrap();
            let took = t.elapsed();
            let after = rss_kib();
            println!(
                "store open + volume open: {:.0} ms; RSS grew {} MiB ({} MiB total) for {} mapped blocks ({:.1} bytes each)",
                took.as_secs_f64() * 1e3,
                (after.saturating_sub(before)) / 1024,
                after / 1024,
                v.allocated_bytes() / 4096,
                (after.saturating_sub(before)) as f64 * 1024.0 / (v.allocated_bytes() / 4096) as f64
            );
            // Reads of written blocks (the first 4 KiB of each written MiB).
            let n = gib * 1024;
            let stride = cap / n;
            let t = Instant::now();
            let mut b = vec![0u8; 4096];
            for i in 0..10_000u64 {
                let off = ((i * 7919 % n) * stride) & !((1 << 20) - 1);
                v.read_at(&mut b, off).unwrap();
            }
            println!(
                "10000 random 4 KiB reads of written blocks through the engine: {:.1} µs each",
                t.elapsed().as_secs_f64() * 1e6 / 10_000.0
            );
        }
        "many" => {
            let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
            let e = Engine::open(&p, &OpenOptions::default()).unwrap();
            let t = Instant::now();
            for i in 0..n {
                let name = format!("vm{i:04}");
                e.create_volume(&name, 1 << 30).unwrap();
                for s in 0..10 {
                    e.snapshot_create(&name, &format!("s{s}")).unwrap();
                }
            }
            println!("created {n} volumes with {} snapshots in {:.1} s", n * 10, t.elapsed().as_secs_f64());
            let t = Instant::now();
            let l = e.list_volumes().unwrap();
            println!("volume list: {} volumes in {:.0} ms", l.len(), t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let d = e.chain_dump(None).unwrap();
            println!("chain dump: {} images in {:.0} ms", d.images.len(), t.elapsed().as_secs_f64() * 1e3);
            drop(e);
            let t = Instant::now();
            let e = Engine::open(&p, &OpenOptions::default()).unwrap();
            println!(
                "store open with {} layers: {:.0} ms",
                e.status().unwrap().layers,
                t.elapsed().as_secs_f64() * 1e3
            );
        }
        _ => eprintln!("usage: scale big|many [N]"),
    }
}
