//! `stylebridge audio codes|features` end to end on a WAV file, with tiny HF checkpoints built by
//! `save_pretrained`: outputs equal the library models' (which tests/parity_*.rs hold to
//! transformers), and bad input fails with a message, not a panic.
mod parity_support;

use parity_support::run_script;
use std::path::Path;
use std::process::{Command, Output};
use stylebridge::data::audio::{load_mono, write_wav};
use stylebridge::models::encodec::Encodec;
use stylebridge::models::musicgen::{apply_delay_pattern, MusicgenDecoder};
use tch::{Device, Kind, Tensor};

fn stylebridge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stylebridge")).args(args).output().expect("cannot run stylebridge")
}

fn read(path: &Path) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

#[test]
fn codes_and_features_of_a_wav_file() {
    let dir = tempfile::tempdir().unwrap();
    // Tiny EnCodec at 8 kHz with 4 codebooks of 32, and a MusicGen decoder over those codes.
    run_script("make_encodec.py", &dir.path().join("encodec"), &["--variant", "music32k"]);
    run_script("make_musicgen.py", &dir.path().join("musicgen"), &["--variant", "small"]);
    let (encodec_dir, musicgen_dir) = (dir.path().join("encodec/model"), dir.path().join("musicgen/model"));
    let (encodec_arg, musicgen_arg) = (encodec_dir.to_str().unwrap(), musicgen_dir.to_str().unwrap());

    // A 16 kHz WAV: the CLI resamples it to the model's 8 kHz.
    let wav = dir.path().join("in.wav");
    let samples: Vec<f32> = (0..8000).map(|i| 0.4 * (i as f32 * 0.05).sin() + 0.2 * (i as f32 * 0.31).sin()).collect();
    write_wav(&wav, &samples, 16_000).unwrap();
    let wav_arg = wav.to_str().unwrap();

    let codes_out = dir.path().join("codes.safetensors");
    let out = stylebridge(&["audio", "codes", "--encodec", encodec_arg, wav_arg, "-o", codes_out.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let encodec = Encodec::load(&encodec_dir, Device::Cpu).unwrap();
    let audio = Tensor::from_slice(&load_mono(&wav, 8000).unwrap()).view([1, 1, -1]);
    let expected = encodec.encode(&audio).unwrap().squeeze_dim(0);
    let codes = &read(&codes_out)["codes"];
    assert_eq!(codes.size(), vec![4, 250], "0.5 s at 8 kHz, hop 16 -> 250 frames");
    assert!(codes.equal(&expected));

    let features_out = dir.path().join("features.safetensors");
    let features_arg = features_out.to_str().unwrap();
    let args = ["audio", "features", "--encodec", encodec_arg, "--musicgen", musicgen_arg, wav_arg, "-o", features_arg];
    let out = stylebridge(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("from layer 2 of 3"), "default depth is 3 / 2 + 1");
    let written = read(&features_out);
    let decoder = MusicgenDecoder::load(&musicgen_dir, None, Device::Cpu, Kind::Float).unwrap();
    let input_ids = apply_delay_pattern(&expected.unsqueeze(0), decoder.config().pad_token()).unwrap();
    let expected_features = decoder.features(&input_ids).unwrap().squeeze_dim(0);
    assert_eq!(written["features"].size(), vec![254, 16]);
    assert!(written["features"].allclose(&expected_features, 1e-5, 1e-6, false));
    assert!(written["codes"].equal(&expected));

    // --layer 1 gives the layer-1 features; a depth beyond the checkpoint is a clear error.
    let out = stylebridge(&[&args[..], &["--layer", "1"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shallow = MusicgenDecoder::load(&musicgen_dir, Some(1), Device::Cpu, Kind::Float).unwrap();
    assert!(read(&features_out)["features"].allclose(&shallow.features(&input_ids).unwrap().squeeze_dim(0), 1e-5, 1e-6, false));
    let out = stylebridge(&[&args[..], &["--layer", "9"]].concat());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot stop at layer 9"), "{}", String::from_utf8_lossy(&out.stderr));

    // An EnCodec whose codes this decoder cannot read (3 codebooks of 16) is refused up front.
    run_script("make_encodec.py", &dir.path().join("other"), &["--variant", "causal"]);
    let other = dir.path().join("other/model");
    let out = stylebridge(&[&["audio", "features", "--encodec", other.to_str().unwrap()], &args[4..]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("the codes have 3 codebooks, the MusicGen decoder reads 4"), "{stderr}");
}

#[test]
fn bad_inputs_fail_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let out_arg = dir.path().join("out.safetensors");
    let out_arg = out_arg.to_str().unwrap();

    // A folder holding only a pickled state dict points to the converter.
    let bin_dir = dir.path().join("bin_only");
    std::fs::create_dir(&bin_dir).unwrap();
    std::fs::write(bin_dir.join("config.json"), r#"{"model_type": "encodec", "sampling_rate": 32000}"#).unwrap();
    std::fs::write(bin_dir.join("pytorch_model.bin"), b"PK").unwrap();
    let wav = dir.path().join("in.wav");
    write_wav(&wav, &[0.0; 64], 32_000).unwrap();
    let out = stylebridge(&["audio", "codes", "--encodec", bin_dir.to_str().unwrap(), wav.to_str().unwrap(), "-o", out_arg]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("stylebridge convert"), "{stderr}");

    // A config this encoder does not run (stereo, chunked 48 kHz).
    std::fs::write(bin_dir.join("config.json"), r#"{"audio_channels": 2, "chunk_length_s": 1.0}"#).unwrap();
    let out = stylebridge(&["audio", "codes", "--encodec", bin_dir.to_str().unwrap(), wav.to_str().unwrap(), "-o", out_arg]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("only mono models"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!Path::new(out_arg).exists());
}
