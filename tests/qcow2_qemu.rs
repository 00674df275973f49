//! The qcow2 reader and writer against real qemu-img and qemu-io: images
//! made by qemu are read and compared with `qemu-img convert -O raw`;
//! images made by the writer must pass `qemu-img check` and compare
//! identical with `qemu-img compare`.
//!
//! Needs qemu-img and qemu-io (Debian package qemu-utils); each test says
//! so and passes without checking anything when they are missing.

use std::path::Path;
use std::process::Command;

use strata::qcow2::{BackingFile, ChainImage, DEFAULT_CLUSTER_SIZE, ExtentKind, Qcow2Image, Qcow2Writer, open_chain};

fn have_qemu() -> bool {
    let ok = Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success())
        && Command::new("qemu-io").arg("--version").output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: qemu-img/qemu-io not installed (apt-get install qemu-utils)");
    }
    ok
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn qemu_img(args: &[&str]) -> String {
    run(Command::new("qemu-img").args(args))
}

/// `qemu-io -f qcow2 -c CMD... FILE`
fn qemu_io(file: &Path, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "qcow2"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(file);
    run(&mut c);
}

/// The whole guest disk as qemu sees it, through the backing chain.
fn qemu_raw(dir: &Path, image: &Path) -> Vec<u8> {
    let raw = dir.join("qemu-view.raw");
    qemu_img(&["convert", "-O", "raw", image.to_str().unwrap(), raw.to_str().unwrap()]);
    let bytes = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    bytes
}

/// Reads `[offset, offset + buf.len())` through a chain, top first, using
/// only each layer's own map: what a layer leaves unallocated comes from
/// the layer below; below the base, and past a layer's size, zeros.
fn read_chain(chain: &[ChainImage], buf: &mut [u8], offset: u64) {
    buf.fill(0);
    let Some((top, below)) = chain.split_last() else { return };
    match top {
        ChainImage::Raw { path, size } => {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::open(path).unwrap();
            let n = (buf.len() as u64).min(size.saturating_sub(offset)) as usize;
            f.read_exact_at(&mut buf[..n], offset).unwrap();
        }
        ChainImage::Qcow2 { image, .. } => {
            let n = (buf.len() as u64).min(image.virtual_size().saturating_sub(offset)) as usize;
            let extents = image.read_at(&mut buf[..n], offset).unwrap();
            for e in extents.iter().filter(|e| e.kind == ExtentKind::Unallocated) {
                let at = (e.offset - offset) as usize;
                read_chain(below, &mut buf[at..at + e.len as usize], e.offset);
            }
        }
    }
}

fn read_whole_chain(top: &Path) -> (Vec<ChainImage>, Vec<u8>) {
    let chain = open_chain(top).unwrap();
    let size = chain.last().unwrap().virtual_size();
    let mut buf = vec![0u8; size as usize];
    // In odd-sized pieces, to cross cluster and L2 boundaries unaligned.
    let mut pos = 0;
    while pos < size {
        let n = (size - pos).min(300_000);
        read_chain(&chain, &mut buf[pos as usize..(pos + n) as usize], pos);
        pos += n;
    }
    (chain, buf)
}

fn create(path: &Path, opts: &str, size: &str) {
    let mut args = vec!["create", "-q", "-f", "qcow2"];
    if !opts.is_empty() {
        args.extend(["-o", opts]);
    }
    args.extend([path.to_str().unwrap(), size]);
    qemu_img(&args);
}

fn patterned(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            // Half the 4 KiB blocks compressible text, half noise, some zero.
            match (i / 4096) % 4 {
                0 => b"strata qcow2 "[i % 13],
                1 => 0,
                _ => {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                }
            }
        })
        .collect()
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn version_2_image_reads_like_qemu() {
    if !have_qemu() {
        return;
    }
    let d = tmp();
    let img = d.path().join("v2.qcow2");
    create(&img, "compat=0.10", "4M");
    qemu_io(&img, &["write -P 0xab 0 64k", "write -P 0xcd 1M 4k", "write -P 0xef 3M 5000"]);
    let image = Qcow2Image::open(&img).unwrap();
    assert_eq!(image.header().version, 2);
    let (_, ours) = read_whole_chain(&img);
    assert!(ours == qemu_raw(d.path(), &img));
    let map = image.map(0, 4 << 20).unwrap();
    assert_eq!(map[0].kind, ExtentKind::Data);
    assert_eq!(map[0].len, 64 << 10);
    assert_eq!(map[1].kind, ExtentKind::Unallocated);
    assert!(map.iter().all(|e| e.kind != ExtentKind::Zero));
}

#[test]
fn version_3_zero_clusters_read_as_zero_extents() {
    if !have_qemu() {
        return;
    }
    let d = tmp();
    let img = d.path().join("v3.qcow2");
    create(&img, "", "8M");
    qemu_io(&img, &["write -P 0xab 0 256k", "write -z 64k 128k", "write -z 4M 64k", "write -P 0x12 7M 64k"]);
    let image = Qcow2Image::open(&img).unwrap();
    let map = image.map(0, 8 << 20).unwrap();
    let kinds: Vec<_> = map.iter().map(|e| (e.offset >> 16, e.len >> 16, e.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (0, 1, ExtentKind::Data),
            (1, 2, ExtentKind::Zero),
            (3, 1, ExtentKind::Data),
            (4, 60, ExtentKind::Unallocated),
            (64, 1, ExtentKind::Zero),
            (65, 47, ExtentKind::Unallocated),
            (112, 1, ExtentKind::Data),
            (113, 15, ExtentKind::Unallocated),
        ]
    );
    let (_, ours) = read_whole_chain(&img);
    assert!(ours == qemu_raw(d.path(), &img));
}

fn compressed_image_reads_like_qemu(opts: &str) {
    let d = tmp();
    let raw = d.path().join("src.raw");
    let data = patterned(3 << 20, 7);
    std::fs::write(&raw, &data).unwrap();
    let img = d.path().join("c.qcow2");
    let o = format!("cluster_size=65536{opts}");
    qemu_img(&["convert", "-c", "-O", "qcow2", "-o", &o, raw.to_str().unwrap(), img.to_str().unwrap()]);
    let image = Qcow2Image::open(&img).unwrap();
    assert!(std::fs::metadata(&img).unwrap().len() < data.len() as u64);
    let mut buf = vec![0u8; data.len()];
    image.read_at(&mut buf, 0).unwrap();
    assert!(buf == data);
    // Unaligned reads out of the middle of compressed clusters.
    let mut small = vec![0u8; 70_000];
    image.read_at(&mut small, 100_001).unwrap();
    assert!(small[..] == data[100_001..170_001]);
}

#[test]
fn deflate_compressed_image_reads_like_qemu() {
    if !have_qemu() {
        return;
    }
    compressed_image_reads_like_qemu("");
}

#[test]
fn zstd_compressed_image_reads_like_qemu() {
    if !have_qemu() {
        return;
    }
    compressed_image_reads_like_qemu(",compression_type=zstd");
    let d = tmp();
    let raw = d.path().join("src.raw");
    std::fs::write(&raw, patterned(1 << 20, 3)).unwrap();
    let img = d.path().join("z.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        "-o",
        "compression_type=zstd",
        raw.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    assert_eq!(Qcow2Image::open(&img).unwrap().header().compression_type, strata::qcow2::CompressionType::Zstd);
}

#[test]
fn three_deep_chain_reads_like_qemu_top_down() {
    if !have_qemu() {
        return;
    }
    let d = tmp();
    let base = d.path().join("base.qcow2");
    create(&base, "", "4M");
    qemu_io(&base, &["write -P 0x01 0 4M"]);
    // Relative backing names, resolved against each image's directory.
    std::fs::create_dir(d.path().join("sub")).unwrap();
    let mid = d.path().join("sub/mid.qcow2");
    create(&mid, "backing_file=../base.qcow2,backing_fmt=qcow2", "4M");
    qemu_io(&mid, &["write -P 0x02 64k 64k", "write -z 1M 128k", "write -P 0x22 2M 1000"]);
    let top = d.path().join("sub/top.qcow2");
    create(&top, "backing_file=mid.qcow2,backing_fmt=qcow2", "4M");
    qemu_io(&top, &["write -P 0x03 96k 64k", "write -z 3M 64k", "write -P 0x33 1M 4k"]);

    let (chain, ours) = read_whole_chain(&top);
    assert_eq!(chain.len(), 3);
    assert!(chain[0].path().ends_with("base.qcow2"));
    assert!(chain[2].path().ends_with("top.qcow2"));
    let ChainImage::Qcow2 { image, .. } = &chain[2] else { panic!("top is qcow2") };
    let b = image.backing_file().unwrap();
    assert_eq!((b.name.as_str(), b.format.as_deref()), ("mid.qcow2", Some("qcow2")));
    assert!(ours == qemu_raw(d.path(), &top));
}

#[test]
fn chain_with_a_raw_base_reads_like_qemu() {
    if !have_qemu() {
        return;
    }
    let d = tmp();
    let base = d.path().join("base.img");
    // A raw base smaller than the top: the rest reads as zeros.
    std::fs::write(&base, patterned(1 << 20, 9)).unwrap();
    let top = d.path().join("top.qcow2");
    create(&top, &format!("backing_file={},backing_fmt=raw", base.display()), "2M");
    qemu_io(&top, &["write -P 0x44 512k 64k", "write -z 0 64k"]);
    let (chain, ours) = read_whole_chain(&top);
    assert!(matches!(chain[0], ChainImage::Raw { size: 1048576, .. }));
    assert!(ours == qemu_raw(d.path(), &top));
}

#[test]
fn extended_l2_subclusters_read_like_qemu() {
    if !have_qemu() {
        return;
    }
    let d = tmp();
    let base = d.path().join("base.qcow2");
    create(&base, "", "2M");
    qemu_io(&base, &["write -P 0x05 0 2M"]);
    let img = d.path().join("ext.qcow2");
    create(&img, "extended_l2=on,backing_file=base.qcow2,backing_fmt=qcow2", "2M");
    // 64 KiB clusters, 2 KiB subclusters.
    qemu_io(&img, &["write -P 0x06 2k 2k", "write -z 8k 4k", "write -P 0x07 70k 1k", "write -P 0x08 1M 64k"]);
    let image = Qcow2Image::open(&img).unwrap();
    assert!(image.header().has_extended_l2());
    let map = image.map(0, 16 << 10).unwrap();
    let kinds: Vec<_> = map.iter().map(|e| (e.offset >> 10, e.len >> 10, e.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (0, 2, ExtentKind::Unallocated),
            (2, 2, ExtentKind::Data),
            (4, 4, ExtentKind::Unallocated),
            (8, 4, ExtentKind::Zero),
            (12, 4, ExtentKind::Unallocated),
        ]
    );
    let (_, ours) = read_whole_chain(&img);
    assert!(ours == qemu_raw(d.path(), &img));
}

#[test]
fn smallest_and_largest_cluster_sizes_read_like_qemu() {
    if !have_qemu() {
        return;
    }
    for cs in ["512", "2M"] {
        let d = tmp();
        let img = d.path().join("c.qcow2");
        create(&img, &format!("cluster_size={cs}"), "5M");
        qemu_io(&img, &["write -P 0x09 1000 70000", "write -z 4M 512", "write -P 0x0a 4194816 4096"]);
        let (_, ours) = read_whole_chain(&img);
        assert!(ours == qemu_raw(d.path(), &img), "cluster size {cs}");
    }
}

fn check_clean(img: &Path) {
    let out = Command::new("qemu-img").args(["check", img.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("No errors were found"),
        "qemu-img check {}: {text}{}",
        img.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn compare_identical(a: &Path, b: &Path, b_fmt: &str) {
    let out = qemu_img(&["compare", "-F", b_fmt, a.to_str().unwrap(), b.to_str().unwrap()]);
    assert!(out.contains("Images are identical"), "{out}");
}

/// Writes `data` with the writer, one cluster at a time.
fn write_image(path: &Path, data: &[u8], cluster_size: u32, backing: Option<BackingFile>) {
    let mut w = Qcow2Writer::create(path, data.len() as u64, cluster_size, backing).unwrap();
    for (i, chunk) in data.chunks(cluster_size as usize).enumerate() {
        w.write_cluster(i as u64 * u64::from(cluster_size), chunk).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn written_image_passes_qemu_check_and_compares_identical() {
    if !have_qemu() {
        return;
    }
    for (cs, size) in [(DEFAULT_CLUSTER_SIZE, 3 << 20), (512, 1 << 20), (4096, (1 << 20) + 1536), (2 << 20, 5 << 20)] {
        let d = tmp();
        let raw = d.path().join("src.raw");
        let data = patterned(size, cs);
        std::fs::write(&raw, &data).unwrap();
        let img = d.path().join("out.qcow2");
        write_image(&img, &data, cs, None);
        check_clean(&img);
        compare_identical(&img, &raw, "raw");
        // And our own reader agrees, with zero clusters left unallocated.
        let image = Qcow2Image::open(&img).unwrap();
        let mut back = vec![0u8; size];
        let extents = image.read_at(&mut back, 0).unwrap();
        assert!(back == data, "cluster size {cs}");
        assert!(extents.iter().all(|e| e.kind != ExtentKind::Zero));
    }
}

#[test]
fn written_image_with_many_l2_tables_stays_clean_under_eviction() {
    if !have_qemu() {
        return;
    }
    // 512-byte clusters: one L2 table per 32 KiB, so 64 MiB of scattered
    // writes touch 2048 tables, more than the writer keeps resident.
    let d = tmp();
    let size = 64u64 << 20;
    let img = d.path().join("sparse.qcow2");
    let mut w = Qcow2Writer::create(&img, size, 512, None).unwrap();
    let mut expect = Vec::new();
    for round in 0..2u64 {
        for i in 0..2048u64 {
            let off = ((i * 7919 + round * 13) % 2048) * 32768 + round * 512;
            let block = vec![(i % 251) as u8 + 1; 512];
            w.write_cluster(off, &block).unwrap();
            expect.push((off, block));
        }
    }
    // Overwrite in place and zero a written cluster: neither may leak.
    w.write_cluster(0, &[0xaa; 512]).unwrap();
    w.write_cluster(13 * 512, &[0; 512]).unwrap();
    w.finish().unwrap();
    check_clean(&img);
    let image = Qcow2Image::open(&img).unwrap();
    for (off, block) in expect.iter().filter(|(o, _)| *o != 0 && *o != 13 * 512) {
        let mut b = vec![0u8; 512];
        image.read_at(&mut b, *off).unwrap();
        assert_eq!(&b, block, "at {off:#x}");
    }
    let mut b = vec![0u8; 512];
    image.read_at(&mut b, 0).unwrap();
    assert_eq!(b, vec![0xaa; 512]);
}

#[test]
fn written_image_over_a_backing_file_compares_identical_to_the_flattened_chain() {
    if !have_qemu() {
        return;
    }
    let d = tmp();
    let size = 4usize << 20;
    let base = d.path().join("base.qcow2");
    create(&base, "", "4M");
    qemu_io(&base, &["write -P 0x61 0 4M"]);
    // The new top: some clusters changed, some zeroed over base data, the
    // rest left to the base.
    let mut flat = vec![0x61u8; size];
    let cs = DEFAULT_CLUSTER_SIZE as usize;
    let top = d.path().join("top.qcow2");
    let backing = BackingFile { name: "base.qcow2".into(), format: Some("qcow2".into()) };
    let mut w = Qcow2Writer::create(&top, size as u64, DEFAULT_CLUSTER_SIZE, Some(backing)).unwrap();
    for i in (0..size / cs).filter(|i| i % 3 != 0) {
        let chunk: Vec<u8> = if i % 3 == 1 { patterned(cs, i as u32) } else { vec![0; cs] };
        flat[i * cs..(i + 1) * cs].copy_from_slice(&chunk);
        w.write_cluster((i * cs) as u64, &chunk).unwrap();
    }
    w.finish().unwrap();
    check_clean(&top);
    let flat_path = d.path().join("flat.raw");
    std::fs::write(&flat_path, &flat).unwrap();
    compare_identical(&top, &flat_path, "raw");
    let info = qemu_img(&["info", top.to_str().unwrap()]);
    assert!(info.contains("backing file: base.qcow2"), "{info}");
    assert!(info.contains("backing file format: qcow2"), "{info}");
    let (chain, ours) = read_whole_chain(&top);
    assert_eq!(chain.len(), 2);
    assert!(ours == flat);
}

#[test]
fn dirty_image_left_by_a_crash_still_reads_like_qemu() {
    if !have_qemu() {
        return;
    }
    let d = tmp();
    let img = d.path().join("dirty.qcow2");
    create(&img, "lazy_refcounts=on", "1M");
    // qemu-io's abort kills the process with the dirty bit still set.
    let status = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0xab 0 64k", "-c", "abort"])
        .arg(&img)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    let image = Qcow2Image::open(&img).unwrap();
    assert!(image.is_dirty());
    let (_, ours) = read_whole_chain(&img);
    assert!(ours == qemu_raw(d.path(), &img));
}

#[test]
fn internal_snapshots_are_ignored_and_the_active_state_is_read() {
    if !have_qemu() {
        return;
    }
    let d = tmp();
    let img = d.path().join("snap.qcow2");
    create(&img, "", "2M");
    qemu_io(&img, &["write -P 0x01 0 1M"]);
    qemu_img(&["snapshot", "-c", "s1", img.to_str().unwrap()]);
    qemu_io(&img, &["write -P 0x02 512k 1M", "write -z 0 64k"]);
    let image = Qcow2Image::open(&img).unwrap();
    assert_eq!(image.header().nb_snapshots, 1);
    let (_, ours) = read_whole_chain(&img);
    assert!(ours == qemu_raw(d.path(), &img));
}

#[test]
fn concurrent_reads_agree_with_the_source() {
    if !have_qemu() {
        return;
    }
    let d = tmp();
    let raw = d.path().join("src.raw");
    let data = patterned(8 << 20, 5);
    std::fs::write(&raw, &data).unwrap();
    // 512-byte clusters: 256 L2 tables, read by 4 threads at once through
    // a cache of 8 tables, so tables are evicted and reloaded under load.
    let img = d.path().join("c.qcow2");
    qemu_img(&["convert", "-O", "qcow2", "-o", "cluster_size=512", raw.to_str().unwrap(), img.to_str().unwrap()]);
    let image = Qcow2Image::open(&img).unwrap().with_l2_cache_bytes(8 * 512);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (image, data) = (&image, &data);
            s.spawn(move || {
                let mut buf = vec![0u8; 10_000];
                for i in 0..200u64 {
                    let off = (i * 7_777_777 + t * 1_234_567) % (data.len() as u64 - 10_000);
                    image.read_at(&mut buf, off).unwrap();
                    assert!(buf[..] == data[off as usize..off as usize + 10_000]);
                }
            });
        }
    });
}
