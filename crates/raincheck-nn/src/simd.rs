//! CPU features, checked in one place, and small CPU-specific helpers shared by the hot loops
//! of the kernels here and of raincheck's `metrics` and `rain`.

/// AVX-512 F (the AVX-512 kernels' baseline).
pub fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// AVX2 with FMA (the 256-bit kernels' baseline).
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// AVX2 alone.
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU runs the AVX-512 byte-shuffling kernels (F, BW, VL and VBMI).
#[cfg(target_arch = "x86_64")]
pub fn has_avx512_vbmi() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vbmi")
}

/// 16 interleaved RGB8 pixels ↔ three 16-byte channel vectors, with one AVX-512 VBMI byte
/// permutation each way.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub struct Rgb16 {
    split: std::arch::x86_64::__m512i,
    join: std::arch::x86_64::__m512i,
}

#[cfg(target_arch = "x86_64")]
impl Rgb16 {
    /// The two permutations.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW, VL and VBMI ([`has_avx512_vbmi`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
    pub fn new() -> Self {
        use std::arch::x86_64::*;
        let (mut split, mut join) = ([0u8; 64], [0u8; 64]);
        for i in 0..48 {
            split[i] = (i % 16 * 3 + i / 16) as u8;
            join[i] = (i % 3 * 16 + i / 3) as u8;
        }
        // SAFETY: both tables hold 64 bytes.
        unsafe {
            Rgb16 {
                split: _mm512_loadu_si512(split.as_ptr().cast()),
                join: _mm512_loadu_si512(join.as_ptr().cast()),
            }
        }
    }

    /// R, G and B of the 16 pixels at `p`.
    ///
    /// # Safety
    /// `p` is readable for 48 bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
    pub unsafe fn load(&self, p: *const u8) -> [std::arch::x86_64::__m128i; 3] {
        use std::arch::x86_64::*;
        // SAFETY: `p` is readable for 48 bytes (this function's contract); the mask loads exactly 48.
        let d = _mm512_permutexvar_epi8(self.split, unsafe {
            _mm512_maskz_loadu_epi8(0xFFFF_FFFF_FFFF, p.cast())
        });
        [
            _mm512_castsi512_si128(d),
            _mm512_extracti32x4_epi32::<1>(d),
            _mm512_extracti32x4_epi32::<2>(d),
        ]
    }

    /// Writes the 16 pixels with channels `c` to `p`.
    ///
    /// # Safety
    /// `p` is writable for 48 bytes.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vbmi")]
    pub unsafe fn store(&self, p: *mut u8, c: [std::arch::x86_64::__m128i; 3]) {
        use std::arch::x86_64::*;
        let all = _mm512_inserti32x4::<2>(
            _mm512_inserti32x4::<1>(_mm512_castsi128_si512(c[0]), c[1]),
            c[2],
        );
        // SAFETY: `p` is writable for 48 bytes (this function's contract); the mask stores exactly 48.
        unsafe {
            _mm512_mask_storeu_epi8(
                p.cast(),
                0xFFFF_FFFF_FFFF,
                _mm512_permutexvar_epi8(self.join, all),
            )
        };
    }
}
