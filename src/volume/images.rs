//! Image files in and out: qcow2 import (a backing chain becomes a strata
//! chain with the same layers and parents), qcow2 export of a volume or a
//! snapshot, and export of a whole chain as a qcow2 chain.
//!
//! Import follows the same job discipline as a raw import: the volume is
//! ILLEGAL with an `import` job until every layer is in, so a crash leaves
//! something `volume remove --force` cleans up, never a half chain served
//! as if complete.
//!
//! qcow2 clusters are larger than our 4 KiB blocks; on export each cluster
//! that holds data is written whole (as qcow2 would after copy-on-write),
//! with the content the chain resolves to at that layer.

use super::{Engine, Error, Layer, Result, VolumeInfo, rlock, wlock};
use crate::catalog::Legality;
use crate::format::{self, BLOCK_SIZE_U64};
use crate::qcow2::{self, BackingFile, ChainImage, ExtentKind, Qcow2Writer};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What kind of image a file is, by its first bytes.
pub fn sniff(path: &Path) -> Result<&'static str> {
    let mut f = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(format!("cannot import {}: no such file", path.display()))
        } else {
            Error::io(format!("opening {}", path.display()), e)
        }
    })?;
    let mut m = [0u8; 4];
    use std::io::Read;
    let n = f.read(&mut m).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    Ok(if n == 4 && &m == b"QFI\xfb" { "qcow2" } else { "raw" })
}

fn qerr(path: &Path) -> impl Fn(qcow2::Qcow2Error) -> Error + '_ {
    move |e| Error::InvalidArgument(format!("{}: {e}", path.display()))
}

fn snapshot_name_for(p: &Path, used: &mut BTreeSet<String>) -> String {
    let stem = p.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "layer".into());
    let clean: String = stem.chars().map(|c| if c == '/' || c == '@' || c == '\0' { '_' } else { c }).collect();
    let mut n = clean.clone();
    let mut i = 2;
    while !used.insert(n.clone()) {
        n = format!("{clean}-{i}");
        i += 1;
    }
    n
}

impl Engine {
    /// Import a raw or qcow2 file (detected by its magic) as a new volume.
    pub fn import(&self, file: &Path, name: &str, progress: &mut dyn FnMut(u64, u64)) -> Result<VolumeInfo> {
        match sniff(file)? {
            "qcow2" => self.import_qcow2(file, name, progress),
            _ => self.import_raw(file, name, progress),
        }
    }

    /// Import a qcow2 image and its backing chain: each image becomes a
    /// layer (base first), each layer below the top a snapshot named after
    /// its file.
    pub fn import_qcow2(&self, file: &Path, name: &str, progress: &mut dyn FnMut(u64, u64)) -> Result<VolumeInfo> {
        self.check_writable()?;
        super::validate_name(name)?;
        let images = qcow2::open_chain(file).map_err(qerr(file))?;
        let top_size = match images.last() {
            Some(ChainImage::Qcow2 { image, .. }) => image.virtual_size(),
            Some(ChainImage::Raw { size, .. }) => *size,
            None => return Err(Error::InvalidArgument(format!("{}: empty chain", file.display()))),
        };
        // Work to do, for the progress bar: allocated bytes of every image.
        let mut total = 0u64;
        for im in &images {
            total += match im {
                ChainImage::Qcow2 { image, .. } => image
                    .map(0, image.virtual_size())
                    .map_err(qerr(file))?
                    .iter()
                    .filter(|e| e.kind == ExtentKind::Data)
                    .map(|e| e.len)
                    .sum::<u64>(),
                ChainImage::Raw { size, .. } => *size,
            };
        }
        let (disk, leaf) =
            self.catalog.create_disk(name, top_size, Legality::Illegal).map_err(|e| self.name_err(e, name))?;
        wlock(&self.layers).insert(leaf.guid, Layer::new(leaf.guid, self.new_map()));
        let job = self.catalog.begin_job(
            "import",
            disk.guid,
            &format!("{{\"source\":{:?},\"format\":\"qcow2\"}}", file.display().to_string()),
        )?;
        let res = (|| -> Result<()> {
            let v = self.open_disk(&disk, true)?;
            let mut done = 0u64;
            let mut used = BTreeSet::new();
            let mut buf = Vec::new();
            for (i, im) in images.iter().enumerate() {
                // Every layer has the size of its image; the chain may grow.
                let size = match im {
                    ChainImage::Qcow2 { image, .. } => image.virtual_size(),
                    ChainImage::Raw { size, .. } => *size,
                };
                if size > v.capacity() {
                    v.resize(size)?;
                }
                match im {
                    ChainImage::Qcow2 { image, path } => {
                        for ext in image.map(0, size).map_err(qerr(path))? {
                            match ext.kind {
                                ExtentKind::Unallocated => {}
                                ExtentKind::Zero => {
                                    if i > 0 {
                                        v.discard(ext.offset, ext.len)?;
                                    }
                                }
                                ExtentKind::Data => {
                                    let mut off = ext.offset;
                                    while off < ext.offset + ext.len {
                                        let n = (ext.offset + ext.len - off).min(1 << 20);
                                        buf.resize(n as usize, 0);
                                        image.read_at(&mut buf, off).map_err(qerr(path))?;
                                        v.write_at(&buf, off)?;
                                        off += n;
                                        done += n;
                                        progress(done, total);
                                    }
                                }
                            }
                        }
                    }
                    ChainImage::Raw { path, size } => {
                        use std::os::unix::fs::FileExt;
                        let f = std::fs::File::open(path)
                            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
                        let mut off = 0;
                        while off < *size {
                            let n = (*size - off).min(1 << 20);
                            buf.resize(n as usize, 0);
                            f.read_exact_at(&mut buf, off)
                                .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
                            if !format::is_zero(&buf) {
                                v.write_at(&buf, off)?;
                            }
                            off += n;
                            done += n;
                            progress(done, total);
                        }
                    }
                }
                if i + 1 < images.len() {
                    let p = match im {
                        ChainImage::Qcow2 { path, .. } | ChainImage::Raw { path, .. } => path,
                    };
                    self.snapshot_create(&disk.guid.to_string(), &snapshot_name_for(p, &mut used))?;
                }
            }
            v.flush()?;
            Ok(())
        })();
        if let Err(e) = res {
            if let Err(e2) = self.remove_volume(&disk.guid.to_string(), true) {
                tracing::error!(%e2, "cleaning up the failed import");
            }
            return Err(e);
        }
        for l in self.catalog.disk_layers(disk.guid)? {
            self.catalog.set_legality(l.guid, Legality::Legal)?;
        }
        self.catalog.finish_job(job)?;
        self.info_for(&self.catalog.disk(disk.guid)?)
    }

    /// A volume or a snapshot (`VOL@SNAP`) for reading.
    pub fn open_for_export(&self, spec: &str) -> Result<Arc<super::Volume>> {
        match spec.rsplit_once('@') {
            Some((v, s)) if !v.is_empty() && !s.is_empty() && self.disk_of(spec).is_err() => self.open_snapshot(v, s),
            _ => self.open_volume(spec),
        }
    }

    /// Export a volume or snapshot as one qcow2 image (no backing file).
    pub fn export_qcow2(&self, spec: &str, file: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        let v = self.open_for_export(spec)?;
        let cap = v.capacity();
        if cap % 512 != 0 {
            return Err(Error::InvalidArgument(format!(
                "{spec} is {cap} bytes, not a multiple of 512: qcow2 cannot hold it; export it as raw"
            )));
        }
        let cs = qcow2::DEFAULT_CLUSTER_SIZE as u64;
        let mut w = Qcow2Writer::create(file, cap, cs as u32, None).map_err(qerr(file))?;
        let mut buf = vec![0u8; cs as usize];
        let mut off = 0u64;
        while off < cap {
            let Some(d) = v.next_data(off) else { break };
            let mut c = d - d % cs;
            let hole = v.next_hole(d);
            while c < hole {
                let n = cs.min(cap - c) as usize;
                buf[n..].fill(0);
                v.read_at(&mut buf[..n], c)?;
                if !format::is_zero(&buf) {
                    w.write_cluster(c, &buf).map_err(qerr(file))?;
                }
                c += cs;
                progress(c.min(cap), cap);
            }
            off = c;
        }
        w.finish().map_err(qerr(file))?;
        progress(cap, cap);
        Ok(())
    }

    /// Export a volume's whole chain as a qcow2 chain in `dir`: one image per
    /// layer, base first, each backed by the one below (relative names).
    /// Returns the paths, base first; the last is the active layer.
    pub fn export_qcow2_chain(
        &self,
        vol: &str,
        dir: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Vec<PathBuf>> {
        let d = self.disk_of(vol)?;
        let rows = self.catalog.chain(d.guid)?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let cs = qcow2::DEFAULT_CLUSTER_SIZE as u64;
        let blocks_per_cluster = cs / BLOCK_SIZE_U64;
        let mut out = Vec::new();
        let engine = self.me.upgrade().ok_or_else(|| Error::ReadOnly("the store is closing".into()))?;
        for (i, r) in rows.iter().enumerate() {
            if r.capacity % 512 != 0 {
                return Err(Error::InvalidArgument(format!(
                    "layer {} is {} bytes, not a multiple of 512",
                    r.guid, r.capacity
                )));
            }
            let name = format!("{}-{:02}-{}.qcow2", d.name, i, &r.guid.to_string()[..8]);
            let path = dir.join(&name);
            let backing = out.last().map(|p: &PathBuf| BackingFile {
                name: p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                format: Some("qcow2".into()),
            });
            let mut w = Qcow2Writer::create(&path, r.capacity, cs as u32, backing).map_err(qerr(&path))?;
            // The clusters this layer touches, read through the chain up to it.
            let layer = self.layer(r.guid)?;
            let clusters: BTreeSet<u64> = rlock(&layer.map).iter().map(|(b, _)| b / blocks_per_cluster).collect();
            let chain_layers: Vec<Arc<Layer>> = rows[..=i].iter().map(|x| self.layer(x.guid)).collect::<Result<_>>()?;
            let view =
                super::Volume::new(engine.clone(), d.guid, format!("{}#{i}", d.name), r.capacity, chain_layers, true);
            let mut buf = vec![0u8; cs as usize];
            let n_clusters = clusters.len() as u64;
            for (k, c) in clusters.into_iter().enumerate() {
                let off = c * cs;
                if off >= r.capacity {
                    continue;
                }
                let n = cs.min(r.capacity - off) as usize;
                buf[n..].fill(0);
                view.read_at(&mut buf[..n], off)?;
                if format::is_zero(&buf) {
                    if i > 0 {
                        w.write_zero_cluster(off).map_err(qerr(&path))?;
                    }
                } else {
                    w.write_cluster(off, &buf).map_err(qerr(&path))?;
                }
                progress(k as u64 + 1, n_clusters);
            }
            w.finish().map_err(qerr(&path))?;
            out.push(path);
        }
        Ok(out)
    }
}
