//! raincheck: camera perception in rain.
//!
//! Rain synthesis ([`rain`]) turns clear driving images into paired datasets ([`dataset`]);
//! [`image_io`] and [`video`] are the only places pixels enter or leave; [`viz`] is the Rerun
//! sink every stage logs through. See ARCHITECTURE.md for the module map and its invariants.

pub mod cyclegan;
pub mod dataset;
pub mod derain;
pub mod eval;
#[cfg(test)]
mod fuzz;
pub mod generate;
pub mod ids;
pub mod image_io;
pub mod infer;
#[cfg(test)]
mod layers;
pub mod metrics;
/// The kernels and layers (the workspace crate `raincheck-nn`).
pub use raincheck_nn as nn;
pub mod optim;
pub mod pairing;
pub mod progress;
pub mod quiz;
pub mod rain;
pub mod realism;
pub mod registry;
pub mod runs;
pub mod runtime;
pub mod stream;
pub mod study;
pub mod usage;
#[cfg(feature = "video")]
pub mod video;
pub mod viz;
pub mod weights;
