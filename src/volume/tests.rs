//! Engine tests: volumes against an in-memory model, across clean closes
//! and simulated crashes.

use super::*;
use proptest::prelude::*;

fn new_store(policy: WritePolicy) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("store");
    Engine::init(&p, &InitOptions { write_policy: policy }).unwrap();
    (d, p)
}

fn open(p: &Path) -> Arc<Engine> {
    Engine::open(p, &OpenOptions::default()).unwrap()
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
    assert_eq!(s.logical_bytes_used, 2 * 256 * 1024);
    assert_eq!(s.dedup_ratio, Some(2.0));
    assert!(s.compression_ratio.unwrap() > 1.5, "{:?}", s.compression_ratio);
    assert_eq!(e.volume_info("a").unwrap().allocated_bytes, 256 * 1024);
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
    assert_eq!(s.logical_bytes_used, 0);
    assert_eq!(s.unreferenced_chunks, s.chunk_count);
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
    let s = e.status().unwrap();
    assert_eq!(s.logical_bytes_used, v.allocated_bytes());
}

#[derive(Debug, Clone)]
enum Op {
    Write { vol: usize, off: u64, len: usize, seed: u64 },
    Discard { vol: usize, off: u64, len: u64 },
    Resize { vol: usize, cap: u64 },
    Flush,
    Checkpoint,
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
