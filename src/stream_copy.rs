//! Copies that bypass the cache for the destination (non-temporal stores).
//!
//! A plain copy into memory that is not cached first reads every destination line into the
//! cache (to own it), then writes it back: three transfers per line copied. Streaming stores
//! write whole lines without reading them: two. glibc's `memcpy` switches to them only for
//! copies larger than most of the last-level cache, and only for the copy itself; the
//! client's puts copy and hash in one pass ([`crate::digest::copy_and_digest`]), a line at a
//! time. This module's only `unsafe` is the SSE2 store below; SSE2 is part of x86-64 itself,
//! so there is nothing to detect at run time. Other architectures copy plainly.

#![allow(unsafe_code)]

/// Copies the 64-byte line `src` into `dst`, with streaming stores where the architecture has
/// them and `dst` is 16-byte aligned (a plain copy otherwise). The stores are weakly ordered:
/// call [`fence`] before anything else (another thread, another process through a message)
/// may read the copy.
#[inline(always)]
pub fn line(dst: &mut [u8; 64], src: &[u8; 64]) {
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
        // always present on x86-64.
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
/// stores (as for any other store), so that whoever is told of the copy afterwards sees it.
pub fn fence() {
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
    fn copies_a_line_at_any_alignment() {
        let src: Vec<u8> = (0..200).map(|i| (i * 7 % 251) as u8).collect();
        for at in 0..70 {
            let mut dst = [0xEEu8; 200];
            let (d, s) = (&mut dst[at..at + 64], &src[3..67]);
            line(d.try_into().unwrap(), s.try_into().unwrap());
            fence();
            assert_eq!(&dst[at..at + 64], &src[3..67], "at {at}");
            assert!(dst[..at].iter().chain(&dst[at + 64..]).all(|&b| b == 0xEE));
        }
    }
}
