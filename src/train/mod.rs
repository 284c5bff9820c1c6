//! Training building blocks: optimizer, learning-rate schedule, mixed precision,
//! checkpoints and metrics.
pub mod amp;
pub mod batch;
pub mod checkpoint;
pub mod distributed;
pub mod losses;
pub mod metrics;
pub mod optimizer;
pub mod schedule;
pub mod stage1;
pub mod trainer;
pub mod stage2;
pub mod musecoco_lm;
