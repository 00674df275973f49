//! Ingest throughput through the engine API (no FUSE): unique data, then
//! the same data again (all dedup hits), in 1 MiB writes from N threads.
//! `cargo run --release --example ingest -- [MiB] [threads] [data-file]`
//! With a data file (e.g. a sample of /usr), its bytes are the data.
//! `COMPRESSION=inline|deferred` (default deferred, as `strata init`); with
//! deferred, the packer's pass over what was written is timed afterwards.
use std::time::Instant;
use strata::volume::{Compression, Engine, InitOptions, OpenOptions, WritePolicy};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(512);
    let threads: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let p = dir.path().join("store");
    let compression: Compression =
        std::env::var("COMPRESSION").unwrap_or_else(|_| "deferred".into()).parse().expect("inline or deferred");
    Engine::init(&p, &InitOptions { write_policy: WritePolicy::Async, compression }).unwrap();
    let e = Engine::open(&p, &OpenOptions::default()).unwrap();
    // A real data file, or half-compressible synthetic data.
    let data: Vec<u8> = if let Some(f) = args.get(3) {
        let mut d = std::fs::read(f).unwrap();
        d.resize((mib << 20) as usize, 0);
        d
    } else {
        let mut x = 0x9e3779b97f4a7c15u64;
        (0..mib << 20)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if i % 4096 < 2048 { (x & 0x0f) as u8 } else { x as u8 }
            })
            .collect()
    };
    let data = std::sync::Arc::new(data);
    for (round, name) in ["unique", "duplicate"].iter().enumerate() {
        let vol = format!("v{round}");
        e.create_volume(&vol, mib << 20).unwrap();
        let v = e.open_volume(&vol).unwrap();
        let t = Instant::now();
        let hs: Vec<_> = (0..threads)
            .map(|k| {
                let v = v.clone();
                let data = data.clone();
                std::thread::spawn(move || {
                    let mut off = k << 20;
                    while off < (mib << 20) {
                        v.write_at(&data[off as usize..off as usize + (1 << 20)], off).unwrap();
                        off += threads << 20;
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        v.flush().unwrap();
        let s = t.elapsed().as_secs_f64();
        println!("{name:<9} {mib} MiB in {s:.2} s = {:.0} MB/s ({threads} threads)", (mib << 20) as f64 / s / 1e6);
    }
    if compression == Compression::Deferred {
        let t = Instant::now();
        let n = e.pack_deferred(true, &|| false).unwrap();
        let s = t.elapsed().as_secs_f64();
        println!(
            "packer    {n} blocks compressed in {s:.2} s = {:.0} MB/s (one thread, in the background)",
            n as f64 * 4096.0 / s / 1e6
        );
    }
    let st = e.status().unwrap();
    println!(
        "stored {} bytes of payload, compression {:.2}x, dedup {:.2}x",
        st.data_bytes_stored.unwrap_or(0),
        st.compression_ratio.unwrap_or(0.0),
        st.dedup_ratio.unwrap_or(0.0)
    );
}
