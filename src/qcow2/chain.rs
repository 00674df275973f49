//! Following a qcow2 backing chain on the local file system.
//!
//! Names are resolved as qemu does for local files: a relative name is
//! relative to the directory of the image that names it. Protocol names
//! (`nbd:`, `json:{...}`, `http://`...) are refused: strata imports files.
//! Without a backing format extension the format is probed by the qcow2
//! magic, anything else being raw (as qemu does when probing). Loops are
//! found by canonical path; depth is capped at [`super::MAX_CHAIN_DEPTH`].

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::error::{Qcow2Error, Result};
use super::header::MAGIC;
use super::io::read_full;
use super::reader::Qcow2Image;
use super::{BackingFile, MAX_CHAIN_DEPTH};

/// One member of a backing chain.
#[derive(Debug)]
pub enum ChainImage {
    Qcow2 {
        path: PathBuf,
        image: Box<Qcow2Image<File>>,
    },
    /// A raw base image (only ever the first element of a chain).
    Raw {
        path: PathBuf,
        size: u64,
    },
}

impl ChainImage {
    pub fn path(&self) -> &Path {
        match self {
            ChainImage::Qcow2 { path, .. } | ChainImage::Raw { path, .. } => path,
        }
    }
    pub fn virtual_size(&self) -> u64 {
        match self {
            ChainImage::Qcow2 { image, .. } => image.virtual_size(),
            ChainImage::Raw { size, .. } => *size,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Qcow2,
    Raw,
}

/// Opens the qcow2 image at `path` and every image under it, base first
/// (the image at `path` is last).
pub fn open_chain(path: impl AsRef<Path>) -> Result<Vec<ChainImage>> {
    let mut chain = Vec::new();
    let mut seen = HashSet::new();
    let mut next = Some((path.as_ref().to_owned(), Format::Qcow2));
    while let Some((path, format)) = next.take() {
        if chain.len() >= MAX_CHAIN_DEPTH {
            return Err(Qcow2Error::ChainTooDeep { limit: MAX_CHAIN_DEPTH, path });
        }
        let canonical =
            std::fs::canonicalize(&path).map_err(|source| Qcow2Error::Opening { path: path.clone(), source })?;
        if !seen.insert(canonical) {
            return Err(Qcow2Error::BackingLoop { path });
        }
        let wrap = |e: Qcow2Error| Qcow2Error::InChain { path: path.clone(), source: Box::new(e) };
        match format {
            Format::Raw => {
                let size = std::fs::metadata(&path)
                    .map_err(|source| Qcow2Error::Opening { path: path.clone(), source })?
                    .len();
                chain.push(ChainImage::Raw { path, size });
            }
            Format::Qcow2 => {
                let image = Qcow2Image::open(&path).map_err(wrap)?;
                if let Some(backing) = image.backing_file() {
                    let child = resolve(&path, backing)?;
                    let fmt = backing_format(&path, &child, backing)?;
                    next = Some((child, fmt));
                }
                chain.push(ChainImage::Qcow2 { path, image: Box::new(image) });
            }
        }
    }
    chain.reverse();
    Ok(chain)
}

/// The path a backing file name refers to, from the image that names it.
pub fn resolve(image: &Path, backing: &BackingFile) -> Result<PathBuf> {
    let bad = |reason: &str| Qcow2Error::BadBackingFile {
        image: image.to_owned(),
        name: backing.name.clone(),
        reason: reason.to_owned(),
    };
    let mut name = backing.name.as_str();
    if let Some(rest) = name.strip_prefix("file:") {
        name = rest;
    }
    if name.starts_with("json:") || name.contains("://") {
        return Err(bad("is not a local file name; rebase the image onto a local file first"));
    }
    // qemu reads "proto:rest" as a protocol when no '/' precedes the colon.
    if let Some(colon) = name.find(':')
        && !name[..colon].contains('/')
    {
        return Err(bad("looks like a qemu protocol name; rebase the image onto a local file first"));
    }
    let p = Path::new(name);
    if p.is_absolute() {
        return Ok(p.to_owned());
    }
    let dir = image.parent().unwrap_or(Path::new("."));
    Ok(dir.join(p))
}

fn backing_format(image: &Path, child: &Path, backing: &BackingFile) -> Result<Format> {
    match backing.format.as_deref() {
        Some("qcow2") => Ok(Format::Qcow2),
        Some("raw") => Ok(Format::Raw),
        Some(other) => Err(Qcow2Error::BadBackingFile {
            image: image.to_owned(),
            name: backing.name.clone(),
            reason: format!("has format {other:?}; strata follows qcow2 and raw backing files only"),
        }),
        None => {
            let f = File::open(child).map_err(|source| Qcow2Error::Opening { path: child.to_owned(), source })?;
            let mut magic = [0u8; 4];
            let n = read_full(&f, &mut magic, 0).map_err(|source| Qcow2Error::Reading {
                what: "magic",
                offset: 0,
                source,
            })?;
            Ok(if n == 4 && magic == MAGIC { Format::Qcow2 } else { Format::Raw })
        }
    }
}
