//! The 8-byte object digest that the original Plasma client sends with a seal: XXH64 (seed 0)
//! of data then metadata, except that data of 1 MiB or more is hashed in nine parts whose
//! hashes are then hashed with the metadata. Matching it exactly makes `list()` and
//! notifications show the same digest whichever client wrote an object.

use xxhash_rust::xxh64::{Xxh64, xxh64};

use crate::protocol::Digest;

/// Data at or above this size is hashed in parts.
const PARALLEL_THRESHOLD: usize = 1 << 20;
/// The original splits large data into this many equal chunks plus a tail.
const PARTS: usize = 8;
/// Data at or above this size has its parts hashed by one thread each (libplasma hashes them
/// on a pool of 8 threads); below it, starting threads costs more than it saves. A thread per
/// part (rather than per core) keeps the nine equal parts balanced on any number of cores.
const THREADED_THRESHOLD: usize = 8 << 20;

/// The size of each of the first [`PARTS`] parts of large data of `len` bytes (whole 64-byte
/// blocks); the last part takes the rest.
fn part_chunk(len: u64) -> u64 {
    len / 64 / PARTS as u64 * 64
}

/// The bytes of part `i` (`0..=PARTS`) of large data of `len` bytes.
fn part_range(len: u64, i: usize) -> std::ops::Range<u64> {
    let chunk = part_chunk(len);
    let start = i as u64 * chunk;
    start..if i == PARTS { len } else { start + chunk }
}

/// The outer hash of large data, fed its parts' hashes (the metadata follows).
fn outer_over(hashes: &[u64; PARTS + 1]) -> Xxh64 {
    let mut outer = Xxh64::new(0);
    for h in hashes {
        outer.update(&h.to_le_bytes());
    }
    outer
}

/// Computes the digest of an object's contents, as libplasma 11 does.
pub fn object_digest(data: &[u8], metadata: &[u8]) -> Digest {
    let mut outer = if data.len() < PARALLEL_THRESHOLD {
        let mut outer = Xxh64::new(0);
        outer.update(data);
        outer
    } else {
        let mut hashes = [0u64; PARTS + 1];
        hash_parts_threaded(data, &mut hashes);
        outer_over(&hashes)
    };
    outer.update(metadata);
    outer.digest().to_le_bytes()
}

/// Copies `src` into `dst` (the shorter length of the two) and returns the digest of the
/// copied data followed by `metadata`, equal to [`object_digest`] of the result. One pass: each
/// block is hashed right after it is copied, while it is still in the cache, instead of a
/// second pass over memory for the digest. Large data is done one digest part per thread, by
/// up to `threads` threads (part boundaries as in [`object_digest`]).
pub fn copy_and_digest(dst: &mut [u8], src: &[u8], metadata: &[u8], threads: usize) -> Digest {
    copy_and_digest_prepared(dst, src, metadata, threads, &|_, _: &mut [u8]| {})
}

/// [`copy_and_digest`], calling `prepare(offset, part)` on each part of `dst` (at `offset`)
/// right before the thread that copies it does (to fault the destination in, in parallel).
pub fn copy_and_digest_prepared(
    dst: &mut [u8],
    src: &[u8],
    metadata: &[u8],
    threads: usize,
    prepare: &(dyn Fn(usize, &mut [u8]) + Sync),
) -> Digest {
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    let mut outer = if n < PARALLEL_THRESHOLD {
        prepare(0, dst);
        dst.copy_from_slice(src);
        let mut outer = Xxh64::new(0);
        outer.update(src);
        outer
    } else {
        let mut hashes = [0u64; PARTS + 1];
        let workers = if n >= THREADED_THRESHOLD {
            threads.clamp(1, PARTS + 1)
        } else {
            1
        };
        copy_parts_threaded(dst, src, workers, &mut hashes, prepare);
        outer_over(&hashes)
    };
    outer.update(metadata);
    outer.digest().to_le_bytes()
}

/// Bytes copied then hashed at a time: small enough to stay in the cache between the two.
const COPY_BLOCK: usize = 64 << 10;

/// Data at or above this size is copied with streaming stores, hashing each line as it is
/// copied ([`copy_xxh64_streaming`]): it would not stay in the cache anyway. Below it, plain
/// stores leave the object in the last-level cache for its first reader.
const STREAM_THRESHOLD: usize = 8 << 20;

/// Copies one part and returns its XXH64.
fn copy_hash(dst: &mut [u8], src: &[u8], stream: bool) -> u64 {
    if stream {
        return copy_xxh64_streaming(dst, src);
    }
    let mut h = Xxh64::new(0);
    for (d, s) in dst.chunks_mut(COPY_BLOCK).zip(src.chunks(COPY_BLOCK)) {
        d.copy_from_slice(s);
        h.update(s);
    }
    h.digest()
}

// XXH64's constants (the xxHash specification).
const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

/// One XXH64 accumulator step.
#[inline(always)]
fn xxh64_round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

/// The four lanes of XXH64 (seed 0), fed 32-byte stripes.
struct Xxh64Lanes([u64; 4]);

impl Xxh64Lanes {
    fn new() -> Xxh64Lanes {
        Xxh64Lanes([P1.wrapping_add(P2), P2, 0, 0u64.wrapping_sub(P1)])
    }

    #[inline(always)]
    fn stripe(&mut self, stripe: &[u8; 32]) {
        let (words, _) = stripe.as_chunks::<8>();
        for (lane, word) in self.0.iter_mut().zip(words) {
            *lane = xxh64_round(*lane, u64::from_le_bytes(*word));
        }
    }

    /// The hash of `len` bytes: the lanes have taken every whole stripe but those in `rest`,
    /// the input's last `len % 32 + 32 * k` bytes.
    fn finish(mut self, len: usize, rest: &[u8]) -> u64 {
        let (stripes, mut rest) = rest.as_chunks::<32>();
        for stripe in stripes {
            self.stripe(stripe);
        }
        let mut h = if len >= 32 {
            let [a, b, c, d] = self.0;
            let mut h = a
                .rotate_left(1)
                .wrapping_add(b.rotate_left(7))
                .wrapping_add(c.rotate_left(12))
                .wrapping_add(d.rotate_left(18));
            for v in self.0 {
                h = (h ^ xxh64_round(0, v)).wrapping_mul(P1).wrapping_add(P4);
            }
            h
        } else {
            P5
        };
        h = h.wrapping_add(len as u64);
        while let Some((word, tail)) = rest.split_first_chunk::<8>() {
            h ^= xxh64_round(0, u64::from_le_bytes(*word));
            h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
            rest = tail;
        }
        if let Some((word, tail)) = rest.split_first_chunk::<4>() {
            h ^= u64::from(u32::from_le_bytes(*word)).wrapping_mul(P1);
            h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
            rest = tail;
        }
        for &b in rest {
            h ^= u64::from(b).wrapping_mul(P5);
            h = h.rotate_left(11).wrapping_mul(P1);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(P2);
        h ^= h >> 29;
        h = h.wrapping_mul(P3);
        h ^= h >> 32;
        h
    }
}

/// Copies `src` into `dst` (the shorter length of the two) and returns the XXH64 (seed 0) of
/// the copied bytes, in one pass: each 64-byte line is loaded once, stored with streaming
/// stores ([`crate::stream_copy`]) and hashed from registers and L1. Hashing a block after
/// copying it instead runs the two one after the other (the hash's multiplies then wait for
/// nothing, the copy's memory traffic waits for the hash); interleaved, the core overlaps
/// them: about 1.3× the throughput here. XXH64 is written out (it is a dozen lines) because
/// the crate cannot take its input from a copy loop; tests compare the two on every length
/// and alignment.
fn copy_xxh64_streaming(dst: &mut [u8], src: &[u8]) -> u64 {
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    let mut lanes = Xxh64Lanes::new();
    let (dst_lines, dst_rest) = dst.as_chunks_mut::<64>();
    let (src_lines, src_rest) = src.as_chunks::<64>();
    crate::stream_copy::copy_lines(dst_lines, src_lines, |line| {
        let (halves, _) = line.as_chunks::<32>();
        for stripe in halves {
            lanes.stripe(stripe);
        }
    });
    dst_rest.copy_from_slice(src_rest);
    lanes.finish(n, src_rest)
}

/// One digest part: its offset, destination and source.
type Part<'a> = (usize, &'a mut [u8], &'a [u8]);

/// The digest parts of `dst` and `src` (of equal length): [`part_range`]'s.
fn split_parts<'a>(mut dst: &'a mut [u8], mut src: &'a [u8]) -> Vec<Part<'a>> {
    let len = dst.len() as u64;
    let mut parts = Vec::with_capacity(PARTS + 1);
    for i in 0..=PARTS {
        let r = part_range(len, i);
        let size = (r.end - r.start) as usize;
        let (d, d_rest) = dst.split_at_mut(size.min(dst.len()));
        let (s, s_rest) = src.split_at(size.min(src.len()));
        parts.push((r.start as usize, d, s));
        (dst, src) = (d_rest, s_rest);
    }
    parts
}

/// Prepares, copies and hashes one part (with streaming stores if `stream`).
fn do_part(part: Part<'_>, stream: bool, prepare: &(dyn Fn(usize, &mut [u8]) + Sync)) -> u64 {
    let (offset, d, s) = part;
    prepare(offset, d);
    copy_hash(d, s, stream)
}

/// Copies and hashes the parts, spread over `workers` threads (the caller's included). Parts
/// whose thread could not be started are done by the calling thread.
fn copy_parts_threaded(
    dst: &mut [u8],
    src: &[u8],
    workers: usize,
    hashes: &mut [u64; PARTS + 1],
    prepare: &(dyn Fn(usize, &mut [u8]) + Sync),
) {
    let per = (PARTS + 1).div_ceil(workers);
    let stream = dst.len() >= STREAM_THRESHOLD;
    let failed = std::thread::scope(|s| {
        let mut failed = Vec::new();
        let mut parts = split_parts(dst, src);
        let mut groups = Vec::new();
        while !parts.is_empty() {
            let rest = parts.split_off(per.min(parts.len()));
            groups.push(parts);
            parts = rest;
        }
        let mut outs = hashes.chunks_mut(per).zip(groups).enumerate();
        let mine = outs.next();
        for (g, (out, group)) in outs {
            let spawned = std::thread::Builder::new().spawn_scoped(s, move || {
                for (slot, part) in out.iter_mut().zip(group) {
                    *slot = do_part(part, stream, prepare);
                }
            });
            if spawned.is_err() {
                failed.push(g);
            }
        }
        if let Some((_, (out, group))) = mine {
            for (slot, part) in out.iter_mut().zip(group) {
                *slot = do_part(part, stream, prepare);
            }
        }
        failed
    });
    if failed.is_empty() {
        return;
    }
    let parts = split_parts(dst, src);
    for (i, part) in parts.into_iter().enumerate() {
        if failed.contains(&(i / per)) {
            hashes[i] = do_part(part, stream, prepare);
        }
    }
}

/// Computes the same digest as [`object_digest`] for an object that is not in memory:
/// `read(offset, buf)` fills `buf` with the bytes at `offset` of data-then-metadata. Reads in
/// pieces of at most 1 MiB, so verifying a large object needs no buffer of its size.
pub fn object_digest_from(
    data_len: u64,
    metadata_len: u64,
    mut read: impl FnMut(u64, &mut [u8]) -> std::io::Result<()>,
) -> std::io::Result<Digest> {
    const PIECE: u64 = 1 << 20;
    let mut buf = vec![0u8; PIECE as usize];
    let mut feed = |h: &mut Xxh64, start: u64, end: u64| -> std::io::Result<()> {
        let mut at = start;
        while at < end {
            let n = (end - at).min(PIECE) as usize;
            let piece = &mut buf[..n];
            read(at, piece)?;
            h.update(piece);
            at += n as u64;
        }
        Ok(())
    };
    let mut outer = Xxh64::new(0);
    if data_len < PARALLEL_THRESHOLD as u64 {
        feed(&mut outer, 0, data_len)?;
    } else {
        let mut hashes = [0u64; PARTS + 1];
        for (i, h) in hashes.iter_mut().enumerate() {
            let r = part_range(data_len, i);
            let mut part = Xxh64::new(0);
            feed(&mut part, r.start, r.end)?;
            *h = part.digest();
        }
        outer = outer_over(&hashes);
    }
    let total = data_len.saturating_add(metadata_len);
    feed(&mut outer, data_len, total)?;
    Ok(outer.digest().to_le_bytes())
}

/// Hashes parts `first..first + out.len()` of `data` (part `PARTS` is the tail) into `out`.
fn hash_parts(data: &[u8], first: usize, out: &mut [u64]) {
    for (k, slot) in out.iter_mut().enumerate() {
        let r = part_range(data.len() as u64, first + k);
        *slot = data
            .get(r.start as usize..r.end as usize)
            .map(|d| xxh64(d, 0))
            .unwrap_or(0);
    }
}

/// Hashes all parts, each on its own thread for large data. Parts whose thread could not be
/// started are hashed by the calling thread.
fn hash_parts_threaded(data: &[u8], hashes: &mut [u64; PARTS + 1]) {
    let per = if data.len() >= THREADED_THRESHOLD {
        1
    } else {
        hashes.len()
    };
    let failed = std::thread::scope(|s| {
        let mut failed = Vec::new();
        let mut groups = hashes.chunks_mut(per).enumerate();
        let mine = groups.next();
        for (g, out) in groups {
            let spawned =
                std::thread::Builder::new().spawn_scoped(s, move || hash_parts(data, g * per, out));
            if spawned.is_err() {
                failed.push(g);
            }
        }
        if let Some((_, out)) = mine {
            hash_parts(data, 0, out);
        }
        failed
    });
    for g in failed {
        let end = ((g + 1) * per).min(hashes.len());
        hash_parts(data, g * per, &mut hashes[g * per..end]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_object_matches_the_reference_client() {
        // Captured from pyarrow 11: 16 bytes of 0xAB with metadata "MD".
        assert_eq!(
            object_digest(&[0xAB; 16], b"MD"),
            [0x68, 0x4b, 0x4b, 0x84, 0x49, 0xf6, 0x02, 0xd2]
        );
    }

    #[test]
    fn large_object_is_hashed_in_parts() {
        let data: Vec<u8> = (0..(2 << 20) + 3).map(|i| (i * 7 % 251) as u8).collect();
        let whole = {
            let mut h = Xxh64::new(0);
            h.update(&data);
            h.update(b"m");
            h.digest().to_le_bytes()
        };
        assert_ne!(object_digest(&data, b"m"), whole);
    }

    #[test]
    fn streamed_digest_matches_the_in_memory_one() {
        for len in [0usize, 5, (1 << 20) - 1, 1 << 20, (3 << 20) + 77] {
            let data: Vec<u8> = (0..len).map(|i| (i * 29 % 253) as u8).collect();
            let all: Vec<u8> = data.iter().chain(b"metadata").copied().collect();
            let streamed = object_digest_from(len as u64, 8, |at, buf| {
                buf.copy_from_slice(&all[at as usize..at as usize + buf.len()]);
                Ok(())
            })
            .unwrap();
            assert_eq!(streamed, object_digest(&data, b"metadata"), "{len}");
        }
    }

    #[test]
    fn threaded_hashing_gives_the_sequential_result() {
        // Above THREADED_THRESHOLD, with a tail longer than a chunk.
        let data: Vec<u8> = (0..(9 << 20) + 999).map(|i| (i * 13 % 256) as u8).collect();
        let mut sequential = [0u64; PARTS + 1];
        hash_parts(&data, 0, &mut sequential);
        let mut outer = Xxh64::new(0);
        for h in sequential {
            outer.update(&h.to_le_bytes());
        }
        outer.update(b"meta");
        assert_eq!(object_digest(&data, b"meta"), outer.digest().to_le_bytes());
    }

    #[test]
    fn streaming_copy_hashes_as_the_xxh64_crate_at_every_length_and_alignment() {
        let src: Vec<u8> = (0..20_000u32).map(|i| (i * 131 % 257) as u8).collect();
        let mut dst = vec![0u8; 20_000];
        let lens = (0..300).chain([1000, 4095, 4096, 4097, 12_345, 19_000]);
        for len in lens {
            for (d_at, s_at) in [(0, 0), (0, 5), (16, 0), (33, 7), (64, 63)] {
                dst.fill(0);
                let h = copy_xxh64_streaming(&mut dst[d_at..d_at + len], &src[s_at..s_at + len]);
                assert_eq!(
                    h,
                    xxh64(&src[s_at..s_at + len], 0),
                    "{len} bytes, at {d_at}/{s_at}"
                );
                assert_eq!(&dst[d_at..d_at + len], &src[s_at..s_at + len]);
                assert!(
                    dst[..d_at]
                        .iter()
                        .chain(&dst[d_at + len..])
                        .all(|&b| b == 0)
                );
            }
        }
    }

    #[test]
    fn copy_and_digest_copies_and_gives_the_object_digest() {
        // Sizes around both thresholds, with tails of every kind, and thread counts from one
        // to more than the parts.
        for len in [
            0,
            100,
            (1 << 20) - 1,
            1 << 20,
            (3 << 20) + 77,
            (9 << 20) + 4097,
            (16 << 20) + 13,
        ] {
            let src: Vec<u8> = (0..len).map(|i| (i * 31 % 253) as u8).collect();
            for threads in [1, 2, 6, 64] {
                let mut dst = vec![0u8; len];
                let d = copy_and_digest(&mut dst, &src, b"md", threads);
                assert!(dst == src, "copy of {len} bytes with {threads} threads");
                assert_eq!(
                    d,
                    object_digest(&src, b"md"),
                    "{len} bytes, {threads} threads"
                );
            }
        }
    }
}
