//! Everything between files on disk and model inputs.
pub mod audio;
pub mod corpus;
pub mod encodings;
pub mod leadsheet;
pub mod midi;
pub mod render;
pub mod segments;
pub mod example_song;
pub mod pairing;
pub mod shards;
pub mod split;
pub mod loader;
pub mod prepare;
pub mod warned;
