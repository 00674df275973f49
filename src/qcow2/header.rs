//! The qcow2 header and its extensions: layout, parsing with validation,
//! and serialisation for the writer.
//!
//! All qcow2 numbers are big-endian. Layout of the first cluster:
//!
//! ```text
//!  off  size  field                    notes
//!    0     4  magic                    "QFI\xfb"
//!    4     4  version                  2 or 3
//!    8     8  backing_file_offset      0 = no backing file
//!   16     4  backing_file_size        name length, no NUL, <= 1023
//!   20     4  cluster_bits             9..=21 here (qemu's limits)
//!   24     8  size                     virtual size in bytes
//!   32     4  crypt_method             must be 0 (encryption refused)
//!   36     4  l1_size                  entries in the active L1 table
//!   40     8  l1_table_offset          cluster aligned
//!   48     8  refcount_table_offset    cluster aligned
//!   56     4  refcount_table_clusters
//!   60     4  nb_snapshots             internal snapshots (not read)
//!   64     8  snapshots_offset
//!   -- version 3 only (version 2 headers end at 72) --
//!   72     8  incompatible_features    bit 0 dirty, 1 corrupt, 2 external
//!                                      data file, 3 compression type,
//!                                      4 extended L2 entries
//!   80     8  compatible_features      bit 0 lazy refcounts
//!   88     8  autoclear_features
//!   96     4  refcount_order           refcount width = 1 << order bits
//!  100     4  header_length            >= 104
//!  104     1  compression_type         0 deflate, 1 zstd (if length > 104)
//!  105     7  padding
//!  header_length..  extensions: u32 type, u32 len, data padded to 8;
//!                   type 0 ends the list
//!  backing_file_offset..  backing file name (backing_file_size bytes)
//! ```

use super::error::{Qcow2Error, Result};

pub const MAGIC: [u8; 4] = *b"QFI\xfb";

pub const OFF_VERSION: usize = 4;
pub const OFF_BACKING_FILE_OFFSET: usize = 8;
pub const OFF_BACKING_FILE_SIZE: usize = 16;
pub const OFF_CLUSTER_BITS: usize = 20;
pub const OFF_SIZE: usize = 24;
pub const OFF_CRYPT_METHOD: usize = 32;
pub const OFF_L1_SIZE: usize = 36;
pub const OFF_L1_TABLE_OFFSET: usize = 40;
pub const OFF_REFCOUNT_TABLE_OFFSET: usize = 48;
pub const OFF_REFCOUNT_TABLE_CLUSTERS: usize = 56;
pub const OFF_NB_SNAPSHOTS: usize = 60;
pub const OFF_SNAPSHOTS_OFFSET: usize = 64;
pub const V2_HEADER_LEN: usize = 72;
pub const OFF_INCOMPATIBLE: usize = 72;
pub const OFF_COMPATIBLE: usize = 80;
pub const OFF_AUTOCLEAR: usize = 88;
pub const OFF_REFCOUNT_ORDER: usize = 96;
pub const OFF_HEADER_LENGTH: usize = 100;
pub const V3_MIN_HEADER_LEN: usize = 104;
pub const OFF_COMPRESSION_TYPE: usize = 104;
/// The header length this module writes (qemu writes the same).
pub const V3_HEADER_LEN_WRITTEN: usize = 112;

pub const INCOMPAT_DIRTY: u64 = 1 << 0;
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
pub const INCOMPAT_EXTERNAL_DATA: u64 = 1 << 2;
pub const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
pub const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 =
    INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_EXTERNAL_DATA | INCOMPAT_COMPRESSION_TYPE | INCOMPAT_EXTENDED_L2;

pub const EXT_END: u32 = 0;
pub const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;
pub const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
/// A feature name table entry: u8 type (0 incompatible, 1 compatible,
/// 2 autoclear), u8 bit, 46 bytes of NUL-padded name.
const FEATURE_NAME_ENTRY_LEN: usize = 48;

pub const MIN_CLUSTER_BITS: u32 = 9;
pub const MAX_CLUSTER_BITS: u32 = 21;
/// qemu's own limit on the backing file name length.
pub const MAX_BACKING_NAME_LEN: u32 = 1023;
/// qemu's limit on the backing format name (`char backing_format[16]`).
pub const MAX_BACKING_FORMAT_LEN: u32 = 15;
/// qemu's QCOW_MAX_SNAPSHOTS.
pub const MAX_SNAPSHOTS: u32 = 65536;
/// qemu's QCOW_MAX_REFTABLE_SIZE.
pub const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;

/// How compressed clusters are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionType {
    /// Raw deflate (RFC 1951), as zlib with windowBits -12.
    Deflate,
    /// zstd frames.
    Zstd,
}

/// The parsed, validated header (the active image only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub backing_file_offset: u64,
    pub backing_file_size: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    pub snapshots_offset: u64,
    pub incompatible_features: u64,
    pub compatible_features: u64,
    pub autoclear_features: u64,
    pub refcount_order: u32,
    pub header_length: u32,
    pub compression_type: CompressionType,
    /// From the backing format extension, if present.
    pub backing_format: Option<String>,
    /// From the feature name table: (type, bit, name).
    pub feature_names: Vec<(u8, u8, String)>,
}

pub(crate) fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
pub(crate) fn be64(b: &[u8], off: usize) -> u64 {
    u64::from_be_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    pub fn has_extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTENDED_L2 != 0
    }
    pub fn is_dirty(&self) -> bool {
        self.incompatible_features & INCOMPAT_DIRTY != 0
    }
    /// Bytes per L2 entry: 8, or 16 with extended L2 entries.
    pub fn l2_entry_bytes(&self) -> u64 {
        if self.has_extended_l2() { 16 } else { 8 }
    }
    /// Guest clusters covered by one L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_bytes()
    }

    /// Reads the cluster bits from the fixed part, before the rest of the
    /// first cluster is read. `fixed` is at least [`V2_HEADER_LEN`] bytes.
    pub(crate) fn peek_cluster_bits(fixed: &[u8]) -> Result<u32> {
        check_magic_and_version(fixed)?;
        let bits = be32(fixed, OFF_CLUSTER_BITS);
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&bits) {
            return Err(Qcow2Error::Unsupported(format!(
                "cluster_bits {bits} is outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS} \
                 (clusters of 512 bytes to 2 MiB)"
            )));
        }
        Ok(bits)
    }

    /// Parses and validates the header from the image's first cluster
    /// (`first` is the whole first cluster, or the whole file if shorter).
    /// Checks that only need the header and the file length are done here;
    /// the L1 entries are checked by the reader.
    pub fn parse(first: &[u8], file_len: u64) -> Result<Header> {
        if first.len() < V2_HEADER_LEN {
            return Err(Qcow2Error::corrupt(format!(
                "the file is {} bytes, shorter than a qcow2 header ({V2_HEADER_LEN} bytes)",
                first.len()
            )));
        }
        let cluster_bits = Self::peek_cluster_bits(first)?;
        let cluster_size = 1u64 << cluster_bits;
        let version = be32(first, OFF_VERSION);

        let mut h = Header {
            version,
            backing_file_offset: be64(first, OFF_BACKING_FILE_OFFSET),
            backing_file_size: be32(first, OFF_BACKING_FILE_SIZE),
            cluster_bits,
            size: be64(first, OFF_SIZE),
            l1_size: be32(first, OFF_L1_SIZE),
            l1_table_offset: be64(first, OFF_L1_TABLE_OFFSET),
            refcount_table_offset: be64(first, OFF_REFCOUNT_TABLE_OFFSET),
            refcount_table_clusters: be32(first, OFF_REFCOUNT_TABLE_CLUSTERS),
            nb_snapshots: be32(first, OFF_NB_SNAPSHOTS),
            snapshots_offset: be64(first, OFF_SNAPSHOTS_OFFSET),
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V2_HEADER_LEN as u32,
            compression_type: CompressionType::Deflate,
            backing_format: None,
            feature_names: Vec::new(),
        };

        let crypt = be32(first, OFF_CRYPT_METHOD);
        if crypt != 0 {
            let what = match crypt {
                1 => "AES",
                2 => "LUKS",
                _ => "unknown",
            };
            return Err(Qcow2Error::Unsupported(format!(
                "the image is encrypted (crypt_method {crypt}, {what}); strata does not import encrypted images"
            )));
        }

        let mut compression_byte = 0u8;
        if version >= 3 {
            if first.len() < V3_MIN_HEADER_LEN {
                return Err(Qcow2Error::corrupt(format!(
                    "the file is {} bytes, shorter than a version 3 header ({V3_MIN_HEADER_LEN} bytes)",
                    first.len()
                )));
            }
            h.incompatible_features = be64(first, OFF_INCOMPATIBLE);
            h.compatible_features = be64(first, OFF_COMPATIBLE);
            h.autoclear_features = be64(first, OFF_AUTOCLEAR);
            h.refcount_order = be32(first, OFF_REFCOUNT_ORDER);
            h.header_length = be32(first, OFF_HEADER_LENGTH);
            if (h.header_length as usize) < V3_MIN_HEADER_LEN {
                return Err(Qcow2Error::corrupt(format!(
                    "header_length {} is shorter than a version 3 header ({V3_MIN_HEADER_LEN})",
                    h.header_length
                )));
            }
            if u64::from(h.header_length) > cluster_size {
                return Err(Qcow2Error::corrupt(format!(
                    "header_length {} is larger than a cluster ({cluster_size} bytes)",
                    h.header_length
                )));
            }
            if h.header_length as usize > first.len() {
                return Err(Qcow2Error::corrupt(format!(
                    "header_length {} runs past the end of the file ({} bytes)",
                    h.header_length,
                    first.len()
                )));
            }
            if h.refcount_order > 6 {
                return Err(Qcow2Error::corrupt(format!(
                    "refcount_order {} is above the maximum of 6 (64-bit refcounts)",
                    h.refcount_order
                )));
            }
            if h.header_length as usize > OFF_COMPRESSION_TYPE {
                compression_byte = first[OFF_COMPRESSION_TYPE];
            }
        }

        // Extensions come before the names are looked up for error messages.
        let ext_start = if version >= 3 { h.header_length as usize } else { V2_HEADER_LEN };
        // The backing file name, when present, ends the extension area.
        let ext_end = if h.backing_file_offset != 0 && h.backing_file_offset < first.len() as u64 {
            h.backing_file_offset as usize
        } else {
            first.len()
        };
        parse_extensions(&mut h, first, ext_start, ext_end)?;

        // Incompatible features: every bit must be understood.
        let unknown = h.incompatible_features & !INCOMPAT_KNOWN;
        if unknown != 0 {
            let names: Vec<String> = (0..64)
                .filter(|bit| unknown & (1u64 << bit) != 0)
                .map(|bit| match h.feature_name(0, bit as u8) {
                    Some(name) => format!("bit {bit} ({name:?})"),
                    None => format!("bit {bit}"),
                })
                .collect();
            return Err(Qcow2Error::Unsupported(format!(
                "unknown incompatible feature {}; a newer qemu wrote this image",
                names.join(", ")
            )));
        }
        if h.incompatible_features & INCOMPAT_CORRUPT != 0 {
            return Err(Qcow2Error::Unsupported(
                "the image is marked corrupt (incompatible feature bit 1); repair it with `qemu-img check -r all` first"
                    .into(),
            ));
        }
        if h.incompatible_features & INCOMPAT_EXTERNAL_DATA != 0 {
            return Err(Qcow2Error::Unsupported(
                "the image keeps its data in an external data file (incompatible feature bit 2); \
                 convert it with `qemu-img convert -O qcow2` first"
                    .into(),
            ));
        }
        h.compression_type = match compression_byte {
            0 => CompressionType::Deflate,
            1 => CompressionType::Zstd,
            other => {
                return Err(Qcow2Error::Unsupported(format!("unknown compression type {other}")));
            }
        };
        let bit_set = h.incompatible_features & INCOMPAT_COMPRESSION_TYPE != 0;
        if bit_set != (h.compression_type != CompressionType::Deflate) {
            return Err(Qcow2Error::corrupt(format!(
                "compression type {:?} does not agree with incompatible feature bit 3 ({})",
                h.compression_type,
                if bit_set { "set" } else { "clear" }
            )));
        }
        if h.has_extended_l2() && cluster_bits < 14 {
            return Err(Qcow2Error::corrupt(format!(
                "extended L2 entries need clusters of at least 16 KiB, this image has {cluster_size} bytes"
            )));
        }

        // Backing file name: inside the first cluster, bounded.
        if h.backing_file_offset != 0 {
            if h.backing_file_size > MAX_BACKING_NAME_LEN {
                return Err(Qcow2Error::corrupt(format!(
                    "backing file name is {} bytes, longer than the maximum {MAX_BACKING_NAME_LEN}",
                    h.backing_file_size
                )));
            }
            let end = h.backing_file_offset.checked_add(u64::from(h.backing_file_size));
            match end {
                Some(end) if end <= cluster_size && end <= first.len() as u64 => {}
                _ => {
                    return Err(Qcow2Error::corrupt(format!(
                        "backing file name at {:#x} ({} bytes) is not inside the first cluster \
                         ({cluster_size} bytes) of a {file_len}-byte file",
                        h.backing_file_offset, h.backing_file_size
                    )));
                }
            }
            if (h.backing_file_offset as usize) < ext_start {
                return Err(Qcow2Error::corrupt(format!(
                    "backing file name at {:#x} overlaps the header ({ext_start} bytes)",
                    h.backing_file_offset
                )));
            }
        }

        h.check_geometry(file_len)?;
        Ok(h)
    }

    /// The backing file name bytes, validated as UTF-8 without NUL.
    pub fn backing_file_name(&self, first: &[u8]) -> Result<Option<String>> {
        if self.backing_file_offset == 0 {
            return Ok(None);
        }
        let start = self.backing_file_offset as usize;
        let bytes = &first[start..start + self.backing_file_size as usize];
        let name = std::str::from_utf8(bytes)
            .map_err(|e| Qcow2Error::corrupt(format!("backing file name is not valid UTF-8: {e}")))?;
        if name.is_empty() {
            return Ok(None);
        }
        if name.contains('\0') {
            return Err(Qcow2Error::corrupt("backing file name contains a NUL byte"));
        }
        Ok(Some(name.to_owned()))
    }

    fn feature_name(&self, kind: u8, bit: u8) -> Option<&str> {
        self.feature_names.iter().find(|(t, b, _)| *t == kind && *b == bit).map(|(_, _, n)| n.as_str())
    }

    /// Size, L1, refcount table and snapshot table against each other and
    /// the file length.
    fn check_geometry(&self, file_len: u64) -> Result<()> {
        let cs = self.cluster_size();
        if self.size > i64::MAX as u64 {
            return Err(Qcow2Error::Limit(format!("virtual size {:#x} is above 2^63 - 1", self.size)));
        }
        // One L1 entry maps l2_entries clusters.
        let bytes_per_l1_entry = cs * self.l2_entries();
        let needed = self.size.div_ceil(bytes_per_l1_entry);
        let max_entries = super::MAX_L1_BYTES / 8;
        if needed > max_entries {
            return Err(Qcow2Error::Limit(format!(
                "virtual size {} bytes with {cs}-byte clusters needs {needed} L1 entries, \
                 more than the limit of {max_entries} (a 32 MiB L1 table)",
                self.size
            )));
        }
        if u64::from(self.l1_size) < needed {
            return Err(Qcow2Error::corrupt(format!(
                "l1_size {} is too small for a virtual size of {} bytes (needs {needed})",
                self.l1_size, self.size
            )));
        }
        if u64::from(self.l1_size) > max_entries {
            return Err(Qcow2Error::Limit(format!(
                "l1_size {} is above the limit of {max_entries} entries (a 32 MiB L1 table)",
                self.l1_size
            )));
        }
        if self.l1_size > 0 {
            check_table("L1 table", self.l1_table_offset, u64::from(self.l1_size) * 8, cs, file_len)?;
        }
        let rt_bytes = u64::from(self.refcount_table_clusters) * cs;
        if rt_bytes > MAX_REFCOUNT_TABLE_BYTES {
            return Err(Qcow2Error::Limit(format!(
                "refcount table of {} clusters is larger than {MAX_REFCOUNT_TABLE_BYTES} bytes",
                self.refcount_table_clusters
            )));
        }
        if rt_bytes > 0 {
            check_table("refcount table", self.refcount_table_offset, rt_bytes, cs, file_len)?;
        }
        if self.nb_snapshots > MAX_SNAPSHOTS {
            return Err(Qcow2Error::Limit(format!(
                "{} internal snapshots, more than qemu's limit of {MAX_SNAPSHOTS}",
                self.nb_snapshots
            )));
        }
        if self.nb_snapshots > 0 {
            // Each snapshot header is at least 40 bytes.
            check_table("snapshot table", self.snapshots_offset, 40, cs, file_len)?;
        }
        Ok(())
    }

    /// Serialises a version 3 header with refcount_order 4 (the writer's
    /// only output form), followed by the extensions and backing file name.
    /// Returns the bytes of the whole header area, shorter than a cluster.
    pub fn encode_v3(&self, backing_name: Option<&str>) -> Vec<u8> {
        let mut b = vec![0u8; V3_HEADER_LEN_WRITTEN];
        b[..4].copy_from_slice(&MAGIC);
        put32(&mut b, OFF_VERSION, 3);
        put32(&mut b, OFF_CLUSTER_BITS, self.cluster_bits);
        put64(&mut b, OFF_SIZE, self.size);
        put32(&mut b, OFF_L1_SIZE, self.l1_size);
        put64(&mut b, OFF_L1_TABLE_OFFSET, self.l1_table_offset);
        put64(&mut b, OFF_REFCOUNT_TABLE_OFFSET, self.refcount_table_offset);
        put32(&mut b, OFF_REFCOUNT_TABLE_CLUSTERS, self.refcount_table_clusters);
        put64(&mut b, OFF_INCOMPATIBLE, self.incompatible_features);
        put64(&mut b, OFF_COMPATIBLE, self.compatible_features);
        put64(&mut b, OFF_AUTOCLEAR, self.autoclear_features);
        put32(&mut b, OFF_REFCOUNT_ORDER, self.refcount_order);
        put32(&mut b, OFF_HEADER_LENGTH, V3_HEADER_LEN_WRITTEN as u32);
        if let Some(fmt) = &self.backing_format {
            push_ext(&mut b, EXT_BACKING_FORMAT, fmt.as_bytes());
        }
        push_ext(&mut b, EXT_END, &[]);
        if let Some(name) = backing_name {
            let off = b.len() as u64;
            put64(&mut b, OFF_BACKING_FILE_OFFSET, off);
            put32(&mut b, OFF_BACKING_FILE_SIZE, name.len() as u32);
            b.extend_from_slice(name.as_bytes());
        }
        b
    }
}

fn check_magic_and_version(fixed: &[u8]) -> Result<()> {
    if fixed[..4] != MAGIC {
        return Err(Qcow2Error::NotQcow2(format!("magic is {:02x?}, expected \"QFI\\xfb\"", &fixed[..4])));
    }
    let version = be32(fixed, OFF_VERSION);
    if version != 2 && version != 3 {
        return Err(Qcow2Error::Unsupported(format!("qcow2 version {version} (only 2 and 3 exist)")));
    }
    Ok(())
}

/// A metadata table must start on a cluster boundary and end inside the file.
pub(crate) fn check_table(what: &str, offset: u64, len_bytes: u64, cluster_size: u64, file_len: u64) -> Result<()> {
    if offset == 0 {
        return Err(Qcow2Error::corrupt(format!("{what} offset is 0, which is the header")));
    }
    if !offset.is_multiple_of(cluster_size) {
        return Err(Qcow2Error::corrupt(format!(
            "{what} offset {offset:#x} is not aligned to the cluster size ({cluster_size})"
        )));
    }
    match offset.checked_add(len_bytes) {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(Qcow2Error::corrupt(format!(
            "{what} at {offset:#x} ({len_bytes} bytes) is beyond the end of the file ({file_len} bytes)"
        ))),
    }
}

fn parse_extensions(h: &mut Header, first: &[u8], start: usize, end: usize) -> Result<()> {
    let mut pos = start;
    // Each extension is at least 8 bytes, so this terminates; the explicit
    // cap is for clarity.
    for _ in 0..first.len() / 8 + 1 {
        if pos + 8 > end {
            // qemu tolerates a header area without an end marker.
            return Ok(());
        }
        let ty = be32(first, pos);
        let len = be32(first, pos + 4) as usize;
        let data_start = pos + 8;
        if ty == EXT_END {
            return Ok(());
        }
        let data_end = match data_start.checked_add(len) {
            Some(e) if e <= end => e,
            _ => {
                return Err(Qcow2Error::corrupt(format!(
                    "header extension {ty:#010x} at {pos:#x} with length {len} runs past the header area ({end} bytes)"
                )));
            }
        };
        let data = &first[data_start..data_end];
        match ty {
            EXT_BACKING_FORMAT => {
                if len as u32 > MAX_BACKING_FORMAT_LEN {
                    return Err(Qcow2Error::corrupt(format!(
                        "backing format extension is {len} bytes, longer than {MAX_BACKING_FORMAT_LEN}"
                    )));
                }
                let fmt =
                    std::str::from_utf8(data).ok().filter(|s| s.bytes().all(|c| c.is_ascii_graphic())).ok_or_else(
                        || Qcow2Error::corrupt(format!("backing format {data:02x?} is not a printable name")),
                    )?;
                h.backing_format = Some(fmt.to_owned());
            }
            EXT_FEATURE_NAMES => {
                for entry in data.chunks_exact(FEATURE_NAME_ENTRY_LEN) {
                    let raw = &entry[2..];
                    let name_len = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
                    let name = String::from_utf8_lossy(&raw[..name_len]).into_owned();
                    h.feature_names.push((entry[0], entry[1], name));
                }
            }
            _ => {} // bitmaps, encryption, data file name...: not needed to read data
        }
        pos = data_start + len.div_ceil(8) * 8;
    }
    Ok(())
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_be_bytes());
}
fn push_ext(b: &mut Vec<u8>, ty: u32, data: &[u8]) {
    b.extend_from_slice(&ty.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b.resize(b.len().div_ceil(8) * 8, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            version: 3,
            backing_file_offset: 0,
            backing_file_size: 0,
            cluster_bits: 16,
            size: 1 << 20,
            l1_size: 1,
            l1_table_offset: 0x30000,
            refcount_table_offset: 0x10000,
            refcount_table_clusters: 1,
            nb_snapshots: 0,
            snapshots_offset: 0,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: V3_HEADER_LEN_WRITTEN as u32,
            compression_type: CompressionType::Deflate,
            backing_format: Some("qcow2".into()),
            feature_names: vec![],
        }
    }

    #[test]
    fn encoded_header_has_golden_bytes() {
        let b = sample().encode_v3(Some("base.qcow2"));
        assert_eq!(&b[0..8], b"QFI\xfb\x00\x00\x00\x03");
        assert_eq!(&b[20..24], &[0, 0, 0, 16]);
        assert_eq!(&b[100..104], &[0, 0, 0, 112]);
        // The backing format extension right after the header.
        assert_eq!(&b[112..120], &[0xE2, 0x79, 0x2A, 0xCA, 0, 0, 0, 5]);
        assert_eq!(&b[120..125], b"qcow2");
        // End marker, then the name.
        assert_eq!(&b[128..136], &[0u8; 8]);
        assert_eq!(be64(&b, OFF_BACKING_FILE_OFFSET), 136);
        assert_eq!(&b[136..], b"base.qcow2");
    }

    #[test]
    fn encoded_header_parses_back() {
        let h = sample();
        let mut file = h.encode_v3(Some("base.qcow2"));
        file.resize(0x40000, 0);
        let back = Header::parse(&file[..0x10000], file.len() as u64).unwrap();
        assert_eq!(back.backing_format.as_deref(), Some("qcow2"));
        assert_eq!(back.backing_file_name(&file).unwrap().as_deref(), Some("base.qcow2"));
        assert_eq!(back.size, h.size);
        assert_eq!(back.l1_table_offset, h.l1_table_offset);
    }

    #[test]
    fn unknown_incompatible_bit_is_refused_by_name() {
        let mut b = sample().encode_v3(None);
        put64(&mut b, OFF_INCOMPATIBLE, 1 << 9);
        b.truncate(V3_HEADER_LEN_WRITTEN);
        let mut entry = vec![0u8, 9];
        entry.extend_from_slice(b"frobnication");
        entry.resize(48, 0);
        push_ext(&mut b, EXT_FEATURE_NAMES, &entry);
        push_ext(&mut b, EXT_END, &[]);
        b.resize(0x40000, 0);
        let err = Header::parse(&b[..0x10000], b.len() as u64).unwrap_err().to_string();
        assert!(err.contains("bit 9 (\"frobnication\")"), "{err}");
    }

    #[test]
    fn cluster_bits_40_is_refused() {
        let mut b = sample().encode_v3(None);
        put32(&mut b, OFF_CLUSTER_BITS, 40);
        let err = Header::parse(&b, 1 << 20).unwrap_err().to_string();
        assert!(err.contains("cluster_bits 40"), "{err}");
    }
}
