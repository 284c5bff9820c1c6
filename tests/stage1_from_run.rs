//! A stage-1 run rebuilt by `Stage1Model::from_run` hears audio as the trained model did: the
//! run's seed draws its tiny random MusicGen (frozen, so not in the checkpoint). In a process of
//! its own, since building models draws from torch's process-wide generator.
use stylebridge::models::frozen_audio::{MusicgenSource, TinyMusicgen};
use stylebridge::models::qformer::QFormerConfig;
use stylebridge::models::weights::{trainable, write_safetensors};
use stylebridge::train::stage1::{Inputs, ModelConfig, Objectives, Stage1Model};
use stylebridge::train::trainer::Precision;
use tch::{Device, Kind, Tensor};

const SEED: u64 = 5;

fn tiny_config() -> ModelConfig {
    ModelConfig {
        musicgen: MusicgenSource {
            tiny: Some(TinyMusicgen { hidden_size: 8, num_hidden_layers: 2, num_attention_heads: 2, ffn_dim: 16, codebook_size: 16, num_codebooks: 4, seed: None }),
            ..Default::default()
        },
        qformer: QFormerConfig { hidden_size: 8, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 16, num_query_tokens: 3, embed_dim: 4, max_position_embeddings: 16, ..Default::default() },
        objectives: Objectives::C,
        ..Default::default()
    }
}

/// One row: a lead note, `<s>`, a piano note, `</s>`; 10 frames of codes.
fn inputs() -> Inputs {
    let note = [4i64, 260, 388, 577, 780, 920, 940, 1200];
    let row: Vec<i64> = [note.to_vec(), vec![0; 8], note.iter().map(|t| t + 1).collect(), vec![2; 8]].concat();
    Inputs {
        codes: Tensor::arange(4 * 10, (Kind::Int64, Device::Cpu)).view([1, 4, 10]).remainder(16),
        audio_mask: Tensor::ones([1, 10], (Kind::Float, Device::Cpu)),
        tokens: Tensor::from_slice(&row).view([1, 32]),
        is_lead_sheet: Tensor::from_slice(&[1f32, 0., 0., 0.]).view([1, 4]),
        is_real: Tensor::ones([1, 4], (Kind::Float, Device::Cpu)),
    }
}

#[test]
fn a_run_is_rebuilt_with_its_seed_so_a_tiny_musicgen_is_the_one_it_trained_on() {
    let mut trained = Stage1Model::new(&tiny_config(), Precision::Fp32, Device::Cpu, SEED).unwrap();
    // A run's step folder as the trainer leaves it: resolved config, state, trained weights.
    let dir = tempfile::tempdir().unwrap();
    let mut model = serde_yaml_ng::to_value(tiny_config()).unwrap();
    model.as_mapping_mut().unwrap().insert("kind".into(), "stage1".into());
    let mut resolved = serde_yaml_ng::Mapping::new();
    resolved.insert("seed".into(), SEED.into());
    resolved.insert("model".into(), model);
    std::fs::write(dir.path().join(stylebridge::yaml::RESOLVED_NAME), serde_yaml_ng::to_string(&resolved).unwrap()).unwrap();
    std::fs::write(dir.path().join("state.json"), "{}").unwrap();
    let weights = trainable(&trained.vs);
    let refs: Vec<(&str, &Tensor)> = weights.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_safetensors(&dir.path().join("model.safetensors"), &refs).unwrap();

    let x = inputs();
    let (heard, _) = trained.features(&x).unwrap();
    let (mut rebuilt, _) = Stage1Model::from_run(dir.path(), Device::Cpu, Precision::Fp32).unwrap();
    let (rebuilt_heard, _) = rebuilt.features(&x).unwrap();
    assert!(heard.allclose(&rebuilt_heard, 1e-6, 1e-6, false), "the rebuilt model hears the audio as the trained one");
    // Built with another seed, the same weights sit on another frozen decoder.
    let mut other = Stage1Model::load(&tiny_config(), 0, Precision::Fp32, Device::Cpu, dir.path()).unwrap();
    let (other_heard, _) = other.features(&x).unwrap();
    assert!(!heard.allclose(&other_heard, 1e-6, 1e-6, false), "the seed draws the frozen decoder");
}
