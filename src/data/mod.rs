//! Everything between files on disk and model inputs.
pub mod audio;
pub mod midi;
