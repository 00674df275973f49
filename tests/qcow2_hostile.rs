//! Hostile and damaged qcow2 images: each must give a clear error (or read
//! correctly), never a panic or an unbounded allocation. Images are made
//! by the writer or taken from the fuzz seed corpus, then patched in
//! memory; no qemu needed.

use std::path::{Path, PathBuf};

use strata::qcow2::{BackingFile, ExtentKind, Qcow2Error, Qcow2Image, Qcow2Writer, fuzz_open_map_read, open_chain};

const CS: u64 = 4096;

fn get64(b: &[u8], off: u64) -> u64 {
    u64::from_be_bytes(b[off as usize..off as usize + 8].try_into().unwrap())
}
fn put64(b: &mut [u8], off: u64, v: u64) {
    b[off as usize..off as usize + 8].copy_from_slice(&v.to_be_bytes());
}
fn put32(b: &mut [u8], off: u64, v: u32) {
    b[off as usize..off as usize + 4].copy_from_slice(&v.to_be_bytes());
}

/// An image from the writer: `size` bytes, 4 KiB clusters, the first two
/// clusters written.
fn image(size: u64, backing: Option<BackingFile>) -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("i.qcow2");
    let mut w = Qcow2Writer::create(&p, size, CS as u32, backing).unwrap();
    w.write_cluster(0, &[0x11; CS as usize]).unwrap();
    w.write_cluster(CS, &[0x22; CS as usize]).unwrap();
    w.finish().unwrap();
    std::fs::read(p).unwrap()
}

struct Layout {
    l1: u64,
    l2: u64,
    data0: u64,
    refcount_table: u64,
}

fn layout(b: &[u8]) -> Layout {
    let l1 = get64(b, 40);
    let l2 = get64(b, l1) & 0x00ff_ffff_ffff_fe00;
    let data0 = get64(b, l2) & 0x00ff_ffff_ffff_fe00;
    Layout { l1, l2, data0, refcount_table: get64(b, 48) }
}

/// Opening and mapping must fail; returns the message. The fuzz body runs
/// too, to be sure that no other path panics on the same bytes.
fn open_err(b: &[u8]) -> String {
    fuzz_open_map_read(b);
    match Qcow2Image::from_reader(b) {
        Ok(img) => match img.map(0, img.virtual_size()) {
            Ok(_) => panic!("hostile image opened and mapped without error"),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    }
}

fn assert_err(b: &[u8], needle: &str) {
    let msg = open_err(b);
    assert!(msg.contains(needle), "expected {needle:?} in: {msg}");
}

#[test]
fn untouched_writer_image_opens_and_reads() {
    let b = image(64 << 10, None);
    let img = Qcow2Image::from_reader(b.as_slice()).unwrap();
    let map = img.map(0, 64 << 10).unwrap();
    assert_eq!(map[0].kind, ExtentKind::Data);
    assert_eq!(map[0].len, 2 * CS);
    assert_eq!(map[1].kind, ExtentKind::Unallocated);
}

#[test]
fn huge_l1_size_is_refused() {
    let mut b = image(64 << 10, None);
    put32(&mut b, 36, u32::MAX);
    assert_err(&b, "l1_size 4294967295 is above the limit");
}

#[test]
fn virtual_size_needing_a_huge_l1_is_refused() {
    let mut b = image(64 << 10, None);
    put64(&mut b, 24, 1 << 62);
    assert_err(&b, "more than the limit");
    put64(&mut b, 24, u64::MAX);
    assert_err(&b, "above 2^63");
}

#[test]
fn virtual_size_beyond_the_l1_table_is_refused() {
    let mut b = image(64 << 10, None);
    put64(&mut b, 24, 64 << 20); // needs 32 L1 entries, the table has 1
    assert_err(&b, "l1_size 1 is too small");
}

#[test]
fn l1_table_past_the_end_of_the_file_is_refused() {
    let mut b = image(64 << 10, None);
    put64(&mut b, 40, 1 << 40);
    assert_err(&b, "L1 table at 0x10000000000 (8 bytes) is beyond the end of the file");
}

#[test]
fn misaligned_l1_table_is_refused() {
    let mut b = image(64 << 10, None);
    let l = layout(&b);
    put64(&mut b, 40, l.l1 + 8);
    assert_err(&b, "is not aligned to the cluster size (4096)");
}

#[test]
fn l2_table_past_the_end_of_the_file_is_refused() {
    let mut b = image(64 << 10, None);
    let l = layout(&b);
    put64(&mut b, l.l1, 1 << 40);
    assert_err(&b, "L2 table offset 0x10000000000 (L1 entry 0) is beyond the end of the file");
}

#[test]
fn misaligned_l2_table_is_refused() {
    let mut b = image(64 << 10, None);
    let l = layout(&b);
    put64(&mut b, l.l1, l.l2 + 512);
    assert_err(&b, "(L1 entry 0) is not aligned");
}

#[test]
fn l2_table_that_is_the_l1_table_is_refused() {
    let mut b = image(64 << 10, None);
    let l = layout(&b);
    put64(&mut b, l.l1, l.l1);
    assert_err(&b, "overlaps the L1 table");
    put64(&mut b, l.l1, l.refcount_table);
    assert_err(&b, "overlaps the refcount table");
}

#[test]
fn l2_table_shared_by_two_l1_entries_is_refused() {
    let mut b = image(4 << 20, None); // two L1 entries of 2 MiB each
    let l = layout(&b);
    let first = get64(&b, l.l1);
    put64(&mut b, l.l1 + 8, first);
    assert_err(&b, "is named by two L1 entries");
}

#[test]
fn data_cluster_that_is_an_l2_table_is_refused() {
    let mut b = image(64 << 10, None);
    let l = layout(&b);
    put64(&mut b, l.l2, l.l2 | 1 << 63);
    assert_err(&b, "is an L2 table");
    put64(&mut b, l.l2, l.l1);
    assert_err(&b, "overlaps the L1 table");
}

#[test]
fn data_cluster_past_the_end_or_misaligned_is_refused() {
    let mut b = image(64 << 10, None);
    let l = layout(&b);
    put64(&mut b, l.l2, 1 << 50);
    assert_err(&b, "data cluster offset 0x4000000000000 for guest offset 0x0 is beyond the end of the file");
    put64(&mut b, l.l2, l.data0 + 512);
    assert_err(&b, "is not aligned to the cluster size");
}

#[test]
fn garbage_compressed_cluster_is_an_error_not_a_panic() {
    let mut b = image(64 << 10, None);
    let l = layout(&b);
    // Compressed, 8 sectors, pointing at the data of cluster 0 (0x11...).
    let x = 62 - (12 - 8);
    put64(&mut b, l.l2, 1 << 62 | 7 << x | l.data0);
    let img = Qcow2Image::from_reader(b.as_slice()).unwrap();
    assert_eq!(img.map(0, CS).unwrap()[0].kind, ExtentKind::Data);
    let err = img.read_at(&mut [0u8; 4096], 0).unwrap_err().to_string();
    assert!(err.contains("compressed cluster at"), "{err}");
    // The largest descriptor, at the very end of the file: bounded read.
    let last = b.len() as u64 - 1;
    put64(&mut b, l.l2, 1 << 62 | 15 << x | last);
    let img = Qcow2Image::from_reader(b.as_slice()).unwrap();
    assert!(img.read_at(&mut [0u8; 4096], 0).is_err());
    // Compressed data in the header cluster.
    put64(&mut b, l.l2, 1 << 62 | 100);
    assert_err(&b, "outside the data area");
}

#[test]
fn zero_flag_in_a_version_2_image_is_refused() {
    let mut b = image(64 << 10, None);
    let l = layout(&b);
    put32(&mut b, 4, 2);
    put64(&mut b, l.l2, 1);
    assert_err(&b, "zero flag");
}

#[test]
fn cluster_bits_out_of_range_are_refused() {
    for bits in [0, 8, 22, 40, u32::MAX] {
        let mut b = image(64 << 10, None);
        put32(&mut b, 20, bits);
        assert_err(&b, &format!("cluster_bits {bits} is outside"));
    }
}

#[test]
fn every_truncation_gives_an_error_or_a_correct_read() {
    let b = image(64 << 10, None);
    for len in (0..b.len()).step_by(61).chain([0, 3, 4, 71, 72, 103, 104, 111, 112, 4095, 4096]) {
        let cut = &b[..len];
        fuzz_open_map_read(cut);
        if let Ok(img) = Qcow2Image::from_reader(cut) {
            // Whatever opens must read what was written or fail clearly.
            let mut buf = vec![0u8; 2 * CS as usize];
            if img.read_at(&mut buf, 0).is_ok() {
                assert!(buf[..4096].iter().all(|&x| x == 0x11 || x == 0));
            }
        }
    }
    assert!(matches!(Qcow2Image::from_reader(&b[..10]), Err(Qcow2Error::Corrupt { .. })));
    let text = &b"not a qcow2 image at all, just text......"[..];
    assert!(matches!(Qcow2Image::from_reader(text), Err(Qcow2Error::NotQcow2(_))));
}

#[test]
fn bad_magic_and_versions_are_refused() {
    let mut b = image(64 << 10, None);
    b[3] = 0xfc;
    assert!(matches!(Qcow2Image::from_reader(b.as_slice()), Err(Qcow2Error::NotQcow2(_))));
    b[3] = 0xfb;
    put32(&mut b, 4, 4);
    assert_err(&b, "qcow2 version 4");
    put32(&mut b, 4, 1);
    assert_err(&b, "qcow2 version 1");
}

#[test]
fn encrypted_images_are_refused() {
    for (m, name) in [(1, "AES"), (2, "LUKS"), (9, "unknown")] {
        let mut b = image(64 << 10, None);
        put32(&mut b, 32, m);
        assert_err(&b, &format!("encrypted (crypt_method {m}, {name})"));
    }
}

#[test]
fn incompatible_features_are_refused_or_tolerated_as_documented() {
    let mut b = image(64 << 10, None);
    put64(&mut b, 72, 1 << 1);
    assert_err(&b, "marked corrupt");
    put64(&mut b, 72, 1 << 2);
    assert_err(&b, "external data file");
    put64(&mut b, 72, 1 << 20 | 1 << 33);
    assert_err(&b, "unknown incompatible feature bit 20, bit 33");
    put64(&mut b, 72, 1 << 3); // says zstd, compression byte says deflate
    assert_err(&b, "does not agree with incompatible feature bit 3");
    put64(&mut b, 72, 1 << 4); // extended L2 needs 16 KiB clusters
    assert_err(&b, "at least 16 KiB");
    put64(&mut b, 72, 1); // dirty: readable
    let img = Qcow2Image::from_reader(b.as_slice()).unwrap();
    assert!(img.is_dirty());
    let mut buf = [0u8; 4096];
    img.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [0x11; 4096]);
}

#[test]
fn bad_header_lengths_and_tables_are_refused() {
    let mut b = image(64 << 10, None);
    put32(&mut b, 100, 50);
    assert_err(&b, "header_length 50 is shorter");
    put32(&mut b, 100, 1 << 20);
    assert_err(&b, "larger than a cluster");
    let mut b = image(64 << 10, None);
    put32(&mut b, 56, 1 << 30);
    assert_err(&b, "refcount table of 1073741824 clusters");
    let mut b = image(64 << 10, None);
    put32(&mut b, 60, 1 << 20);
    assert_err(&b, "internal snapshots");
    let mut b = image(64 << 10, None);
    put32(&mut b, 96, 7);
    assert_err(&b, "refcount_order 7");
    // An extension whose length runs off the header cluster.
    let mut b = image(64 << 10, None);
    put32(&mut b, 112, 0x1234_5678);
    put32(&mut b, 116, 0xffff_fff0);
    assert_err(&b, "runs past the header area");
}

#[test]
fn bad_backing_file_names_are_refused() {
    let backing = Some(BackingFile { name: "base.qcow2".into(), format: Some("qcow2".into()) });
    let b = image(64 << 10, backing);
    let name_at = get64(&b, 8);
    let mut long = b.clone();
    put32(&mut long, 16, 2000);
    assert_err(&long, "2000 bytes, longer than the maximum 1023");
    let mut bad = b.clone();
    bad[name_at as usize] = 0xff;
    assert_err(&bad, "not valid UTF-8");
    let mut outside = b.clone();
    put64(&mut outside, 8, CS - 4);
    assert_err(&outside, "is not inside the first cluster");
    let img = Qcow2Image::from_reader(b.as_slice()).unwrap();
    assert_eq!(img.backing_file().unwrap().name, "base.qcow2");
}

#[test]
fn extended_l2_bitmaps_that_contradict_themselves_are_refused() {
    let seed = seeds_dir().join("extl2-16k.qcow2");
    let mut b = std::fs::read(&seed).unwrap();
    let l1 = get64(&b, 40);
    let l2 = get64(&b, l1) & 0x00ff_ffff_ffff_fe00;
    let img = Qcow2Image::from_reader(b.as_slice()).unwrap();
    assert_eq!(img.map(0, 512).unwrap()[0].kind, ExtentKind::Data);
    // Subcluster 0 allocated and zero at once.
    let bitmap = get64(&b, l2 + 8);
    put64(&mut b, l2 + 8, bitmap | 1 << 32 | 1);
    assert_err(&b, "both allocated and zero");
    // Allocated subclusters in an unallocated cluster.
    put64(&mut b, l2, 0);
    put64(&mut b, l2 + 8, 1);
    assert_err(&b, "has allocated subclusters");
}

fn write_backed(path: &Path, backing: &str) {
    let b = BackingFile { name: backing.into(), format: Some("qcow2".into()) };
    let mut w = Qcow2Writer::create(path, 64 << 10, 512, Some(b)).unwrap();
    w.write_cluster(0, &[1; 512]).unwrap();
    w.finish().unwrap();
}

#[test]
fn backing_file_loops_are_found() {
    let d = tempfile::tempdir().unwrap();
    write_backed(&d.path().join("a.qcow2"), "b.qcow2");
    write_backed(&d.path().join("b.qcow2"), "a.qcow2");
    let err = open_chain(d.path().join("a.qcow2")).unwrap_err();
    assert!(matches!(err, Qcow2Error::BackingLoop { .. }), "{err}");
    assert!(err.to_string().contains("a.qcow2 appears twice"), "{err}");
    // A loop through a different spelling of the same file.
    std::fs::create_dir(d.path().join("sub")).unwrap();
    write_backed(&d.path().join("self.qcow2"), "sub/../self.qcow2");
    let err = open_chain(d.path().join("self.qcow2")).unwrap_err();
    assert!(matches!(err, Qcow2Error::BackingLoop { .. }), "{err}");
}

#[test]
fn backing_chains_deeper_than_the_limit_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("0.qcow2");
    Qcow2Writer::create(&base, 64 << 10, 512, None).unwrap().finish().unwrap();
    for i in 1..=strata::qcow2::MAX_CHAIN_DEPTH {
        write_backed(&d.path().join(format!("{i}.qcow2")), &format!("{}.qcow2", i - 1));
    }
    let top = d.path().join(format!("{}.qcow2", strata::qcow2::MAX_CHAIN_DEPTH));
    let err = open_chain(&top).unwrap_err();
    assert!(matches!(err, Qcow2Error::ChainTooDeep { limit: 256, .. }), "{err}");
    // One image less fits exactly.
    let top = d.path().join(format!("{}.qcow2", strata::qcow2::MAX_CHAIN_DEPTH - 1));
    assert_eq!(open_chain(&top).unwrap().len(), 256);
}

#[test]
fn protocol_and_missing_backing_files_are_reported() {
    let d = tempfile::tempdir().unwrap();
    for name in ["nbd://host/export", "json:{\"driver\":\"file\"}", "nbd:localhost:10809"] {
        let p = d.path().join("p.qcow2");
        write_backed(&p, name);
        let err = open_chain(&p).unwrap_err().to_string();
        assert!(err.contains("rebase the image"), "{name}: {err}");
    }
    let p = d.path().join("m.qcow2");
    write_backed(&p, "missing.qcow2");
    let err = open_chain(&p).unwrap_err().to_string();
    assert!(err.contains("missing.qcow2") && err.contains("No such file"), "{err}");
}

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/qcow2_open")
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// One mutation in the manner of libFuzzer, biased toward the header and
/// the metadata tables where the interesting numbers live.
fn mutate(rng: &mut Rng, b: &mut Vec<u8>) {
    let interesting: [u64; 12] =
        [0, 1, 0x7f, 0x200, 0x1000, 0xffff_ffff, 1 << 62, 1 << 63, u64::MAX, 1 << 40, 0x8000_0000, 0x10000];
    let len = b.len() as u64;
    if len == 0 {
        return;
    }
    let hot = |rng: &mut Rng| if rng.below(2) == 0 { rng.below(len.min(512)) } else { rng.below(len) };
    match rng.below(6) {
        0 => {
            let at = hot(rng) as usize;
            b[at] ^= 1 << rng.below(8);
        }
        1 => {
            let at = hot(rng) as usize;
            b[at] = rng.next() as u8;
        }
        2 | 3 => {
            let at = (hot(rng) & !7) as usize;
            if at + 8 <= b.len() {
                let v = interesting[rng.below(12) as usize];
                let v = if rng.below(2) == 0 { v } else { v.wrapping_add(rng.below(3)).wrapping_sub(1) };
                if rng.below(2) == 0 {
                    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
                } else {
                    b[at..at + 4].copy_from_slice(&(v as u32).to_be_bytes());
                }
            }
        }
        4 => b.truncate(rng.below(len) as usize),
        _ => {
            // Copy an 8-byte word elsewhere: makes table entries alias.
            let (from, to) = ((rng.below(len) & !7) as usize, (hot(rng) & !7) as usize);
            if from + 8 <= b.len() && to + 8 <= b.len() {
                let w: [u8; 8] = b[from..from + 8].try_into().unwrap();
                b[to..to + 8].copy_from_slice(&w);
            }
        }
    }
}

#[test]
fn fuzz_body_survives_seeds_and_thousands_of_mutations() {
    let mut seeds: Vec<Vec<u8>> =
        std::fs::read_dir(seeds_dir()).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap()).collect();
    assert!(seeds.len() >= 6, "seed corpus missing");
    seeds.push(image(64 << 10, Some(BackingFile { name: "b".into(), format: None })));
    for s in &seeds {
        fuzz_open_map_read(s);
        assert!(Qcow2Image::from_reader(s.as_slice()).is_ok(), "every seed is a valid image");
    }
    let mut rng = Rng(0x5eed_0c02);
    let mut opened = 0;
    for i in 0..6000 {
        let mut b = seeds[i % seeds.len()].clone();
        for _ in 0..=rng.below(4) {
            mutate(&mut rng, &mut b);
        }
        fuzz_open_map_read(&b);
        opened += Qcow2Image::from_reader(b.as_slice()).is_ok() as u32;
    }
    // The mutations must not all be rejected at the magic: most still open.
    assert!(opened > 1000, "only {opened} mutated images opened");
}
