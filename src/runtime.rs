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

/// candle's variable for the size of its element-wise thread pool (the calling thread included).
const NUM_THREADS_VAR: &str = "CANDLE_NUM_THREADS";
/// candle's variable for how long its element-wise worker threads spin before they park.
const SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Runs candle's element-wise ops (adds, the gradient sums of its backward pass) on the calling
/// thread (`CANDLE_NUM_THREADS=1`), and makes its workers park after 200 spins instead of 25,000
/// where the user asked for more threads; variables the user set are left alone. Call first
/// thing, before any tensor work (candle reads both once, when it starts its pool). Rayon's
/// pool, which runs raincheck's own kernels and the products, keeps every core.
///
/// candle's pool is a second set of threads beside rayon's: on 2 cores each element-wise op
/// handed work to a worker that then spun on the core the next product needed, or parked and
/// had to be woken (a fifth of a `unet tiny` training step was yielding and waking). The ops
/// left to candle are small next to the kernels, so one thread is enough. On a 2-core
/// Zen 4, 2026-11-27 10:00 UTC, criterion medians, 2 → 1 threads: `unet tiny` 960x540 frame 15.9 → 13.1 ms, its
/// training step 18.6 → 14.6 ms, `vit tiny` training step 30.7 → 26.5 ms, CycleGAN training
/// step 2.03 → 1.95 s and translation 2.42 → 2.47 s (both within noise). (Earlier that
/// day, 06:00 UTC: the short spins alone took `unet tiny` 15.7 → 13.5 ms and its training step 20.7 → 18.2 ms.)
pub fn tune_candle_pool() {
    for (var, value) in [(NUM_THREADS_VAR, "1"), (SPIN_LIMIT_VAR, "200")] {
        if std::env::var_os(var).is_none() {
            std::env::set_var(var, value);
        }
    }
}
