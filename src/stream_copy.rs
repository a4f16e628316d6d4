//! Copies that bypass the cache for the destination (non-temporal stores).
//!
//! A plain copy into memory that is not cached first reads every destination line into the
//! cache (to own it), then writes it back: three transfers per line copied. Streaming stores
//! write whole lines without reading them: two. glibc's `memcpy` switches to them only for
//! copies larger than most of the last-level cache, and only for the copy itself; the
//! client's puts copy and hash in one pass ([`crate::digest::copy_and_digest`]), a line at a
//! time, which [`copy_lines`] allows. This module's only `unsafe` is the SSE2 store below;
//! SSE2 is part of x86-64 itself,
//! so there is nothing to detect at run time. Other architectures copy plainly.

#![allow(unsafe_code)]

/// Copies the 64-byte lines of `src` into those of `dst` (as many as the shorter has), with
/// streaming stores where the architecture has them and the destination is 16-byte aligned
/// (plain stores otherwise), calling `each(line)` on every source line right after copying it
/// (while it is in registers and L1). Streaming stores are weakly ordered, and until they are
/// fenced not even this thread may read what they wrote: the fence is done here, before
/// returning, so the copy is an ordinary one to the caller.
pub fn copy_lines(dst: &mut [[u8; 64]], src: &[[u8; 64]], mut each: impl FnMut(&[u8; 64])) {
    // Fences on the way out however it is left (`each` could unwind).
    struct Fence;
    impl Drop for Fence {
        fn drop(&mut self) {
            fence();
        }
    }
    let _fence = Fence;
    for (d, s) in dst.iter_mut().zip(src) {
        line(d, s);
        each(s);
    }
}

/// One line of [`copy_lines`]; private because the streamed bytes must not be read before
/// [`fence`].
#[inline(always)]
fn line(dst: &mut [u8; 64], src: &[u8; 64]) {
    #[cfg(target_arch = "x86_64")]
    if dst.as_ptr().align_offset(16) == 0 {
        use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
        let (d, s) = (
            dst.as_mut_ptr().cast::<__m128i>(),
            src.as_ptr().cast::<__m128i>(),
        );
        // SAFETY: `s` points at 64 readable bytes and `d` at 64 writable ones (arrays, and
        // `dst` is borrowed mutably, so they do not overlap); `d` is 16-byte aligned (checked
        // above), as `_mm_stream_si128` needs; `_mm_loadu_si128` takes any alignment. SSE2 is
        // always present on x86-64. The streamed bytes are not read by anyone before the
        // `fence` that `copy_lines`, the only caller, does before it returns.
        unsafe {
            let (a, b) = (_mm_loadu_si128(s), _mm_loadu_si128(s.add(1)));
            let (c, e) = (_mm_loadu_si128(s.add(2)), _mm_loadu_si128(s.add(3)));
            _mm_stream_si128(d, a);
            _mm_stream_si128(d.add(1), b);
            _mm_stream_si128(d.add(2), c);
            _mm_stream_si128(d.add(3), e);
        }
        return;
    }
    dst.copy_from_slice(src);
}

/// Orders the streaming stores of earlier [`line`] calls by this thread before its later
/// loads and stores.
fn fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` has no operands and no effect beyond ordering stores; SSE is always
    // present on x86-64.
    unsafe {
        std::arch::x86_64::_mm_sfence()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_lines_at_any_alignment_and_shows_each_source_line() {
        let src: Vec<u8> = (0..400).map(|i| (i * 7 % 251) as u8).collect();
        for at in 0..70 {
            let mut dst = [0xEEu8; 400];
            let (d, _) = dst[at..at + 256].as_chunks_mut::<64>();
            let (s, _) = src[3..3 + 320].as_chunks::<64>();
            let mut seen = Vec::new();
            copy_lines(d, s, |l| seen.extend_from_slice(l));
            assert_eq!(&dst[at..at + 256], &src[3..259], "at {at}");
            assert!(dst[..at].iter().chain(&dst[at + 256..]).all(|&b| b == 0xEE));
            assert_eq!(seen, &src[3..259], "four lines, in order");
        }
    }
}
