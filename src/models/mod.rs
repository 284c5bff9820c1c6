//! Model definitions (one file per model, parameter names mirroring the checkpoints).
pub mod weights;
pub mod encodec;
pub mod frozen_audio;
pub mod blip2_musecoco;
pub mod lora;
pub mod musecoco;
pub mod musicgen;
pub mod qformer;

/// The smallest and largest value of a non-empty integer tensor, read from the device once: the
/// range check before an embedding lookup or a gather (which abort on out-of-range indices).
pub(crate) fn id_range(ids: &tch::Tensor) -> (i64, i64) {
    let both = tch::Tensor::stack(&[ids.min(), ids.max()], 0).to_kind(tch::Kind::Int64).to_device(tch::Device::Cpu);
    (both.int64_value(&[0]), both.int64_value(&[1]))
}
