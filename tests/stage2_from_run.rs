//! Stage 2 hears audio as the stage-1 run it starts from did: a tiny random MusicGen (frozen, in
//! no checkpoint) is drawn from the seed of the run that chose it, in training and when a run is
//! rebuilt for `arrange`. In a process of its own, since building models draws from torch's
//! process-wide generator.
mod run_support;
mod shards_support;
mod stage2_support;

use stage2_support::*;
use stylebridge::models::frozen_audio::{FrozenAudio, MusicgenSource, TinyMusicgen};
use stylebridge::train::checkpoint;
use stylebridge::train::stage2::{ModelConfig, Stage2Model};
use tch::{Device, Kind, Tensor};

/// The stage-1 fixture's MusicGen (`stage2_support::stage1_config`) drawn from `seed`.
fn stage1_musicgen(seed: u64) -> FrozenAudio {
    let tiny = TinyMusicgen { hidden_size: 16, num_hidden_layers: 2, num_attention_heads: 2, ffn_dim: 32, codebook_size: 32, num_codebooks: 4, seed: None };
    FrozenAudio::new(&MusicgenSource { tiny: Some(tiny), ..Default::default() }, Kind::Float, Device::Cpu, seed).unwrap()
}

#[test]
fn stage2_and_its_rebuilt_run_use_the_musicgen_stage1_drew_from_its_own_seed() {
    let dir = tempfile::tempdir().unwrap();
    backbones(dir.path()); // stage 1 with seed 5
    let config = stage2_config(dir.path(), "stage2", 1);
    ok(&["train", config.to_str().unwrap(), "--set", "seed=9"]);
    let run = checkpoint::resolve(&dir.path().join("stage2")).unwrap();

    let codes = Tensor::arange(4 * 16, (Kind::Int64, Device::Cpu)).view([1, 4, 16]).remainder(i64::from(CODEBOOK));
    let heard = stage1_musicgen(5).states(&codes).unwrap();
    assert!(!heard.allclose(&stage1_musicgen(9).states(&codes).unwrap(), 1e-6, 1e-6, false), "the seed draws the decoder");

    let cfg: ModelConfig = checkpoint::model_section(&run, "stage2").unwrap();
    let mut training = Stage2Model::for_training(&cfg, Device::Cpu, 9).unwrap();
    assert!(training.audio.states(&codes).unwrap().allclose(&heard, 1e-6, 1e-6, false), "stage 2 trains on stage 1's MusicGen");
    let (mut rebuilt, _) = Stage2Model::from_run(&run, Device::Cpu).unwrap();
    assert!(rebuilt.audio.states(&codes).unwrap().allclose(&heard, 1e-6, 1e-6, false), "arrange hears what stage 2 trained on");
}
