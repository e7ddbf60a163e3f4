//! Allocator tuning for the `raincheck` binary and the benchmarks, which use mimalloc.

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
