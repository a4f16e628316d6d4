//! The layout `PlasmaClient.put` writes and `PlasmaClient.get` reads.
//!
//! pyarrow's `put`/`get` used pyarrow's own serialization, which pyarrow has removed. We use
//! pickle protocol 5 with out-of-band buffers: large contiguous buffers (numpy arrays, Arrow
//! buffers, PickleBuffer, ...) are written beside the pickle, each 64-byte aligned, and `get`
//! hands them back to pickle as zero-copy views of the shared memory, so such values come back
//! read-only and without a copy, as with the original.
//!
//! Data of the object (metadata is empty), integers little-endian:
//!
//! ```text
//! 0   8  magic "PLSPKL05"
//! 8   4  layout version (1)
//! 12  4  number of out-of-band buffers N
//! 16  8  offset of the pickle
//! 24  8  length of the pickle
//! 32  16*N (offset, length) of each buffer
//! ... the pickle, then the buffers (each at a multiple of 64)
//! ```

/// First bytes of every object `put` writes.
pub const MAGIC: &[u8; 8] = b"PLSPKL05";
/// Layout version.
pub const VERSION: u32 = 1;
/// Alignment of the out-of-band buffers.
const ALIGN: usize = 64;
const FIXED: usize = 32;

/// Where each part goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Layout {
    /// (offset, length) of the pickle.
    pub pickle: (usize, usize),
    /// (offset, length) of each buffer.
    pub buffers: Vec<(usize, usize)>,
    /// Total data size.
    pub total: usize,
}

impl Layout {
    /// Lays out a pickle of `pickle_len` bytes and buffers of the given lengths.
    pub fn new(pickle_len: usize, buffer_lens: &[usize]) -> Layout {
        let header = FIXED + 16 * buffer_lens.len();
        let mut end = header + pickle_len;
        let buffers = buffer_lens
            .iter()
            .map(|&len| {
                let off = end.next_multiple_of(ALIGN);
                end = off + len;
                (off, len)
            })
            .collect();
        Layout {
            pickle: (header, pickle_len),
            buffers,
            total: end,
        }
    }

    /// The header bytes.
    pub fn header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(FIXED + 16 * self.buffers.len());
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&(self.buffers.len() as u32).to_le_bytes());
        for (off, len) in std::iter::once(&self.pickle).chain(&self.buffers) {
            h.extend_from_slice(&(*off as u64).to_le_bytes());
            h.extend_from_slice(&(*len as u64).to_le_bytes());
        }
        h
    }

    /// Reads the layout of `data`; `Err` says why it is not an object `put` wrote.
    pub fn parse(data: &[u8]) -> Result<Layout, String> {
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
        };
        let u64_at = |at: usize| -> Option<usize> {
            usize::try_from(u64::from_le_bytes(data.get(at..at + 8)?.try_into().ok()?)).ok()
        };
        if data.get(..8) != Some(MAGIC.as_slice()) {
            return Err("it does not start with plasma_store's put() header".into());
        }
        let version = u32_at(8).ok_or("truncated header")?;
        if version != VERSION {
            return Err(format!("unknown layout version {version}"));
        }
        let n = u32_at(12).ok_or("truncated header")? as usize;
        let part = |i: usize| -> Result<(usize, usize), String> {
            let at = 16 + 16 * i;
            let (off, len) = u64_at(at)
                .zip(u64_at(at + 8))
                .ok_or_else(|| "truncated header".to_string())?;
            match off.checked_add(len) {
                Some(end) if end <= data.len() => Ok((off, len)),
                _ => Err(format!("part {i} lies outside the object")),
            }
        };
        let pickle = part(0)?;
        let buffers = (1..=n).map(part).collect::<Result<Vec<_>, _>>()?;
        Ok(Layout {
            pickle,
            buffers,
            total: data.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_aligns_buffers() {
        let l = Layout::new(10, &[3, 100, 0]);
        assert_eq!(l.pickle, (32 + 48, 10));
        assert!(l.buffers.iter().all(|(off, _)| off % 64 == 0));
        let mut data = l.header();
        data.resize(l.total, 0);
        assert_eq!(Layout::parse(&data).unwrap(), l);
        assert!(Layout::parse(&data[..40]).is_err());
        assert!(Layout::parse(b"not a pickle at all....").is_err());
    }
}
