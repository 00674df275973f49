//! Decompression of compressed clusters, with an output bound of exactly
//! one cluster.
//!
//! A compressed cluster's stored size is only known to 512-byte sectors, so
//! the input usually carries trailing bytes of the next cluster: both
//! decoders stop once the output cluster is full and ignore the rest, as
//! qemu does. A stream that ends before filling the cluster is corrupt. The
//! output buffer is the caller's cluster buffer, so a "zip bomb" can never
//! make us allocate more; zstd's window is capped so a hostile frame header
//! cannot ask for a large decoder window either.

use flate2::{Decompress, FlushDecompress};
use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

use super::header::CompressionType;

/// zstd window log cap: 2^23 = 8 MiB, four times the largest cluster.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Decompresses `input` so that it fills `out` exactly.
pub(crate) fn decompress_cluster(kind: CompressionType, input: &[u8], out: &mut [u8]) -> Result<(), String> {
    match kind {
        CompressionType::Deflate => inflate_raw(input, out),
        CompressionType::Zstd => unzstd(input, out),
    }
}

fn inflate_raw(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    // Raw deflate (no zlib header), as qemu's windowBits -12.
    let mut d = Decompress::new(false);
    match d.decompress(input, out, FlushDecompress::Finish) {
        Ok(_) if d.total_out() == out.len() as u64 => Ok(()),
        Ok(status) => Err(format!("deflate stream ended after {} of {} bytes ({status:?})", d.total_out(), out.len())),
        Err(e) => Err(format!("deflate stream is invalid: {e}")),
    }
}

fn unzstd(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    let mut dec = Decoder::new().map_err(|e| format!("zstd decoder: {e}"))?;
    dec.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX)).map_err(|e| format!("zstd decoder: {e}"))?;
    let want = out.len();
    let mut inb = InBuffer::around(input);
    let mut outb = OutBuffer::around(out);
    // Every productive call consumes input or produces output, so this
    // loop is bounded by input + output length.
    while outb.pos() < want {
        let (in_before, out_before) = (inb.pos(), outb.pos());
        dec.run(&mut inb, &mut outb).map_err(|e| format!("zstd stream is invalid: {e}"))?;
        if inb.pos() == in_before && outb.pos() == out_before {
            return Err(format!("zstd stream ended after {} of {want} bytes", outb.pos()));
        }
    }
    Ok(())
}

/// Compresses one cluster with raw deflate, as qemu does; `None` if it does
/// not shrink. Used by tests to make compressed clusters.
#[cfg(test)]
pub(crate) fn deflate_raw(input: &[u8]) -> Option<Vec<u8>> {
    use flate2::{Compress, Compression, FlushCompress, Status};
    let mut c = Compress::new(Compression::default(), false);
    let mut out = vec![0u8; input.len()];
    match c.compress(input, &mut out, FlushCompress::Finish) {
        Ok(Status::StreamEnd) => {
            out.truncate(c.total_out() as usize);
            Some(out)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deflate_round_trip_fills_the_cluster_exactly() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let packed = deflate_raw(&data).unwrap();
        let mut padded = packed.clone();
        padded.extend_from_slice(&[0xee; 300]); // next cluster's bytes
        let mut out = vec![0u8; 65536];
        inflate_raw(&padded, &mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn deflate_stream_that_is_too_short_is_an_error() {
        let packed = deflate_raw(&[7u8; 4096]).unwrap();
        let mut out = vec![0u8; 8192];
        assert!(inflate_raw(&packed, &mut out).unwrap_err().contains("4096 of 8192"));
    }

    #[test]
    fn zstd_output_is_bounded_by_the_cluster() {
        let big = zstd::encode_all(&[1u8; 1 << 20][..], 3).unwrap();
        let mut out = vec![0u8; 4096];
        unzstd(&big, &mut out).unwrap(); // stops at 4096, no error, no growth
        assert_eq!(out, vec![1u8; 4096]);
        let small = zstd::encode_all(&[1u8; 100][..], 3).unwrap();
        assert!(unzstd(&small, &mut out).is_err());
    }
}
