//! stylebridge: BOSSA (cross-modal bootstrapping of music style) on libtorch.
//!
//! Layout, dependencies pointing down: `cli` (one subcommand per step; `config` composes the
//! experiment file) -> `train`, `eval`, `generate` -> `models`, `data` -> `atomic`, `progress`,
//! `device`, `yaml`.
pub mod atomic;
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod eval;
pub mod generate;
pub mod models;
pub mod progress;
pub mod train;
pub mod yaml;
