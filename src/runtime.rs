//! Process-wide tuning for the `raincheck` binary and the benchmarks: the allocator (mimalloc)
//! and candle's element-wise thread pool.

// Links mimalloc (and the C function below) into every binary that uses this crate.
extern crate mimalloc;

/// `mi_option_purge_delay` in mimalloc's option enum (the same index in its v2 and v3 headers,
/// which keep deprecated entries so that the numbering never changes).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Tells mimalloc to keep freed memory instead of returning it to the OS after 10 ms.
///
/// Every network layer allocates and frees tensors of tens of megabytes; returned to the OS, each
/// comes back as fresh pages that the kernel must zero on first touch (a CycleGAN frame spent
/// ~15% of its time there). Kept, they are reused. Peak memory is unchanged; memory is not given
/// back between frames of a long run.
pub fn keep_freed_memory() {
    // SAFETY: mimalloc (linked through the `mimalloc` crate) exports this C function; setting an
    // option is allowed at any time.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

/// candle's variable for how long its element-wise worker threads spin before they park.
const SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Makes candle's element-wise worker threads park after 200 spins instead of 25,000, unless the
/// user set `CANDLE_BARRIER_POOL_SPIN_LIMIT`. Call first thing, before any tensor work (candle
/// reads it once, when it starts its pool).
///
/// After each element-wise op a spinning worker holds a core that the convolutions' products need
/// next. With short spins, on 2 cores (fifth session, after the fused convolutions): `unet tiny`
/// on a 960x540 frame 15.7 → 13.5 ms, its training step 20.7 → 18.2 ms, a CycleGAN training
/// step 2.31 → 2.12 s, `vit tiny`'s training step unchanged (111 vs 113 ms). (Before the fused
/// convolutions training had been faster with the long default, so it was left alone then.)
pub fn prefer_short_spins() {
    if std::env::var_os(SPIN_LIMIT_VAR).is_none() {
        std::env::set_var(SPIN_LIMIT_VAR, "200");
    }
}
