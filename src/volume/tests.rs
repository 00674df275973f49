//! Engine tests: volumes against an in-memory model, across clean closes
//! and simulated crashes.

use super::*;
use proptest::prelude::*;

fn new_store(policy: WritePolicy) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("store");
    Engine::init(&p, &InitOptions { write_policy: policy, ..Default::default() }).unwrap();
    (d, p)
}

fn open(p: &Path) -> Arc<Engine> {
    Engine::open(p, &OpenOptions::default()).unwrap()
}

/// Wait until background recovery has finished.
fn wait_normal(e: &Engine) {
    for _ in 0..2000 {
        if e.mode() != Mode::Recovering {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("still recovering after 10 s");
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Half-compressible data: low nibbles only.
            (x & 0x0f) as u8
        })
        .collect()
}

#[test]
fn init_refuses_an_existing_store() {
    let (_d, p) = new_store(WritePolicy::Async);
    let err = Engine::init(&p, &InitOptions::default()).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists(_)), "{err}");
}

#[test]
fn open_without_a_store_says_what_to_run() {
    let d = tempfile::tempdir().unwrap();
    let err = Engine::open(&d.path().join("nope"), &OpenOptions::default()).err().unwrap();
    assert!(err.to_string().contains("strata init"), "{err}");
}

#[test]
fn a_second_opener_is_told_the_store_is_busy() {
    let (_d, p) = new_store(WritePolicy::Async);
    let _e = open(&p);
    let err = Engine::open(&p, &OpenOptions::default()).err().unwrap();
    assert!(matches!(err, Error::Busy { .. }), "{err}");
}

#[test]
fn written_data_reads_back_and_survives_a_clean_reopen() {
    let (_d, p) = new_store(WritePolicy::Async);
    let data = pattern(3 * 4096 + 100, 1);
    {
        let e = open(&p);
        e.create_volume("vm1", 1 << 20).unwrap();
        let v = e.open_volume("vm1").unwrap();
        v.write_at(&data, 5000).unwrap();
        let mut back = vec![0u8; data.len()];
        v.read_at(&mut back, 5000).unwrap();
        assert_eq!(back, data);
        e.close().unwrap();
    }
    let e = open(&p);
    let v = e.open_volume("vm1").unwrap();
    let mut back = vec![0u8; data.len()];
    v.read_at(&mut back, 5000).unwrap();
    assert_eq!(back, data);
    let mut head = vec![1u8; 5000];
    v.read_at(&mut head, 0).unwrap();
    assert!(head.iter().all(|&b| b == 0));
}

#[test]
fn flushed_writes_survive_a_crash_and_recovery_replays_the_journal() {
    let (_d, p) = new_store(WritePolicy::Async);
    let data = pattern(64 * 1024, 2);
    {
        let e = open(&p);
        e.create_volume("vm1", 1 << 20).unwrap();
        let v = e.open_volume("vm1").unwrap();
        v.write_at(&data, 0).unwrap();
        v.flush().unwrap();
        e.simulate_crash();
    }
    let e = open(&p);
    let v = e.open_volume("vm1").unwrap();
    let mut back = vec![0u8; data.len()];
    v.read_at(&mut back, 0).unwrap();
    assert_eq!(back, data);
    // Recovery folded the journal into a checkpoint.
    assert_eq!(journal::list_files(&p.join("journal")).unwrap().len(), 1);
}

#[test]
fn identical_data_in_two_volumes_is_stored_once() {
    let (_d, p) = new_store(WritePolicy::Async);
    let e = open(&p);
    let data = pattern(256 * 1024, 3);
    for n in ["a", "b"] {
        e.create_volume(n, 1 << 20).unwrap();
        e.open_volume(n).unwrap().write_at(&data, 0).unwrap();
    }
    let s = e.status().unwrap();
    assert_eq!(s.logical_bytes_used, Some(2 * 256 * 1024));
    assert_eq!(s.dedup_ratio, Some(2.0));
    // New stores defer compression to the packer: stored raw so far.
    assert_eq!(s.compression, Compression::Deferred);
    assert_eq!(s.compression_ratio, Some(1.0));
    // Physical space = live payloads + metadata + dead space; nothing is
    // dead yet but the pack header and padding.
    let parts = |s: &StoreStatus| s.data_bytes_stored.unwrap() + s.metadata_bytes + s.dead_pack_bytes.unwrap();
    assert_eq!(parts(&s), s.physical_bytes_used);
    assert!(s.dead_pack_bytes.unwrap() < 4096, "{s:?}");
    assert_eq!(s.record_header_bytes, 64 * 64);
    assert_eq!(e.pack_deferred(true, &|| false).unwrap(), 64);
    let s = e.status().unwrap();
    assert!(s.compression_ratio.unwrap() > 1.5, "{:?}", s.compression_ratio);
    assert_eq!(s.dedup_ratio, Some(2.0));
    // The packer moved every record and retired the emptied pack as a
    // spare (not physical space used).
    assert_eq!(parts(&s), s.physical_bytes_used);
    assert!(s.dead_pack_bytes.unwrap() < 4096 && s.spare_packs == 1, "{s:?}");
    assert_eq!(e.volume_info("a").unwrap().allocated_bytes, 256 * 1024);
    let mut back = vec![0u8; data.len()];
    e.open_volume("b").unwrap().read_at(&mut back, 0).unwrap();
    assert_eq!(back, data);
    // Nothing is left to pack.
    assert_eq!(e.pack_deferred(true, &|| false).unwrap(), 0);
    // Overwritten in both volumes: the old records are dead space.
    let before = e.status().unwrap();
    for n in ["a", "b"] {
        e.open_volume(n).unwrap().write_at(&pattern(256 * 1024, 4), 0).unwrap();
    }
    let s = e.status().unwrap();
    assert_eq!(parts(&s), s.physical_bytes_used);
    assert_eq!(s.unreferenced_chunks, Some(64));
    assert!(
        s.dead_pack_bytes.unwrap() >= before.dead_pack_bytes.unwrap() + before.data_bytes_stored.unwrap() + 64 * 64,
        "{before:?}\n{s:?}"
    );
}

#[test]
fn inline_compression_compresses_in_the_write_path() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("store");
    Engine::init(&p, &InitOptions { write_policy: WritePolicy::Async, compression: Compression::Inline }).unwrap();
    let e = open(&p);
    assert_eq!(e.compression(), Compression::Inline);
    e.create_volume("a", 1 << 20).unwrap();
    e.open_volume("a").unwrap().write_at(&pattern(256 * 1024, 3), 0).unwrap();
    assert!(e.status().unwrap().compression_ratio.unwrap() > 1.5);
    assert_eq!(e.pack_deferred(true, &|| false).unwrap(), 0);
    // The mode persists and can change.
    e.set_compression(Compression::Deferred).unwrap();
    drop(e);
    assert_eq!(open(&p).compression(), Compression::Deferred);
}

#[test]
fn packed_chunks_survive_a_crash_at_every_stage_of_a_packer_pass() {
    // The packer is GC with another victim list: its moves are journaled
    // and the old pack is deleted only after a checkpoint. Crash right after
    // the pass, reopen, read, pack again, check.
    let (_d, p) = new_store(WritePolicy::Async);
    let data = pattern(512 * 1024, 9);
    {
        let e = open(&p);
        e.create_volume("a", 1 << 20).unwrap();
        let v = e.open_volume("a").unwrap();
        v.write_at(&data, 0).unwrap();
        v.flush().unwrap();
        assert_eq!(e.pack_deferred(true, &|| false).unwrap(), 128);
        // New deferred writes after the pass, flushed, then a crash.
        v.write_at(&data[..64 * 1024], 512 * 1024).unwrap();
        v.flush().unwrap();
        e.simulate_crash();
    }
    let e = open(&p);
    wait_normal(&e);
    let v = e.open_volume("a").unwrap();
    let mut back = vec![0u8; 576 * 1024];
    v.read_at(&mut back, 0).unwrap();
    assert_eq!(&back[..512 * 1024], &data[..]);
    assert_eq!(&back[512 * 1024..], &data[..64 * 1024]);
    // The 16 blocks written after the pass dedup against packed chunks.
    assert_eq!(e.pack_deferred(true, &|| false).unwrap(), 0);
    drop(v);
    e.close().unwrap();
    drop(e);
    let rep = check::check(&p, &check::CheckOptions::default(), &mut |_, _| {}).unwrap();
    assert_eq!(rep.errors(), 0, "{}", check::render(&rep));
}

#[test]
fn the_packer_never_carries_a_damaged_deferred_record_forward() {
    let (_d, p) = new_store(WritePolicy::Async);
    {
        let e = open(&p);
        e.create_volume("a", 1 << 20).unwrap();
        e.open_volume("a").unwrap().write_at(&pattern(8192, 4), 0).unwrap();
        e.close().unwrap();
    }
    // Flip a payload byte of the first record (pack 1, after its header).
    let pack = p.join("packs").join(crate::store::pack::pack_file_name(1));
    let mut b = std::fs::read(&pack).unwrap();
    b[64 + 64 + 100] ^= 1;
    std::fs::write(&pack, b).unwrap();
    let e = open(&p);
    // The intact block is packed; the damaged one stays, with its pack.
    assert_eq!(e.pack_deferred(true, &|| false).unwrap(), 1);
    assert!(p.join("packs").join(crate::store::pack::pack_file_name(1)).exists());
    let v = e.open_volume("a").unwrap();
    let mut back = vec![0u8; 4096];
    assert!(v.read_at(&mut back, 0).unwrap_err().to_string().contains("BLAKE3"));
    v.read_at(&mut back, 4096).unwrap();
    assert_eq!(back, pattern(8192, 4)[4096..]);
    assert_eq!(e.mode(), Mode::Normal);
}

#[test]
fn zero_blocks_are_never_stored_and_discard_frees_blocks() {
    let (_d, p) = new_store(WritePolicy::Async);
    let e = open(&p);
    e.create_volume("v", 1 << 20).unwrap();
    let v = e.open_volume("v").unwrap();
    v.write_at(&vec![0u8; 65536], 0).unwrap();
    assert_eq!(e.status().unwrap().chunk_count, 0);
    v.write_at(&pattern(65536, 4), 0).unwrap();
    assert_eq!(v.allocated_bytes(), 65536);
    v.discard(4096, 8192 + 100).unwrap();
    assert_eq!(v.allocated_bytes(), 65536 - 8192);
    let mut b = vec![9u8; 8192 + 100];
    v.read_at(&mut b, 4096).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    assert_eq!(v.next_data(4096), Some(12288));
    assert_eq!(v.next_hole(0), 4096);
    assert_eq!(v.next_hole(20000), 65536);
    assert_eq!(v.next_data(70000), None);
}

#[test]
fn io_outside_the_volume_is_refused() {
    let (_d, p) = new_store(WritePolicy::Async);
    let e = open(&p);
    e.create_volume("v", 10000).unwrap();
    let v = e.open_volume("v").unwrap();
    assert!(matches!(v.write_at(&[1; 10], 9995), Err(Error::OutOfRange { .. })));
    let mut b = [0u8; 8];
    assert!(matches!(v.read_at(&mut b, u64::MAX - 2), Err(Error::OutOfRange { .. })));
    v.write_at(&[7; 5], 9995).unwrap();
}

#[test]
fn shrinking_then_growing_shows_zeros() {
    let (_d, p) = new_store(WritePolicy::Async);
    let e = open(&p);
    e.create_volume("v", 1 << 20).unwrap();
    let v = e.open_volume("v").unwrap();
    v.write_at(&pattern(1 << 20, 5), 0).unwrap();
    assert!(e.resize_volume("v", 10_000, false).is_err());
    e.resize_volume("v", 10_000, true).unwrap();
    assert_eq!(v.capacity(), 10_000);
    e.resize_volume("v", 1 << 20, false).unwrap();
    let mut b = vec![1u8; (1 << 20) - 10_000];
    v.read_at(&mut b, 10_000).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    assert_eq!(e.volume_info("v").unwrap().capacity, 1 << 20);
}

#[test]
fn remove_releases_chunks_and_names_are_unique() {
    let (_d, p) = new_store(WritePolicy::Async);
    let e = open(&p);
    e.create_volume("v", 1 << 20).unwrap();
    assert!(matches!(e.create_volume("v", 1), Err(Error::AlreadyExists(_))));
    e.open_volume("v").unwrap().write_at(&pattern(8192, 6), 0).unwrap();
    e.remove_volume("v", false).unwrap();
    let s = e.status().unwrap();
    assert_eq!(s.logical_bytes_used, Some(0));
    assert_eq!(s.unreferenced_chunks, Some(s.chunk_count));
    assert!(matches!(e.open_volume("v"), Err(Error::NotFound(_))));
}

#[test]
fn corrupted_pack_bytes_give_an_error_naming_volume_and_offset() {
    let (_d, p) = new_store(WritePolicy::Async);
    {
        let e = open(&p);
        e.create_volume("vm", 1 << 20).unwrap();
        let v = e.open_volume("vm").unwrap();
        v.write_at(&pattern(4096, 7), 8192).unwrap();
        e.close().unwrap();
    }
    let pack = p.join("packs").join(store::pack::pack_file_name(1));
    let mut bytes = std::fs::read(&pack).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x55;
    std::fs::write(&pack, bytes).unwrap();
    let e = open(&p);
    let v = e.open_volume("vm").unwrap();
    let mut b = vec![0u8; 4096];
    let err = v.read_at(&mut b, 8192).unwrap_err();
    match &err {
        Error::Corrupt { volume, offset, .. } => {
            assert_eq!(volume, "vm");
            assert_eq!(*offset, 8192);
        }
        e => panic!("expected Corrupt, got {e}"),
    }
}

#[test]
fn import_and_export_round_trip_sparsely() {
    let (d, p) = new_store(WritePolicy::Async);
    let src = d.path().join("src.raw");
    let mut img = vec![0u8; 3 << 20];
    img[100..5000].copy_from_slice(&pattern(4900, 8));
    img[(2 << 20) + 7..(2 << 20) + 9000].copy_from_slice(&pattern(8993, 9));
    std::fs::write(&src, &img).unwrap();
    let e = open(&p);
    let mut calls = 0;
    let info = e.import_raw(&src, "imp", &mut |_, _| calls += 1).unwrap();
    assert!(calls > 0);
    assert_eq!(info.capacity, 3 << 20);
    assert!(info.jobs.is_empty());
    let out = d.path().join("out.raw");
    e.export_raw("imp", &out, &mut |_, _| {}).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), img);
    use std::os::unix::fs::MetadataExt;
    assert!(std::fs::metadata(&out).unwrap().blocks() * 512 < 1 << 20, "export is not sparse");
    assert!(matches!(e.import_raw(&d.path().join("missing"), "x", &mut |_, _| {}), Err(Error::NotFound(_))));
}

#[test]
fn an_interrupted_import_needs_force_to_remove() {
    let (_d, p) = new_store(WritePolicy::Async);
    let e = open(&p);
    let (disk, _) = e.catalog().create_disk("half", 1 << 20, Legality::Illegal).unwrap();
    e.catalog().begin_job("import", disk.guid, "{}").unwrap();
    drop(e);
    let e = open(&p);
    let err = e.open_volume("half").err().unwrap();
    assert!(err.to_string().contains("ILLEGAL"), "{err}");
    let err = e.remove_volume("half", false).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    e.remove_volume("half", true).unwrap();
}

#[test]
fn sync_policy_writes_are_durable_without_flush() {
    let (_d, p) = new_store(WritePolicy::Sync);
    let data = pattern(12288, 10);
    {
        let e = open(&p);
        assert_eq!(e.effective_write_policy(), WritePolicy::Sync);
        e.create_volume("v", 1 << 20).unwrap();
        e.open_volume("v").unwrap().write_at(&data, 4096).unwrap();
        e.simulate_crash();
    }
    let e = open(&p);
    let mut b = vec![0u8; data.len()];
    e.open_volume("v").unwrap().read_at(&mut b, 4096).unwrap();
    assert_eq!(b, data);
}

#[test]
fn concurrent_writers_on_two_volumes_and_one_volume_agree_with_the_data() {
    let (_d, p) = new_store(WritePolicy::Async);
    let e = open(&p);
    e.create_volume("a", 4 << 20).unwrap();
    e.create_volume("b", 4 << 20).unwrap();
    let mut hs = vec![];
    for t in 0..4u64 {
        let v = e.open_volume(if t % 2 == 0 { "a" } else { "b" }).unwrap();
        hs.push(std::thread::spawn(move || {
            for i in 0..64u64 {
                let off = ((t / 2) * (2 << 20)) + i * 30000;
                let data = pattern(7000, t * 1000 + i);
                v.write_at(&data, off).unwrap();
                let mut back = vec![0u8; 7000];
                v.read_at(&mut back, off).unwrap();
                assert_eq!(back, data);
            }
        }));
    }
    for h in hs {
        h.join().unwrap();
    }
}

#[test]
fn checkpoint_then_crash_then_reopen_keeps_everything() {
    let (_d, p) = new_store(WritePolicy::Async);
    let a = pattern(20000, 11);
    let b = pattern(20000, 12);
    {
        let e = open(&p);
        e.create_volume("v", 1 << 20).unwrap();
        let v = e.open_volume("v").unwrap();
        v.write_at(&a, 0).unwrap();
        e.checkpoint().unwrap();
        v.write_at(&b, 100_000).unwrap();
        v.flush().unwrap();
        e.simulate_crash();
    }
    let e = open(&p);
    let v = e.open_volume("v").unwrap();
    let mut x = vec![0u8; 20000];
    v.read_at(&mut x, 0).unwrap();
    assert_eq!(x, a);
    v.read_at(&mut x, 100_000).unwrap();
    assert_eq!(x, b);
    wait_normal(&e);
    let st = e.status().unwrap();
    assert_eq!(st.logical_bytes_used, Some(v.allocated_bytes()));
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        vol: usize,
        off: u64,
        len: usize,
        seed: u64,
    },
    Discard {
        vol: usize,
        off: u64,
        len: u64,
    },
    Resize {
        vol: usize,
        cap: u64,
    },
    Flush,
    Checkpoint,
    Gc,
    CleanReopen,
    /// Crash right after a flush: everything must survive.
    FlushAndCrash,
}

fn op() -> impl Strategy<Value = Op> {
    let cap = 256 * 1024u64;
    prop_oneof![
        8 => (0..2usize, 0..cap, 1..20000usize, any::<u64>()).prop_map(|(vol, off, len, seed)| Op::Write { vol, off, len, seed }),
        2 => (0..2usize, 0..cap, 1..50000u64).prop_map(|(vol, off, len)| Op::Discard { vol, off, len }),
        1 => (0..2usize, 1000..cap).prop_map(|(vol, cap)| Op::Resize { vol, cap }),
        1 => Just(Op::Flush),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Gc),
        1 => Just(Op::CleanReopen),
        1 => Just(Op::FlushAndCrash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn volumes_match_a_plain_model_across_reopens_and_crashes(ops in proptest::collection::vec(op(), 1..40)) {
        let (_d, p) = new_store(WritePolicy::Async);
        let names = ["m0", "m1"];
        let mut model: Vec<Vec<u8>> = vec![vec![0u8; 256 * 1024]; 2];
        let mut e = open(&p);
        for n in names {
            e.create_volume(n, 256 * 1024).unwrap();
        }
        for op in ops {
            match op {
                Op::Write { vol, off, len, seed } => {
                    let cap = model[vol].len() as u64;
                    if off >= cap { continue; }
                    let len = len.min((cap - off) as usize);
                    let data = if seed % 5 == 0 { vec![0u8; len] } else { pattern(len, seed) };
                    e.open_volume(names[vol]).unwrap().write_at(&data, off).unwrap();
                    model[vol][off as usize..off as usize + len].copy_from_slice(&data);
                }
                Op::Discard { vol, off, len } => {
                    let cap = model[vol].len() as u64;
                    e.open_volume(names[vol]).unwrap().discard(off, len).unwrap();
                    if off < cap {
                        let end = (off + len).min(cap);
                        model[vol][off as usize..end as usize].fill(0);
                    }
                }
                Op::Resize { vol, cap } => {
                    e.resize_volume(names[vol], cap, true).unwrap();
                    model[vol].resize(cap as usize, 0);
                }
                Op::Flush => e.flush().unwrap(),
                Op::Checkpoint => e.checkpoint().unwrap(),
                Op::Gc => { wait_normal(&e); e.gc(&mut |_, _| {}).unwrap(); }
                Op::CleanReopen => {
                    e.close().unwrap();
                    drop(e);
                    e = open(&p);
                }
                Op::FlushAndCrash => {
                    e.flush().unwrap();
                    e.simulate_crash();
                    drop(e);
                    e = open(&p);
                }
            }
        }
        for (i, n) in names.iter().enumerate() {
            let v = e.open_volume(n).unwrap();
            prop_assert_eq!(v.capacity(), model[i].len() as u64);
            let mut back = vec![0u8; model[i].len()];
            v.read_at(&mut back, 0).unwrap();
            prop_assert!(back == model[i], "volume {} differs from the model", n);
            let nonzero = model[i].chunks(4096).filter(|c| !format::is_zero(c)).count() as u64;
            prop_assert_eq!(v.allocated_bytes(), nonzero * 4096);
        }
        // Refcounts derived at open equal the ones kept during the run.
        wait_normal(&e);
        let live = e.status().unwrap().logical_bytes_used;
        e.close().unwrap();
        drop(e);
        let e2 = open(&p);
        prop_assert_eq!(e2.status().unwrap().logical_bytes_used, live);
    }
}

#[test]
fn a_journal_record_whose_pack_bytes_never_landed_is_dropped_with_later_ones() {
    let (_d, p) = new_store(WritePolicy::Async);
    let a = pattern(8192, 21);
    let b = pattern(8192, 22);
    let c = pattern(8192, 23);
    let flushed_len;
    {
        let e = open(&p);
        e.create_volume("v", 1 << 20).unwrap();
        let v = e.open_volume("v").unwrap();
        v.write_at(&a, 0).unwrap();
        v.flush().unwrap();
        flushed_len = std::fs::metadata(p.join("packs").join(store::pack::pack_file_name(1))).unwrap().len();
        v.write_at(&b, 8192).unwrap();
        v.write_at(&c, 16384).unwrap();
        e.simulate_crash();
    }
    // Power loss: the journal reached the disk but the pack tail with b's
    // and c's records did not.
    let pack = p.join("packs").join(store::pack::pack_file_name(1));
    std::fs::OpenOptions::new().write(true).open(&pack).unwrap().set_len(flushed_len + 100).unwrap();
    let e = open(&p);
    let v = e.open_volume("v").unwrap();
    let mut x = vec![0u8; 8192];
    v.read_at(&mut x, 0).unwrap();
    assert_eq!(x, a);
    // b's record is dropped (its data is gone), so is c's, which came later.
    v.read_at(&mut x, 8192).unwrap();
    assert!(x.iter().all(|&z| z == 0));
    v.read_at(&mut x, 16384).unwrap();
    assert!(x.iter().all(|&z| z == 0));
    drop(v);
    e.close().unwrap();
    drop(e);
    let e = open(&p);
    assert_eq!(e.volume_info("v").unwrap().allocated_bytes, 8192);
}

mod chain_model {
    use super::*;
    use std::collections::BTreeMap;

    const CAP: usize = 128 * 1024;

    #[derive(Debug, Clone)]
    enum COp {
        Write { vol: usize, off: usize, len: usize, seed: u64 },
        Discard { vol: usize, off: usize, len: usize },
        Snap { vol: usize, name: usize },
        Revert { vol: usize, name: usize, keep: bool },
        RemoveSnap { vol: usize, name: usize },
        Clone { vol: usize, name: usize },
        Flatten { vol: usize },
        Gc,
        Reopen { crash: bool },
    }

    fn cop() -> impl Strategy<Value = COp> {
        prop_oneof![
            6 => (0..4usize, 0..CAP, 1..12000usize, any::<u64>()).prop_map(|(vol, off, len, seed)| COp::Write { vol, off, len, seed }),
            1 => (0..4usize, 0..CAP, 1..30000usize).prop_map(|(vol, off, len)| COp::Discard { vol, off, len }),
            3 => (0..4usize, 0..4usize).prop_map(|(vol, name)| COp::Snap { vol, name }),
            1 => (0..4usize, 0..4usize, any::<bool>()).prop_map(|(vol, name, keep)| COp::Revert { vol, name, keep }),
            2 => (0..4usize, 0..4usize).prop_map(|(vol, name)| COp::RemoveSnap { vol, name }),
            1 => (0..4usize, 0..4usize).prop_map(|(vol, name)| COp::Clone { vol, name }),
            1 => (0..4usize).prop_map(|vol| COp::Flatten { vol }),
            1 => Just(COp::Gc),
            1 => any::<bool>().prop_map(|crash| COp::Reopen { crash }),
        ]
    }

    /// Every volume's content, and every snapshot's frozen content.
    #[derive(Default)]
    struct Model {
        vols: BTreeMap<String, Vec<u8>>,
        snaps: BTreeMap<(String, String), Vec<u8>>,
        /// clone name → (source volume, snapshot)
        clones: BTreeMap<String, (String, String)>,
        next: usize,
    }

    fn check(e: &Engine, m: &Model) -> std::result::Result<(), TestCaseError> {
        for (n, data) in &m.vols {
            let v = e.open_volume(n).unwrap();
            let mut back = vec![0u8; data.len()];
            v.read_at(&mut back, 0).unwrap();
            prop_assert!(&back == data, "volume {} differs from the model", n);
        }
        for ((v, s), data) in &m.snaps {
            let sv = e.open_snapshot(v, s).unwrap();
            let mut back = vec![0u8; data.len()];
            sv.read_at(&mut back, 0).unwrap();
            prop_assert!(&back == data, "snapshot {}@{} differs from the model", v, s);
            prop_assert!(matches!(sv.write_at(&[1], 0), Err(Error::ReadOnly(_))));
        }
        let dump = e.chain_dump(None).unwrap();
        prop_assert!(dump.problems.is_empty(), "{:?}", dump.problems);
        for i in &dump.images {
            prop_assert!(i.problems.is_empty(), "{:?}", i.problems);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn snapshots_reverts_merges_and_clones_match_the_model(ops in proptest::collection::vec(cop(), 1..45)) {
            let (_d, p) = new_store(WritePolicy::Async);
            let mut e = open(&p);
            let mut m = Model::default();
            for n in ["v0", "v1"] {
                e.create_volume(n, CAP as u64).unwrap();
                m.vols.insert(n.into(), vec![0u8; CAP]);
            }
            let snap_name = |i: usize| format!("s{i}");
            for op in ops {
                let names: Vec<String> = m.vols.keys().cloned().collect();
                let pick = |i: usize| names[i % names.len()].clone();
                match op {
                    COp::Write { vol, off, len, seed } => {
                        let n = pick(vol);
                        let data = m.vols.get_mut(&n).unwrap();
                        let len = len.min(data.len() - off.min(data.len()));
                        if len == 0 { continue; }
                        let buf = if seed % 4 == 0 { vec![0u8; len] } else { pattern(len, seed) };
                        e.open_volume(&n).unwrap().write_at(&buf, off as u64).unwrap();
                        data[off..off + len].copy_from_slice(&buf);
                    }
                    COp::Discard { vol, off, len } => {
                        let n = pick(vol);
                        let data = m.vols.get_mut(&n).unwrap();
                        e.open_volume(&n).unwrap().discard(off as u64, len as u64).unwrap();
                        let end = (off + len).min(data.len());
                        if off < end { data[off..end].fill(0); }
                    }
                    COp::Snap { vol, name } => {
                        let n = pick(vol);
                        let s = snap_name(name);
                        let r = e.snapshot_create(&n, &s);
                        if m.snaps.contains_key(&(n.clone(), s.clone())) {
                            prop_assert!(matches!(r, Err(Error::AlreadyExists(_))));
                        } else {
                            r.unwrap();
                            m.snaps.insert((n.clone(), s), m.vols[&n].clone());
                        }
                    }
                    COp::Revert { vol, name, keep } => {
                        let n = pick(vol);
                        let s = snap_name(name);
                        let Some(content) = m.snaps.get(&(n.clone(), s.clone())).cloned() else { continue };
                        m.next += 1;
                        let keep_name = format!("kept{}", m.next);
                        e.snapshot_revert(&n, &s, keep.then_some(keep_name.as_str())).unwrap();
                        let old = std::mem::replace(m.vols.get_mut(&n).unwrap(), content);
                        if keep {
                            m.snaps.insert((n, keep_name), old);
                        }
                    }
                    COp::RemoveSnap { vol, name } => {
                        let n = pick(vol);
                        let s = snap_name(name);
                        if !m.snaps.contains_key(&(n.clone(), s.clone())) { continue; }
                        let has_clone = m.clones.values().any(|(v, sn)| *v == n && *sn == s);
                        let r = e.snapshot_remove(&n, &s);
                        if has_clone {
                            prop_assert!(r.is_err());
                        } else {
                            r.unwrap();
                            m.snaps.remove(&(n, s));
                        }
                    }
                    COp::Clone { vol, name } => {
                        let n = pick(vol);
                        let s = snap_name(name);
                        let Some(content) = m.snaps.get(&(n.clone(), s.clone())).cloned() else { continue };
                        if m.vols.len() >= 6 { continue; }
                        m.next += 1;
                        let c = format!("c{}", m.next);
                        let info = e.clone_volume(&format!("{n}@{s}"), &c).unwrap();
                        prop_assert!(info.properties.contains_key("cloned-from"));
                        m.vols.insert(c.clone(), content);
                        m.clones.insert(c, (n, s));
                    }
                    COp::Flatten { vol } => {
                        let n = pick(vol);
                        e.flatten_volume(&n).unwrap();
                        m.clones.remove(&n);
                    }
                    COp::Gc => {
                        wait_normal(&e);
                        e.gc(&mut |_, _| {}).unwrap();
                    }
                    COp::Reopen { crash } => {
                        if crash {
                            e.flush().unwrap();
                            e.simulate_crash();
                        } else {
                            e.close().unwrap();
                        }
                        drop(e);
                        e = open(&p);
                    }
                }
            }
            check(&e, &m)?;
            e.close().unwrap();
            drop(e);
            let e = open(&p);
            check(&e, &m)?;
        }
    }
}

#[test]
fn snapshot_of_a_big_sparse_volume_is_fast_and_holds_acknowledged_writes() {
    let (_d, p) = new_store(WritePolicy::Async);
    let e = open(&p);
    e.create_volume("big", 100 << 30).unwrap();
    let v = e.open_volume("big").unwrap();
    let chunk = pattern(1 << 20, 31);
    for i in 0..64u64 {
        v.write_at(&chunk, i * (1 << 30)).unwrap();
    }
    let t = std::time::Instant::now();
    e.snapshot_create("big", "s").unwrap();
    let took = t.elapsed();
    v.write_at(&[9u8; 4096], 0).unwrap();
    let s = e.open_snapshot("big", "s").unwrap();
    let mut b = vec![0u8; 4096];
    s.read_at(&mut b, 0).unwrap();
    assert_eq!(b, chunk[..4096]);
    v.read_at(&mut b, 0).unwrap();
    assert_eq!(b, [9u8; 4096]);
    // Not a benchmark (debug build, shared CI box): a generous sanity bound.
    assert!(took < std::time::Duration::from_secs(2), "snapshot took {took:?}");
}

#[test]
fn a_merge_during_writes_loses_nothing() {
    let (_d, p) = new_store(WritePolicy::Async);
    let e = open(&p);
    e.create_volume("live", 4 << 20).unwrap();
    let v = e.open_volume("live").unwrap();
    v.write_at(&pattern(4 << 20, 40), 0).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let v = v.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            let mut last = std::collections::BTreeMap::new();
            while !stop.load(Ordering::Relaxed) {
                let off = (i * 7919 % 1000) * 4096;
                let data = pattern(4096, 1000 + i);
                v.write_at(&data, off).unwrap();
                last.insert(off, data);
                i += 1;
            }
            last
        })
    };
    for round in 0..20 {
        e.snapshot_create("live", &format!("s{round}")).unwrap();
        if round % 2 == 1 {
            e.snapshot_remove("live", &format!("s{}", round - 1)).unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let last = writer.join().unwrap();
    let mut expect = pattern(4 << 20, 40);
    for (off, d) in &last {
        expect[*off as usize..*off as usize + 4096].copy_from_slice(d);
    }
    let mut back = vec![0u8; 4 << 20];
    v.read_at(&mut back, 0).unwrap();
    assert!(back == expect);
    for s in e.snapshot_list("live").unwrap() {
        e.snapshot_remove("live", &s.name).unwrap();
    }
    assert_eq!(v.depth(), 1);
    v.read_at(&mut back, 0).unwrap();
    assert!(back == expect);
    drop(v);
    e.close().unwrap();
    drop(e);
    let e = open(&p);
    let mut back2 = vec![0u8; 4 << 20];
    e.open_volume("live").unwrap().read_at(&mut back2, 0).unwrap();
    assert!(back2 == expect);
}

#[test]
fn an_interrupted_merge_is_finished_at_the_next_open() {
    let (_d, p) = new_store(WritePolicy::Async);
    let data = pattern(64 * 1024, 50);
    {
        let e = open(&p);
        e.create_volume("v", 1 << 20).unwrap();
        let v = e.open_volume("v").unwrap();
        v.write_at(&data, 0).unwrap();
        e.snapshot_create("v", "s1").unwrap();
        v.write_at(&[3u8; 4096], 0).unwrap();
        // Start a merge by hand and stop before its final transaction.
        let s = e.catalog().find_snapshot(v.guid(), "s1").unwrap();
        let kids = e.catalog().children(s.guid).unwrap();
        let payload = format!("{{\"layer\":\"{}\",\"mode\":\"pull-up\",\"into\":[\"{}\"]}}", s.guid, kids[0].guid);
        e.catalog().begin_job_marking("merge", v.guid(), &payload, &[s.guid, kids[0].guid]).unwrap();
        e.flush().unwrap();
        e.simulate_crash();
    }
    let e = open(&p);
    assert!(e.catalog().all_jobs().unwrap().is_empty());
    let v = e.open_volume("v").unwrap();
    assert_eq!(v.depth(), 1);
    let mut b = vec![0u8; 64 * 1024];
    v.read_at(&mut b, 0).unwrap();
    let mut expect = data.clone();
    expect[..4096].fill(3);
    assert_eq!(b, expect);
}

#[test]
fn gc_after_removing_volumes_brings_packs_down_to_the_live_data() {
    let (_d, p) = new_store(WritePolicy::Async);
    let e = open(&p);
    for n in ["a", "b", "c"] {
        e.create_volume(n, 32 << 20).unwrap();
        let v = e.open_volume(n).unwrap();
        for i in 0..8u64 {
            v.write_at(&pattern(1 << 20, n.as_bytes()[0] as u64 * 100 + i), i << 20).unwrap();
        }
    }
    e.remove_volume("a", false).unwrap();
    e.create_volume("s", 8 << 20).unwrap();
    e.snapshot_create("b", "x").unwrap();
    e.remove_volume("c", false).unwrap();
    let before = e.status().unwrap();
    let rep = e.gc(&mut |_, _| {}).unwrap();
    assert!(rep.chunks_freed > 0, "{rep:?}");
    let after = e.status().unwrap();
    assert!(after.physical_bytes_used < before.physical_bytes_used);
    let live = after.data_bytes_stored.unwrap() + after.chunk_count * 64;
    let packs: u64 = e.store.pack_bytes().1;
    assert!(packs as f64 <= live as f64 * 1.10 + 4096.0, "packs {packs} vs live {live}");
    // b still reads back.
    let v = e.open_volume("b").unwrap();
    let mut buf = vec![0u8; 1 << 20];
    v.read_at(&mut buf, 3 << 20).unwrap();
    assert_eq!(buf, pattern(1 << 20, b'b' as u64 * 100 + 3));
    drop(v);
    e.close().unwrap();
    drop(e);
    let e = open(&p);
    let v = e.open_volume("b").unwrap();
    v.read_at(&mut buf, 7 << 20).unwrap();
    assert_eq!(buf, pattern(1 << 20, b'b' as u64 * 100 + 7));
}

#[test]
fn gc_runs_safely_alongside_writers_and_readers() {
    let (_d, p) = new_store(WritePolicy::Async);
    let e = open(&p);
    e.create_volume("w", 8 << 20).unwrap();
    let v = e.open_volume("w").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let h = {
        let v = v.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut model = vec![0u8; 8 << 20];
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) || i < 200 {
                let off = (i * 104729 % 2000) as usize * 4096;
                // Repeating contents, so dedup hits race with GC frees.
                let d = pattern(8192, i % 37);
                v.write_at(&d, off as u64).unwrap();
                model[off..off + 8192].copy_from_slice(&d);
                let mut back = vec![0u8; 8192];
                v.read_at(&mut back, off as u64).unwrap();
                assert_eq!(back, d);
                i += 1;
            }
            model
        })
    };
    for _ in 0..10 {
        e.gc(&mut |_, _| {}).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let model = h.join().unwrap();
    wait_normal(&e);
    e.gc(&mut |_, _| {}).unwrap();
    let mut back = vec![0u8; 8 << 20];
    v.read_at(&mut back, 0).unwrap();
    assert!(back == model);
    drop(v);
    e.simulate_crash();
    drop(e);
    let e = open(&p);
    e.open_volume("w").unwrap().read_at(&mut back, 0).unwrap();
    assert!(back == model);
}

mod faults {
    use super::*;
    use crate::fault::{Fault, Faults, Point};

    fn open_with(p: &Path, f: &Arc<Faults>) -> Arc<Engine> {
        Engine::open(p, &OpenOptions { read_only: false, faults: Some(f.clone()) }).unwrap()
    }

    #[test]
    fn enospc_on_a_pack_write_fails_that_write_only_and_the_store_goes_on() {
        let (_d, p) = new_store(WritePolicy::Async);
        let f = Faults::new();
        let e = open_with(&p, &f);
        e.create_volume("v", 1 << 20).unwrap();
        let v = e.open_volume("v").unwrap();
        v.write_at(&pattern(8192, 1), 0).unwrap();
        f.arm(Point::PackWrite, Fault::Enospc, 0, Some(1));
        let err = v.write_at(&pattern(8192, 2), 8192).unwrap_err();
        assert!(matches!(err, Error::NoSpace(_)), "{err}");
        assert_eq!(e.mode(), Mode::Normal);
        v.write_at(&pattern(8192, 3), 8192).unwrap();
        let mut b = vec![0u8; 8192];
        v.read_at(&mut b, 8192).unwrap();
        assert_eq!(b, pattern(8192, 3));
        drop(v);
        e.simulate_crash();
        drop(e);
        let e = open(&p);
        let mut b = vec![0u8; 16384];
        e.open_volume("v").unwrap().read_at(&mut b, 0).unwrap();
        assert_eq!(&b[..8192], &pattern(8192, 1)[..]);
        assert_eq!(&b[8192..], &pattern(8192, 3)[..]);
    }

    #[test]
    fn eio_on_a_pack_read_is_an_error_for_that_read() {
        let (_d, p) = new_store(WritePolicy::Async);
        let f = Faults::new();
        let e = open_with(&p, &f);
        e.create_volume("v", 1 << 20).unwrap();
        let v = e.open_volume("v").unwrap();
        v.write_at(&pattern(4096, 1), 0).unwrap();
        f.arm(Point::PackRead, Fault::Eio, 0, Some(1));
        let mut b = vec![0u8; 4096];
        let err = v.read_at(&mut b, 0).unwrap_err();
        assert!(
            matches!(&err, Error::Store(crate::store::Error::Io { source, .. }) if source.raw_os_error() == Some(libc::EIO)),
            "{err:?}"
        );
        v.read_at(&mut b, 0).unwrap();
        assert_eq!(b, pattern(4096, 1));
        assert_eq!(e.mode(), Mode::Normal);
    }

    #[test]
    fn a_torn_journal_write_is_cut_off_and_the_store_turns_read_only_until_repaired() {
        let (_d, p) = new_store(WritePolicy::Async);
        let f = Faults::new();
        {
            let e = open_with(&p, &f);
            e.create_volume("v", 1 << 20).unwrap();
            let v = e.open_volume("v").unwrap();
            v.write_at(&pattern(4096, 1), 0).unwrap();
            f.arm(Point::JournalWrite, Fault::Torn, 0, Some(1));
            assert!(v.write_at(&pattern(4096, 2), 4096).is_err());
            assert_eq!(e.mode(), Mode::ReadOnly);
            assert!(matches!(v.write_at(&pattern(4096, 3), 4096), Err(Error::ReadOnly(_))));
            let mut b = vec![0u8; 4096];
            v.read_at(&mut b, 0).unwrap();
            assert_eq!(b, pattern(4096, 1));
            e.simulate_crash();
        }
        // The mode persists; the journal replays up to the last whole record.
        let e = open(&p);
        assert_eq!(e.mode(), Mode::ReadOnly);
        assert!(e.status().unwrap().read_only_reason.is_some());
        let v = e.open_volume("v").unwrap();
        let mut b = vec![0u8; 8192];
        v.read_at(&mut b, 0).unwrap();
        assert_eq!(&b[..4096], &pattern(4096, 1)[..]);
        assert!(b[4096..].iter().all(|&x| x == 0));
        assert!(matches!(v.write_at(&[1], 0), Err(Error::ReadOnly(_))));
    }

    #[test]
    fn a_failed_fsync_fails_the_flush_and_makes_the_store_read_only() {
        let (_d, p) = new_store(WritePolicy::Async);
        let f = Faults::new();
        let e = open_with(&p, &f);
        e.create_volume("v", 1 << 20).unwrap();
        let v = e.open_volume("v").unwrap();
        v.write_at(&pattern(4096, 1), 0).unwrap();
        f.arm(Point::JournalSync, Fault::FsyncFail, 0, None);
        assert!(v.flush().is_err());
        assert_eq!(e.mode(), Mode::ReadOnly);
    }

    #[test]
    fn sync_policy_reports_a_failed_pack_fsync_to_the_writer() {
        let (_d, p) = new_store(WritePolicy::Sync);
        let f = Faults::new();
        let e = open_with(&p, &f);
        e.create_volume("v", 1 << 20).unwrap();
        let v = e.open_volume("v").unwrap();
        f.arm(Point::PackSync, Fault::FsyncFail, 0, None);
        assert!(v.write_at(&pattern(4096, 1), 0).is_err());
        assert_eq!(e.mode(), Mode::ReadOnly);
    }

    #[test]
    fn enospc_writing_a_checkpoint_keeps_the_journal_and_loses_nothing() {
        let (_d, p) = new_store(WritePolicy::Async);
        let f = Faults::new();
        {
            let e = open_with(&p, &f);
            e.create_volume("v", 1 << 20).unwrap();
            let v = e.open_volume("v").unwrap();
            v.write_at(&pattern(8192, 5), 0).unwrap();
            f.arm(Point::MetaWrite, Fault::Enospc, 0, Some(1));
            assert!(matches!(e.checkpoint(), Err(Error::NoSpace(_))));
            assert_eq!(e.mode(), Mode::Normal);
            v.write_at(&pattern(8192, 6), 8192).unwrap();
            e.flush().unwrap();
            e.simulate_crash();
        }
        let e = open(&p);
        let mut b = vec![0u8; 16384];
        e.open_volume("v").unwrap().read_at(&mut b, 0).unwrap();
        assert_eq!(&b[..8192], &pattern(8192, 5)[..]);
        assert_eq!(&b[8192..], &pattern(8192, 6)[..]);
    }

    #[test]
    fn the_write_policy_can_be_changed_and_is_kept() {
        let (_d, p) = new_store(WritePolicy::Async);
        {
            let e = open(&p);
            assert_eq!(e.set_write_policy(WritePolicy::Sync).unwrap().0, WritePolicy::Sync);
            assert_eq!(e.status().unwrap().write_policy, WritePolicy::Sync);
        }
        let e = open(&p);
        assert_eq!(e.write_policy(), WritePolicy::Sync);
        assert_eq!(e.effective_write_policy(), WritePolicy::Sync);
        let (eff, why) = e.set_write_policy(WritePolicy::Auto).unwrap();
        assert!(matches!(eff, WritePolicy::Sync | WritePolicy::Async));
        assert!(!why.is_empty());
    }
}

#[test]
fn after_a_crash_the_store_recovers_in_the_background_while_serving_io() {
    let (_d, p) = new_store(WritePolicy::Async);
    let data = pattern(64 * 1024, 60);
    {
        let e = open(&p);
        e.create_volume("v", 1 << 20).unwrap();
        let v = e.open_volume("v").unwrap();
        v.write_at(&data, 0).unwrap();
        v.write_at(&data, 65536).unwrap();
        e.flush().unwrap();
        e.simulate_crash();
    }
    // SAFETY of the env var in tests: only this test reads it, and it is
    // read once when the recovery thread starts.
    unsafe { std::env::set_var("STRATA_TEST_RECOVERY_DELAY_MS", "300") };
    let e = open(&p);
    unsafe { std::env::remove_var("STRATA_TEST_RECOVERY_DELAY_MS") };
    assert_eq!(e.mode(), Mode::Recovering);
    let s = e.status().unwrap();
    assert_eq!(s.logical_bytes_used, None, "statistics are unknown while recovering");
    assert!(matches!(e.gc(&mut |_, _| {}), Err(Error::Unsupported(_))));
    // I/O is served meanwhile, including overwrites that drop references.
    let v = e.open_volume("v").unwrap();
    let mut b = vec![0u8; 65536];
    v.read_at(&mut b, 65536).unwrap();
    assert_eq!(b, data);
    v.write_at(&pattern(65536, 61), 65536).unwrap();
    v.discard(0, 4096).unwrap();
    wait_normal(&e);
    assert_eq!(e.mode(), Mode::Normal);
    let s = e.status().unwrap();
    assert_eq!(s.logical_bytes_used, Some(v.allocated_bytes()));
    // The counts agree with a fresh derivation.
    drop(v);
    e.close().unwrap();
    drop(e);
    let e = open(&p);
    assert_eq!(e.mode(), Mode::Normal);
    assert_eq!(e.status().unwrap().logical_bytes_used, s.logical_bytes_used);
}

mod checking {
    use super::*;
    use crate::volume::check::{self, CheckOptions};

    fn store_with_data() -> (tempfile::TempDir, PathBuf) {
        let (d, p) = new_store(WritePolicy::Async);
        let e = open(&p);
        e.create_volume("vm1", 1 << 20).unwrap();
        let v = e.open_volume("vm1").unwrap();
        v.write_at(&pattern(64 * 1024, 70), 0).unwrap();
        e.snapshot_create("vm1", "s1").unwrap();
        v.write_at(&pattern(8192, 71), 4096).unwrap();
        drop(v);
        e.close().unwrap();
        (d, p)
    }

    fn run(p: &Path, repair: bool) -> check::CheckReport {
        check::check(p, &CheckOptions { repair, force_rebuild: false }, &mut |_, _| {}).unwrap()
    }

    #[test]
    fn a_healthy_store_checks_clean() {
        let (_d, p) = store_with_data();
        let r = run(&p, false);
        assert!(r.clean, "{}", check::render(&r));
        assert!(r.records > 0);
    }

    #[test]
    fn a_record_cut_short_by_a_kill_is_a_warning_unless_the_table_uses_it() {
        let (_d, p) = store_with_data();
        let mut packs: Vec<PathBuf> = std::fs::read_dir(p.join("packs")).unwrap().map(|e| e.unwrap().path()).collect();
        packs.sort();
        let active = packs.last().unwrap().clone();
        let bytes = std::fs::read(&active).unwrap();
        let len = bytes.len();
        // kill -9 inside the append's pwrite: a whole record header, then
        // only part of its payload (the crash harness saw this).
        let first = store::pack::PACK_HEADER_LEN as usize;
        let torn = bytes[first..first + store::pack::RECORD_HEADER_LEN + 10].to_vec();
        std::io::Write::write_all(&mut std::fs::OpenOptions::new().append(true).open(&active).unwrap(), &torn).unwrap();
        let r = run(&p, false);
        assert!(r.clean, "{}", check::render(&r));
        assert!(
            r.findings.iter().any(|f| f.severity == "warning" && f.detail.contains("unfinished append")),
            "{}",
            check::render(&r)
        );
        // The next open cuts it off.
        open(&p).close().unwrap();
        assert_eq!(std::fs::metadata(&active).unwrap().len(), len as u64);
        assert!(run(&p, false).findings.iter().all(|f| f.severity == "info"));
        // A record the table uses, cut short, is lost data: an error.
        std::fs::OpenOptions::new().write(true).open(&active).unwrap().set_len(len as u64 - 10).unwrap();
        let r = run(&p, false);
        assert!(
            !r.clean && r.findings.iter().any(|f| f.severity == "error" && f.detail.contains("runs past the end")),
            "{}",
            check::render(&r)
        );
    }

    #[test]
    fn a_flipped_pack_byte_is_reported_by_volume_and_offset_and_repaired_to_zeros() {
        let (_d, p) = store_with_data();
        let pack = p.join("packs").join(crate::store::pack::pack_file_name(1));
        let mut b = std::fs::read(&pack).unwrap();
        // Inside the payload of the first record (the first block of vm1).
        b[64 + 64 + 10] ^= 0x20;
        std::fs::write(&pack, b).unwrap();
        let r = run(&p, false);
        let text = check::render(&r);
        assert!(!r.clean);
        assert!(text.contains("chunk 16 at offset 64"), "{text}");
        assert!(text.contains("volume vm1") && text.contains("at offset 0 point at chunk"), "{text}");
        assert!(matches!(Engine::open(&p, &OpenOptions::default()).map(|_| ()), Ok(())));
        let r = run(&p, true);
        assert!(r.clean, "{}", check::render(&r));
        assert!(r.repaired.iter().any(|x| x.contains("offset 0 were lost")), "{:?}", r.repaired);
        let r = run(&p, false);
        assert!(r.clean, "{}", check::render(&r));
        let e = open(&p);
        let v = e.open_volume("vm1").unwrap();
        let mut blk = vec![1u8; 4096];
        v.read_at(&mut blk, 0).unwrap();
        assert!(blk.iter().all(|&x| x == 0));
        v.read_at(&mut blk, 4096).unwrap();
        assert_eq!(blk, pattern(8192, 71)[..4096]);
    }

    #[test]
    fn a_damaged_chunk_table_is_rebuilt_from_the_packs_without_loss() {
        let (_d, p) = store_with_data();
        let t = p.join("chunks.tbl");
        let mut b = std::fs::read(&t).unwrap();
        let n = b.len();
        b[n - 5] ^= 1;
        std::fs::write(&t, b).unwrap();
        assert!(Engine::open(&p, &OpenOptions::default()).is_err());
        let r = run(&p, false);
        assert!(check::render(&r).contains("chunks.tbl"), "{}", check::render(&r));
        let r = run(&p, true);
        assert!(r.clean, "{}", check::render(&r));
        let e = open(&p);
        let mut buf = vec![0u8; 64 * 1024];
        e.open_snapshot("vm1", "s1").unwrap().read_at(&mut buf, 0).unwrap();
        assert_eq!(buf, pattern(64 * 1024, 70));
    }

    #[test]
    fn a_truncated_map_is_reported() {
        let (_d, p) = store_with_data();
        let maps: Vec<_> = std::fs::read_dir(p.join("maps")).unwrap().flatten().map(|e| e.path()).collect();
        let m = &maps[0];
        let len = std::fs::metadata(m).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(m).unwrap().set_len(len - 7).unwrap();
        let r = run(&p, false);
        let text = check::render(&r);
        assert!(text.contains("is damaged"), "{text}");
        assert!(!r.clean);
    }

    #[test]
    fn read_only_mode_is_cleared_by_a_clean_repair() {
        let (_d, p) = store_with_data();
        {
            let f = crate::fault::Faults::new();
            let e = Engine::open(&p, &OpenOptions { read_only: false, faults: Some(f.clone()) }).unwrap();
            f.arm(crate::fault::Point::JournalSync, crate::fault::Fault::FsyncFail, 0, None);
            let v = e.open_volume("vm1").unwrap();
            v.write_at(&[1u8; 4096], 0).unwrap();
            assert!(v.flush().is_err());
            e.simulate_crash();
        }
        assert_eq!(open(&p).mode(), Mode::ReadOnly);
        let r = run(&p, true);
        assert!(r.repaired.iter().any(|x| x.contains("read-only mode cleared")), "{}", check::render(&r));
        assert_eq!(open(&p).mode(), Mode::Normal);
    }
}

mod more_faults {
    use super::*;
    use crate::fault::{Fault, Faults, Point};
    use crate::volume::check::{self, CheckOptions};

    fn open_with(p: &Path, f: &Arc<Faults>) -> Arc<Engine> {
        Engine::open(p, &OpenOptions { read_only: false, faults: Some(f.clone()) }).unwrap()
    }

    /// After any fault, a crash and a reopen: the data written before the
    /// fault is intact and `check` is clean.
    fn survives(p: &Path, before: &[u8]) {
        let e = open(p);
        let mut b = vec![0u8; before.len()];
        e.open_volume("v").unwrap().read_at(&mut b, 0).unwrap();
        assert!(b == before, "data written before the fault changed");
        // The background recovery thread holds the engine (and the store
        // lock `check` needs) until it finishes.
        wait_normal(&e);
        drop(e);
        let mut tries = 0;
        let r = loop {
            match check::check(p, &CheckOptions::default(), &mut |_, _| {}) {
                Err(Error::Busy { .. }) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                r => break r.unwrap(),
            }
        };
        assert!(r.errors() == 0, "{}", check::render(&r));
    }

    fn fault_case(point: Point, fault: Fault, expect_read_only: bool) {
        let (_d, p) = new_store(WritePolicy::Async);
        let f = Faults::new();
        let before = pattern(16384, 90);
        {
            let e = open_with(&p, &f);
            e.create_volume("v", 1 << 20).unwrap();
            let v = e.open_volume("v").unwrap();
            v.write_at(&before, 0).unwrap();
            v.flush().unwrap();
            f.arm(point, fault, 0, Some(1));
            let r = v.write_at(&pattern(8192, 91), 65536);
            assert!(r.is_err(), "{point:?}/{fault:?}: the write did not fail");
            if fault == Fault::Enospc {
                assert!(matches!(r, Err(Error::NoSpace(_))), "{r:?}");
            }
            assert_eq!(e.mode() == Mode::ReadOnly, expect_read_only, "{point:?}/{fault:?}: mode {:?}", e.mode());
            e.simulate_crash();
        }
        survives(&p, &before);
        let e = open(&p);
        assert_eq!(e.mode() == Mode::ReadOnly, expect_read_only);
    }

    #[test]
    fn eio_on_a_pack_write_fails_the_write_and_makes_the_store_read_only() {
        fault_case(Point::PackWrite, Fault::Eio, true);
    }

    #[test]
    fn a_torn_pack_write_is_cut_off_and_makes_the_store_read_only() {
        fault_case(Point::PackWrite, Fault::Torn, true);
    }

    #[test]
    fn enospc_on_a_journal_write_fails_that_write_only() {
        fault_case(Point::JournalWrite, Fault::Enospc, false);
    }

    #[test]
    fn eio_on_a_journal_write_makes_the_store_read_only() {
        fault_case(Point::JournalWrite, Fault::Eio, true);
    }

    #[test]
    fn eio_writing_a_checkpoint_makes_the_store_read_only_and_loses_nothing() {
        let (_d, p) = new_store(WritePolicy::Async);
        let f = Faults::new();
        let before = pattern(16384, 92);
        {
            let e = open_with(&p, &f);
            e.create_volume("v", 1 << 20).unwrap();
            let v = e.open_volume("v").unwrap();
            v.write_at(&before, 0).unwrap();
            v.flush().unwrap();
            f.arm(Point::MetaWrite, Fault::Eio, 0, Some(1));
            assert!(e.checkpoint().is_err());
            assert_eq!(e.mode(), Mode::ReadOnly);
            e.simulate_crash();
        }
        survives(&p, &before);
    }

    #[test]
    fn check_ends_its_replay_before_a_record_whose_chunk_data_never_landed() {
        let (_d, p) = new_store(WritePolicy::Async);
        let flushed_len;
        {
            let e = open(&p);
            e.create_volume("v", 1 << 20).unwrap();
            let v = e.open_volume("v").unwrap();
            v.write_at(&pattern(8192, 93), 0).unwrap();
            v.flush().unwrap();
            flushed_len = std::fs::metadata(p.join("packs").join(crate::store::pack::pack_file_name(1))).unwrap().len();
            v.write_at(&pattern(8192, 94), 8192).unwrap();
            e.simulate_crash();
        }
        // Power loss: the journal record is there, the pack bytes are not.
        let pack = p.join("packs").join(crate::store::pack::pack_file_name(1));
        std::fs::OpenOptions::new().write(true).open(&pack).unwrap().set_len(flushed_len).unwrap();
        let r = check::check(&p, &CheckOptions::default(), &mut |_, _| {}).unwrap();
        assert!(r.errors() == 0, "{}", check::render(&r));
    }
}

#[test]
fn a_store_with_a_table_cache_keeps_its_chunk_table_in_a_scratch_file_and_loses_nothing() {
    let (_d, p) = new_store(WritePolicy::Async);
    {
        let e = open(&p);
        e.set_table_cache_bytes(1).unwrap(); // one segment: everything else pages out
    }
    let data = pattern(4 << 20, 77);
    {
        let e = open(&p);
        assert_eq!(e.table_cache_bytes(), 1);
        assert!(p.join(Paths::TABLE_SCRATCH).exists());
        e.create_volume("a", 8 << 20).unwrap();
        let v = e.open_volume("a").unwrap();
        v.write_at(&data, 0).unwrap();
        e.store.table().sweep();
        e.store.table().sweep();
        let mut back = vec![0u8; data.len()];
        v.read_at(&mut back, 0).unwrap();
        assert!(back == data);
        v.flush().unwrap();
        e.simulate_crash();
    }
    let e = open(&p);
    wait_normal(&e);
    let mut back = vec![0u8; data.len()];
    e.open_volume("a").unwrap().read_at(&mut back, 0).unwrap();
    assert!(back == data);
    e.gc(&mut |_, _| {}).unwrap();
    e.open_volume("a").unwrap().read_at(&mut back, 0).unwrap();
    assert!(back == data);
}

#[test]
fn a_store_with_a_map_cache_keeps_block_maps_in_a_scratch_file_and_loses_nothing() {
    let (_d, p) = new_store(WritePolicy::Async);
    {
        let e = open(&p);
        e.set_map_cache_bytes(1).unwrap(); // one page: everything else pages out
    }
    // Writes in 256 KiB pieces 3 MiB apart: each map page (2 MiB of
    // volume) holds some, so the maps have many pages.
    let piece = |i: u64, seed: u64| (i * (3 << 20), pattern(256 << 10, seed * 100 + i));
    let mut model = vec![0u8; 64 << 20];
    let snap_model;
    {
        let e = open(&p);
        assert_eq!(e.map_cache_bytes(), 1);
        assert!(p.join(Paths::MAP_SCRATCH).exists());
        let arena = e.maps.clone().expect("a map arena");
        e.create_volume("a", 64 << 20).unwrap();
        let v = e.open_volume("a").unwrap();
        for i in 0..20 {
            let (off, data) = piece(i, 1);
            v.write_at(&data, off).unwrap();
            model[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
        e.snapshot_create("a", "s").unwrap();
        snap_model = model.clone();
        // Overwrite half, at an offset, on top of the snapshot: the open
        // volume now reads through a merged view, in the arena too.
        for i in (0..20).step_by(2) {
            let (off, data) = piece(i, 2);
            let off = off + (128 << 10);
            v.write_at(&data, off).unwrap();
            model[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
        assert!(rlock(&v.state).merged.as_ref().is_some_and(|m| m.arena().is_some()));
        assert!(arena.live_pages() > 40, "{arena:?}");
        for _ in 0..100 {
            e.sweep_caches();
            if !arena.over_cap() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!arena.over_cap(), "{arena:?}");
        // A checkpoint copies the dirty maps into the arena and frees the
        // copies when done.
        let live = arena.live_pages();
        e.checkpoint().unwrap();
        assert_eq!(arena.live_pages(), live);
        let mut back = vec![0u8; model.len()];
        v.read_at(&mut back, 0).unwrap();
        assert!(back == model);
        let (off, data) = piece(19, 3);
        v.write_at(&data, off).unwrap();
        model[off as usize..off as usize + data.len()].copy_from_slice(&data);
        e.sweep_caches();
        e.sweep_caches();
        v.flush().unwrap();
        e.simulate_crash();
    }
    let check = |e: &Engine| {
        let mut back = vec![0u8; model.len()];
        e.open_volume("a").unwrap().read_at(&mut back, 0).unwrap();
        assert!(back == model);
        e.open_snapshot("a", "s").unwrap().read_at(&mut back, 0).unwrap();
        assert!(back == snap_model);
    };
    let e = open(&p);
    wait_normal(&e);
    check(&e);
    e.sweep_caches();
    e.sweep_caches();
    check(&e);
    e.gc(&mut |_, _| {}).unwrap();
    check(&e);
    e.close().unwrap();
    drop(e);
    let e = open(&p);
    check(&e);
}

mod spares {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// On a disk filesystem (tmpfs cannot zero a range, so it never
    /// reuses spares).
    fn store_on_disk() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir_in("/var/tmp").or_else(|_| tempfile::tempdir()).unwrap();
        let p = d.path().join("store");
        Engine::init(&p, &InitOptions { write_policy: WritePolicy::Async, ..Default::default() }).unwrap();
        (d, p)
    }

    fn zero_range_works(dir: &Path) -> bool {
        use std::os::fd::AsRawFd;
        let f = tempfile::tempfile_in(dir).unwrap();
        f.set_len(8192).unwrap();
        // SAFETY: fallocate on a file we own.
        unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_ZERO_RANGE, 0, 8192) == 0 }
    }

    fn read(e: &Engine, off: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        e.open_volume("v").unwrap().read_at(&mut b, off).unwrap();
        b
    }

    #[test]
    fn packs_emptied_by_overwrites_become_spares_and_new_packs_reuse_their_space() {
        let (_d, p) = store_on_disk();
        let packs = p.join(Paths::PACKS);
        let e = open(&p);
        assert_eq!(e.spare_pack_bytes(), superblock::DEFAULT_SPARE_PACK_BYTES);
        e.create_volume("v", 16 << 20).unwrap();
        let v = e.open_volume("v").unwrap();
        v.write_at(&pattern(4 << 20, 1), 0).unwrap();
        e.store.seal_active().unwrap();
        // Overwritten: every chunk of pack 1 is dead.
        v.write_at(&pattern(4 << 20, 2), 0).unwrap();
        assert_eq!(e.reclaim_dead_packs().unwrap(), 1);
        assert!(!packs.join("00000001.pack").exists());
        let spare = packs.join("00000001.spare");
        let ino = std::fs::metadata(&spare).unwrap().ino();
        let st = e.status().unwrap();
        assert_eq!(st.spare_packs, 1);
        assert!(st.spare_pack_bytes > 4 << 20, "{}", st.spare_pack_bytes);

        // The next pack starts in the spare's space (when the filesystem
        // can zero a range; elsewhere the spare is dropped).
        e.store.seal_active().unwrap();
        let reused = zero_range_works(&packs);
        let third = packs.join("00000003.pack");
        assert!(third.exists() && !spare.exists());
        assert_eq!(std::fs::metadata(&third).unwrap().ino() == ino, reused);
        assert_eq!(e.status().unwrap().spare_packs, 0);
        v.write_at(&pattern(1 << 20, 3), 4 << 20).unwrap();
        drop(v);
        assert_eq!(read(&e, 0, 4 << 20), pattern(4 << 20, 2));
        assert_eq!(read(&e, 4 << 20, 1 << 20), pattern(1 << 20, 3));
        // Pack sizes count the active pack to its last record, not the
        // zeros after it.
        let (_, bytes) = e.store.pack_bytes();
        assert!(bytes < (5 << 20) + (1 << 20) / 2, "{bytes}");
        e.close().unwrap();
        drop(e);
        // `check` takes the zeros after the last record for what they are.
        if reused {
            assert!(std::fs::metadata(&third).unwrap().len() > 4 << 20);
        }
        let rep = check::check(&p, &Default::default(), &mut |_, _| {}).unwrap();
        assert!(rep.clean && rep.findings.is_empty(), "{:?}", rep.findings);

        // Killed with the reused pack active: the reopen trims its tail
        // and every write is there.
        let e = open(&p);
        e.open_volume("v").unwrap().write_at(&pattern(8192, 4), 12 << 20).unwrap();
        e.simulate_crash();
        drop(e);
        let e = open(&p);
        wait_normal(&e);
        assert_eq!(read(&e, 0, 4 << 20), pattern(4 << 20, 2));
        assert_eq!(read(&e, 4 << 20, 1 << 20), pattern(1 << 20, 3));
        assert_eq!(read(&e, 12 << 20, 8192), pattern(8192, 4));
        e.close().unwrap();
        drop(e);
        let rep = check::check(&p, &Default::default(), &mut |_, _| {}).unwrap();
        assert!(rep.clean && rep.findings.is_empty(), "{:?}", rep.findings);
    }

    #[test]
    fn lowering_the_setting_deletes_spares_and_zero_keeps_none() {
        let (_d, p) = store_on_disk();
        let packs = p.join(Paths::PACKS);
        let e = open(&p);
        e.create_volume("v", 16 << 20).unwrap();
        let v = e.open_volume("v").unwrap();
        for seed in 1..4 {
            v.write_at(&pattern(1 << 20, seed), 0).unwrap();
            e.store.seal_active().unwrap();
        }
        v.write_at(&pattern(1 << 20, 9), 0).unwrap();
        assert_eq!(e.reclaim_dead_packs().unwrap(), 3);
        assert_eq!(e.status().unwrap().spare_packs, 3);
        // Room for two: the oldest goes.
        let one = std::fs::metadata(packs.join("00000002.spare")).unwrap().len();
        e.set_spare_pack_bytes(2 * one + 100).unwrap();
        assert_eq!(e.status().unwrap().spare_packs, 2);
        assert!(!packs.join("00000001.spare").exists());
        e.set_spare_pack_bytes(0).unwrap();
        assert_eq!(e.status().unwrap().spare_packs, 0);
        // With 0, GC deletes what it empties.
        e.store.seal_active().unwrap();
        v.write_at(&pattern(1 << 20, 10), 0).unwrap();
        assert_eq!(e.reclaim_dead_packs().unwrap(), 1);
        assert_eq!(e.status().unwrap().spare_packs, 0);
        assert!(
            std::fs::read_dir(&packs).unwrap().flatten().all(|f| !f.file_name().to_string_lossy().ends_with(".spare"))
        );
        drop(v);
        // The setting persists.
        e.close().unwrap();
        drop(e);
        let e = open(&p);
        assert_eq!(e.spare_pack_bytes(), 0);
        assert_eq!(read(&e, 0, 1 << 20), pattern(1 << 20, 10));
    }
}
