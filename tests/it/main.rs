//! The integration tests, in one binary (one link instead of one per file): the real `raincheck`
//! executable end to end (`cli`), the streaming pipeline (`stream`) and the study in miniature
//! (`study`). `tests/stream_memory.rs` stays a binary of its own: resident memory is per process.

mod cli;
mod common;
#[cfg(feature = "video")]
mod stream;
mod study;
