//! stylebridge: BOSSA (cross-modal bootstrapping of music style) on libtorch.
//!
//! Layout: `data` (MIDI, encodings, audio, pairing), `models` (backbones and heads),
//! `train`, `eval`, `generate`, and `cli` (one subcommand per step), all driven by `config`.
pub mod atomic;
pub mod cli;
pub mod config;
pub mod data;
pub mod eval;
pub mod models;
pub mod train;
pub mod progress;
