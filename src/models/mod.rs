//! Model definitions (one file per model, parameter names mirroring the checkpoints).
pub mod weights;
pub mod encodec;
pub mod frozen_audio;
pub mod blip2_musecoco;
pub mod lora;
pub mod musecoco;
pub mod musicgen;
pub mod qformer;
