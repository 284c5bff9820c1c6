//! Training building blocks: optimizer, learning-rate schedule, mixed precision.
pub mod amp;
pub mod optimizer;
pub mod schedule;
