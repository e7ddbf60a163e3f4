//! The physically-motivated rain renderer: streaks in depth layers, veil, lens drops, wet road.
//!
//! [`render`] is pure image math on RGB8 buffers (no files, no tensors): the model; [`params`]:
//! every parameter and the presets; [`apply`]: `raincheck rain` over images, folders and videos.

pub mod apply;
pub mod params;
pub mod render;

pub use params::{Preset, RainParams};
pub use render::{mix_seed, DepthMap, RainRenderer};

#[derive(Debug, thiserror::Error)]
pub enum RainError {
    #[error("unknown rain preset `{0}` (expected drizzle, moderate, heavy or torrential)")]
    UnknownPreset(String),
    #[error("invalid rain parameters: {0}")]
    Invalid(String),
    #[error("cannot apply `{assignment}`: {why}")]
    BadOverride { assignment: String, why: String },
    #[error("frame is {}x{}, too small to render rain", width, height)]
    TooSmall { width: u32, height: u32 },
    #[error("frame is {}x{} but the renderer was built for {}x{}", got.0, got.1, expected.0, expected.1)]
    SizeMismatch {
        expected: (u32, u32),
        got: (u32, u32),
    },
    #[error("depth map is {}x{} but the frame is {}x{}", got.0, got.1, expected.0, expected.1)]
    DepthSize {
        expected: (u32, u32),
        got: (u32, u32),
    },
}

impl crate::usage::IsUsage for RainError {
    /// A bad preset name or `--set` assignment.
    fn is_usage(&self) -> bool {
        matches!(
            self,
            RainError::UnknownPreset(_) | RainError::Invalid(_) | RainError::BadOverride { .. }
        )
    }
}
