//! Everything between files on disk and model inputs.
pub mod audio;
pub mod midi;
pub mod leadsheet;
pub mod segments;
