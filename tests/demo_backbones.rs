//! The demo's stand-ins for pretrained backbones (SPEC 9): `python_interop/demo_encodec.py` and
//! `python_interop/demo_musicgen.py` on a small synthesized corpus write HF folders that the Rust
//! loaders read through the real code path; bad input is refused with the file named.
mod parity_support;

use parity_support::run_python;
use std::process::{Command, Output};
use stylebridge::models::musicgen::{apply_delay_pattern, MusicgenDecoder};
use tch::{Device, Kind, Tensor};

fn ok(output: Output, what: &str) -> String {
    assert!(output.status.success(), "{what} failed:\n{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn pretrained_tiny_musicgen_loads_through_the_real_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p).to_str().unwrap().to_string();
    let synth = Command::new(env!("CARGO_BIN_EXE_stylebridge"))
        .args(["corpus", "synth", "--songs", "2", "--seed", "0", "--out", &path("corpus")])
        .output()
        .unwrap();
    ok(synth, "corpus synth");
    ok(run_python("demo_encodec.py", &[&path("encodec"), "--corpus", &path("corpus")]), "demo_encodec.py");

    // Two arrangements stand for the training split.
    let mut songs: Vec<String> = std::fs::read_dir(dir.path().join("corpus"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str().and_then(|n| n.strip_suffix(".wav")).map(str::to_string))
        .collect();
    songs.sort();
    let manifest = serde_json::json!({"songs": {"train": &songs[..2], "test": &songs[2..]}});
    std::fs::write(dir.path().join("manifest.json"), manifest.to_string()).unwrap();
    let (encodec, corpus) = (path("encodec"), path("corpus"));
    let musicgen = |out: &str, manifest: &str, extra: &[&str]| {
        let (out, manifest) = (path(out), path(manifest));
        let args = [&[out.as_str(), "--manifest", &manifest, "--encodec", &encodec, "--corpus", &corpus, "--threads", "1"][..], extra].concat();
        run_python("demo_musicgen.py", &args)
    };
    let log = ok(musicgen("musicgen", "manifest.json", &["--steps", "3", "--batch", "2", "--frames", "40"]), "demo_musicgen.py");
    assert!(log.contains("3 steps") && log.contains("of 2 training songs"), "{log}");

    let decoder = MusicgenDecoder::load(&dir.path().join("musicgen"), None, Device::Cpu, Kind::Float).unwrap();
    let config = decoder.config();
    assert_eq!((config.hidden_size, config.num_codebooks, config.vocab_size, decoder.num_layers()), (64, 4, 2048, 2));
    let codes = Tensor::randint(2048, [1, 4, 30], (Kind::Int64, Device::Cpu));
    let features = decoder.features(&apply_delay_pattern(&codes, config.pad_token()).unwrap()).unwrap();
    assert_eq!(features.size(), [1, 34, 64]);
    assert!(bool::try_from(features.isfinite().all()).unwrap());

    // A manifest without a training split, and a song the corpus lacks, are refused by name.
    std::fs::write(dir.path().join("bad.json"), r#"{"songs": {}}"#).unwrap();
    let out = musicgen("m2", "bad.json", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bad.json") && err.contains("training songs"), "{err}");
    std::fs::write(dir.path().join("ghost.json"), r#"{"songs": {"train": ["nope"]}}"#).unwrap();
    let out = musicgen("m3", "ghost.json", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nope.wav") && err.contains("missing"), "{err}");
    assert!(!dir.path().join("m3").exists(), "a failed run must leave no output folder");
}
