//! `stylebridge convert` round trips: tiny checkpoints in each format users bring are built here
//! (BOSSA stage 1/2 from the Rust models' own variables under BOSSA's saved names, with the frozen
//! MusicGen decoder BOSSA stores beside them, saved with torch.save; a fairseq MusicBERT dict with 'args' / an OmegaConf 'cfg'; HF `.bin` folders,
//! single and sharded), converted by the binary, loaded through the Rust path and compared value
//! by value. Needs the project's Python (PYTHON_SYS_EXECUTABLE, exported by `make`).
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use stylebridge::models::musecoco::{MuseCoco, MuseCocoConfig};
use stylebridge::models::musicgen::{MusicgenDecoder, MusicgenDecoderConfig};
use stylebridge::models::qformer::{QFormer, QFormerConfig};
use stylebridge::models::weights::Checkpoint;
use tch::{nn, nn::VarStore, Device, Kind, Tensor};

/// Makes the pickles: `python - DIR` reads DIR/stage{1,2}_vars.safetensors (written below) and
/// writes the .pt files; the MusicBERT and HF fixtures are made from scratch, with their
/// expected tensors (original names) in DIR/*_expected.safetensors.
const FIXTURES: &str = r#"
import argparse, json, os, sys, types
import numpy as np, torch
from safetensors.torch import load_file, save_file
d = sys.argv[1]
torch.manual_seed(0)

# BOSSA checkpoints: torch.save of a state dict, in bf16 (stage 1) and fp16 (stage 2).
for stage, dtype in (('stage1', torch.bfloat16), ('stage2', torch.float16)):
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in load_file(f'{d}/{stage}_vars.safetensors').items()}
    torch.save(state, f'{d}/bossa_{stage}.pt')

# fairseq MusicBERT (hidden 8, 2 layers, 2 heads, ffn 12, vocab 13, 10 positions), fp16.
H, F, V, P = 8, 12, 13, 10
r = lambda *s: torch.randn(*s).half()
m = {}
e = 'encoder.sentence_encoder.'
m[e + 'embed_tokens.weight'] = r(V, H)
m[e + 'embed_positions.weight'] = r(P, H)
for n, s in (('emb_layer_norm', H),):
    m[e + n + '.weight'], m[e + n + '.bias'] = r(s), r(s)
m[e + 'downsampling.0.weight'], m[e + 'downsampling.0.bias'] = r(H, 8 * H), r(H)
m[e + 'upsampling.0.weight'], m[e + 'upsampling.0.bias'] = r(8 * H, H), r(8 * H)
for i in range(2):
    l = f'{e}layers.{i}.'
    for p in ('q_proj', 'k_proj', 'v_proj', 'out_proj'):
        m[l + f'self_attn.{p}.weight'], m[l + f'self_attn.{p}.bias'] = r(H, H), r(H)
    for n in ('self_attn_layer_norm', 'final_layer_norm'):
        m[l + n + '.weight'], m[l + n + '.bias'] = r(H), r(H)
    m[l + 'fc1.weight'], m[l + 'fc1.bias'] = r(F, H), r(F)
    m[l + 'fc2.weight'], m[l + 'fc2.bias'] = r(H, F), r(H)
m['encoder.lm_head.weight'] = m[e + 'embed_tokens.weight']  # tied, as RoBERTa's LM head
m['encoder.lm_head.bias'] = r(V)
m['encoder.lm_head.dense.weight'], m['encoder.lm_head.dense.bias'] = r(H, H), r(H)
m['encoder.lm_head.layer_norm.weight'], m['encoder.lm_head.layer_norm.bias'] = r(H), r(H)
save_file({k: v.clone() for k, v in m.items()}, f'{d}/musicbert_expected.safetensors')
extra = {'train_iterator': {'epoch': 3, 'iterations_in_epoch': 0}, 'val_loss': np.float64(1.25)}
history = [{'criterion_name': 'masked_lm', 'optimizer_name': 'FairseqAdam', 'num_updates': 7,
            'lr_scheduler_state': {'best': np.float64(1.25)}}]
torch.save({'args': argparse.Namespace(arch='musicbert_base', encoder_attention_heads=2, lr=[5e-4]),
            'model': m, 'optimizer_history': history, 'extra_state': extra,
            'last_optimizer_state': {'state': {0: {'exp_avg': torch.zeros(3)}}, 'param_groups': [{'lr': 1e-4}]}},
           f'{d}/musicbert_args.pt')

# Newer fairseq: args None, an OmegaConf 'cfg' (pickled under omegaconf's own class names).
def fake(module, name):
    parent, _, child = module.partition('.')
    mod = sys.modules.setdefault(module, types.ModuleType(module))
    setattr(sys.modules.setdefault(parent, types.ModuleType(parent)), child, mod)
    cls = type(name, (), {'__module__': module, '__getstate__': lambda self: self.__dict__,
                          '__setstate__': lambda self, s: self.__dict__.update(s)})
    setattr(mod, name, cls)
    return cls
DictConfig, AnyNode = fake('omegaconf.dictconfig', 'DictConfig'), fake('omegaconf.nodes', 'AnyNode')
def node(cls, **state):
    o = cls(); o.__dict__.update(state); return o
heads = node(AnyNode, _val=2, _metadata=None)
cfg = node(DictConfig, _content={'model': node(DictConfig, _content={'encoder_attention_heads': heads})}, _parent=None)
torch.save({'args': None, 'cfg': cfg, 'model': m}, f'{d}/musicbert_cfg.pt')

# A pickle that would run code: must be refused.
class Evil:
    def __reduce__(self):
        return (os.system, ('echo should-not-run',))
torch.save({'model': {}, 'args': Evil()}, f'{d}/evil.pt')

# HF folders: one .bin with a tied pair (fp32 and fp16 tensors), and the same split in two shards.
hf = {'decoder.embed.weight': torch.randn(5, 4), 'decoder.proj.weight': torch.randn(3, 4).half(),
      'decoder.proj.bias': torch.randn(3)}
hf['lm_head.weight'] = hf['decoder.embed.weight']
save_file({k: v.clone() for k, v in hf.items()}, f'{d}/hf_expected.safetensors')
config = {'model_type': 'tiny', 'hidden_size': 4}
os.makedirs(f'{d}/hf_single'); os.makedirs(f'{d}/hf_sharded')
torch.save(hf, f'{d}/hf_single/pytorch_model.bin')
names = sorted(hf)
for i, part in enumerate((names[:2], names[2:])):
    torch.save({k: hf[k].clone() for k in part}, f'{d}/hf_sharded/pytorch_model-0000{i + 1}-of-00002.bin')
index = {'metadata': {}, 'weight_map': {k: f'pytorch_model-0000{1 if k in names[:2] else 2}-of-00002.bin' for k in names}}
for folder in ('hf_single', 'hf_sharded'):
    json.dump(config, open(f'{d}/{folder}/config.json', 'w'))
json.dump(index, open(f'{d}/hf_sharded/pytorch_model.bin.index.json', 'w'))
"#;

fn python() -> Option<String> {
    match std::env::var("PYTHON_SYS_EXECUTABLE") {
        Ok(p) => Some(p),
        Err(_) => {
            eprintln!("skipped: PYTHON_SYS_EXECUTABLE is not set (run through `make`)");
            None
        }
    }
}

fn qformer_cfg(symbolic: bool) -> QFormerConfig {
    QFormerConfig {
        hidden_size: 8,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 12,
        vocab_size: 14,
        max_position_embeddings: 10,
        encoder_width: 6,
        num_query_tokens: 3,
        embed_dim: 4,
        symbolic,
        ..Default::default()
    }
}

/// The stored MusicGen decoders: stage 1 is 128 wide, so the converter's default of 64-wide heads
/// gives 2; stage 2 is 12 wide, so its head count comes from --set. 3 layers stored, so loading
/// must take them all (BOSSA's `n // 2 + 1` rule would give 2).
fn musicgen_cfg(hidden_size: i64, num_attention_heads: i64) -> MusicgenDecoderConfig {
    MusicgenDecoderConfig { vocab_size: 8, pad_token_id: Some(8), hidden_size, num_attention_heads, num_hidden_layers: 3, ffn_dim: 16, ..Default::default() }
}

/// Variables of a fresh `cfg` decoder, noised like the other stores, named under `prefix`.
fn musicgen_vars(cfg: &MusicgenDecoderConfig, prefix: &str) -> Vec<(String, Tensor)> {
    let decoder = MusicgenDecoder::new(VarStore::new(Device::Cpu), cfg.clone(), cfg.num_hidden_layers).unwrap();
    tch::no_grad(|| {
        decoder.var_store().variables().into_iter().map(|(k, v)| (format!("{prefix}{k}"), &v + v.randn_like() * 0.5)).collect()
    })
}

fn shallow(named: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    named.iter().map(|(k, t)| (k.clone(), t.shallow_clone())).collect()
}

/// The `musicgen` section of a converted config.json, and the decoder loaded from `prefix` with
/// every stored layer; its values equal the originals (rounded to the pickle's dtype).
fn assert_musicgen_round_trips(out: &Path, ckpt: &Checkpoint, prefix: &str, originals: &HashMap<String, Tensor>, dtype: Kind) -> MusicgenDecoderConfig {
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let cfg: MusicgenDecoderConfig = serde_json::from_value(config["musicgen"].clone()).unwrap();
    assert_eq!(config["musicgen_layers"], 3);
    let decoder = MusicgenDecoder::from_checkpoint(ckpt, prefix, cfg.clone(), Some(cfg.num_hidden_layers), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(decoder.num_layers(), 3);
    for (name, var) in decoder.var_store().variables() {
        assert_same(&name, &var, &originals[&format!("{prefix}{name}")].to_kind(dtype));
    }
    cfg
}

fn musecoco_cfg() -> MuseCocoConfig {
    MuseCocoConfig { vocab_size: 20, n_embd: 12, n_head: 3, n_layer: 2, ffn_dim: 16, ..MuseCocoConfig::xlarge() }
}

/// Save `vars` (plus `extra`) as safetensors, renaming with `rename`.
fn save_vars(
    path: &Path,
    vars: HashMap<String, Tensor>,
    rename: impl Fn(&str) -> String,
    extra: Vec<(String, Tensor)>,
) {
    let mut named: Vec<(String, Tensor)> = vars.into_iter().map(|(k, v)| (rename(&k), v.detach())).collect();
    named.extend(extra);
    Tensor::write_safetensors(&named, path).unwrap();
}

fn convert_command(format: &str, input: &Path, out: &Path, sets: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stylebridge"));
    cmd.args(["convert", "--format", format]).arg(input).arg("-o").arg(out);
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd
}

fn convert(format: &str, input: &Path, out: &Path, sets: &[&str]) -> std::process::Output {
    convert_command(format, input, out, sets).output().unwrap()
}

/// Run the conversions (format, input, output, overrides) concurrently; each must succeed.
fn convert_all(jobs: &[(&str, PathBuf, PathBuf, &[&str])]) {
    let children: Vec<_> = jobs
        .iter()
        .map(|(format, input, out, sets)| {
            let mut cmd = convert_command(format, input, out, sets);
            cmd.stderr(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
            (format, cmd.spawn().unwrap())
        })
        .collect();
    for (format, child) in children {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "convert {format}: {}", String::from_utf8_lossy(&output.stderr));
    }
}

fn assert_same(name: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.size(), want.size(), "{name}");
    let diff = (got.to_kind(Kind::Float) - want.to_kind(Kind::Float)).abs().max().double_value(&[]);
    assert!(diff == 0.0, "{name}: max |diff| {diff}");
}

/// Every variable of `vs` equals the original (rounded to the pickle's dtype).
fn assert_store_equals(vs: &VarStore, originals: &HashMap<String, Tensor>, prefix: &str, dtype: Kind) {
    for (name, var) in vs.variables() {
        assert_same(&name, &var, &originals[&format!("{prefix}{name}")].to_kind(dtype));
    }
}

/// The fixture folder; `stage{1,2}_expected.safetensors` hold the original variables (MusicGen included).
struct Fixtures {
    dir: PathBuf,
}

fn read(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

/// Built once per test binary (both tests use them), in cargo's scratch folder for tests.
fn fixtures(python: &str) -> &'static Fixtures {
    static FIXTURES_ONCE: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES_ONCE.get_or_init(|| build_fixtures(python))
}

fn build_fixtures(python: &str) -> Fixtures {
    tch::manual_seed(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("convert_roundtrip-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let noise = |vs: &VarStore| {
        tch::no_grad(|| {
            for (_, mut v) in vs.variables() {
                let _ = v.f_add_(&(v.randn_like() * 0.5)).unwrap();
            }
        })
    };
    // Stage 1: the Q-Former as BOSSA saved it (old LAVIS head names, MusicGen alongside, buffer).
    let vs1 = VarStore::new(Device::Cpu);
    let _ = QFormer::new(vs1.root(), &qformer_cfg(true));
    noise(&vs1);
    let musicgen1 = musicgen_vars(&musicgen_cfg(128, 2), "musicgen_decoder.decoder.");
    save_vars(&dir.join("stage1_expected.safetensors"), vs1.variables(), str::to_string, shallow(&musicgen1));
    let old_name = |k: &str| {
        k.replace("layer_norm.", "ln_audio.")
            .replace("audio_proj", "vision_proj")
            .replace("symbo_proj", "text_proj")
            .replace("binary_head", "itm_head")
    };
    let old_name = |k: &str| if k.starts_with("Qformer.") { k.to_string() } else { old_name(k) };
    let mut extra1 =
        vec![("Qformer.bert.embeddings.position_ids".to_string(), Tensor::arange(10, (Kind::Int64, Device::Cpu)).view([1, 10]))];
    extra1.extend(musicgen1);
    save_vars(&dir.join("stage1_vars.safetensors"), vs1.variables(), old_name, extra1);
    // Stage 2: one store mirroring Blip2Musecoco's state dict.
    let vs2 = VarStore::new(Device::Cpu);
    let _ = QFormer::new(vs2.root() / "blip2qformer", &qformer_cfg(false));
    let _ = MuseCoco::new(vs2.root() / "musecoco", &musecoco_cfg());
    let _ = nn::linear(vs2.root() / "musecoco_proj", 8, 12, Default::default());
    noise(&vs2);
    let musicgen2 = musicgen_vars(&musicgen_cfg(12, 3), "blip2qformer.musicgen_decoder.decoder.");
    save_vars(&dir.join("stage2_expected.safetensors"), vs2.variables(), str::to_string, shallow(&musicgen2));
    let mut extra2 =
        vec![("musecoco.decoder.embed_positions._float_tensor".to_string(), Tensor::zeros([1], (Kind::Float, Device::Cpu)))];
    extra2.extend(musicgen2);
    save_vars(
        &dir.join("stage2_vars.safetensors"),
        vs2.variables(),
        |k| k.replace("blip2qformer.layer_norm", "blip2qformer.ln_audio"),
        extra2,
    );
    let status = Command::new(python).args(["-c", FIXTURES]).arg(&dir).status().unwrap();
    assert!(status.success(), "fixture script failed");
    Fixtures { dir }
}

#[test]
fn converter_round_trips_every_format() {
    let Some(python) = python() else { return };
    let f = fixtures(&python);
    let d = f.dir.as_path();
    let (stage1, stage2) = (read(&d.join("stage1_expected.safetensors")), read(&d.join("stage2_expected.safetensors")));

    let mut jobs: Vec<(&str, PathBuf, PathBuf, &[&str])> = vec![
        ("bossa-stage1", d.join("bossa_stage1.pt"), d.join("out1"), &["qformer.num_attention_heads=2"]),
        (
            "bossa-stage2",
            d.join("bossa_stage2.pt"),
            d.join("out2"),
            &["qformer.num_attention_heads=2", "musecoco.n_head=3", "musicgen.num_attention_heads=3"],
        ),
    ];
    for input in ["musicbert_args.pt", "musicbert_cfg.pt"] {
        jobs.push(("musicbert", d.join(input), d.join(format!("out_{input}")), &[]));
    }
    for folder in ["hf_single", "hf_sharded"] {
        jobs.push(("hf-bin", d.join(folder), d.join(format!("out_{folder}")), &[]));
    }
    convert_all(&jobs);

    // bossa-stage1 (bf16 pickle): the whole stage-1 model loads, values equal.
    let ckpt = Checkpoint::open(&d.join("out1")).unwrap();
    let cfg = QFormerConfig::from_json_file(&d.join("out1/config.json")).unwrap();
    assert_eq!(serde_json::to_value(&cfg).unwrap(), serde_json::to_value(qformer_cfg(true)).unwrap());
    let mut vs = VarStore::new(Device::Cpu);
    let _ = QFormer::new(vs.root(), &cfg);
    QFormer::load(&mut vs, &ckpt, "").unwrap();
    assert_store_equals(&vs, &stage1, "", Kind::BFloat16);
    // The frozen MusicGen, its shape from the tensors; heads default to 128 / 64.
    let mcfg = assert_musicgen_round_trips(&d.join("out1"), &ckpt, "musicgen_decoder.decoder.", &stage1, Kind::BFloat16);
    let want = musicgen_cfg(128, 2);
    assert_eq!(
        (mcfg.vocab_size, mcfg.pad_token_id, mcfg.hidden_size, mcfg.num_attention_heads, mcfg.ffn_dim, mcfg.num_codebooks),
        (want.vocab_size, want.pad_token_id, want.hidden_size, want.num_attention_heads, want.ffn_dim, want.num_codebooks)
    );

    // bossa-stage2 (fp16 pickle): the query-path Q-Former, MuseCoco with LoRA, musecoco_proj.
    let ckpt = Checkpoint::open(&d.join("out2")).unwrap();
    let config = d.join("out2/config.json");
    let qcfg = QFormerConfig::from_json_file(&config).unwrap();
    assert!(!qcfg.symbolic);
    let mcfg = MuseCocoConfig::from_json_file(&config).unwrap();
    assert_eq!((mcfg.n_embd, mcfg.n_head, mcfg.n_layer, mcfg.ffn_dim, mcfg.use_lora), (12, 3, 2, 16, true));
    let mut vs_q = VarStore::new(Device::Cpu);
    let _ = QFormer::new(vs_q.root(), &qcfg);
    QFormer::load(&mut vs_q, &ckpt, "blip2qformer.").unwrap();
    assert_store_equals(&vs_q, &stage2, "blip2qformer.", Kind::Half);
    let mut vs_m = VarStore::new(Device::Cpu);
    let _ = MuseCoco::new(vs_m.root(), &mcfg);
    MuseCoco::load(&mut vs_m, &ckpt, "musecoco.").unwrap();
    assert_store_equals(&vs_m, &stage2, "musecoco.", Kind::Half);
    let mut vs_p = VarStore::new(Device::Cpu);
    let _ = nn::linear(vs_p.root(), 8, 12, Default::default());
    ckpt.load_into(&mut vs_p, "musecoco_proj.", |_| false).unwrap();
    assert_store_equals(&vs_p, &stage2, "musecoco_proj.", Kind::Half);
    let gcfg = assert_musicgen_round_trips(&d.join("out2"), &ckpt, "blip2qformer.musicgen_decoder.decoder.", &stage2, Kind::Half);
    assert_eq!((gcfg.hidden_size, gcfg.num_attention_heads, gcfg.vocab_size, gcfg.num_codebooks), (12, 3, 8, 4), "heads from --set");
    // Without --set, a width that is no multiple of 64 gets 1 head and a note saying so.
    let output = convert("bossa-stage2", &d.join("bossa_stage2.pt"), &d.join("out2_guess"), &[]);
    assert!(output.status.success());
    let note = String::from_utf8_lossy(&output.stderr);
    assert!(note.contains("12 wide") && note.contains("--set musicgen.num_attention_heads"), "{note}");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.join("out2_guess/config.json")).unwrap()).unwrap();
    assert_eq!(config["musicgen"]["num_attention_heads"], 1);

    // musicbert, both fairseq generations: heads from 'args' / from 'cfg'; BOSSA's init_Qformer.
    let expected = read(&d.join("musicbert_expected.safetensors"));
    for input in ["musicbert_args.pt", "musicbert_cfg.pt"] {
        let out = d.join(format!("out_{input}"));
        let ckpt = Checkpoint::open(&out).unwrap();
        let mut cfg = QFormerConfig::from_json_file(&out.join("config.json")).unwrap();
        assert_eq!((cfg.num_attention_heads, cfg.vocab_size, cfg.max_position_embeddings), (2, 14, 10), "{input}");
        cfg.encoder_width = 6;
        let vs = VarStore::new(Device::Cpu);
        let model = QFormer::new(vs.root(), &cfg);
        model.init_from_musicbert(&vs, &ckpt).unwrap();
        let vars = vs.variables();
        let layer = "encoder.sentence_encoder.layers.1.";
        for (ours, theirs) in [
            ("Qformer.bert.encoder.layer.1.attention.self.query.weight", format!("{layer}self_attn.q_proj.weight")),
            (
                "Qformer.bert.encoder.layer.1.attention.output.LayerNorm.bias",
                format!("{layer}self_attn_layer_norm.bias"),
            ),
            ("Qformer.bert.encoder.layer.1.intermediate_query.dense.weight", format!("{layer}fc1.weight")),
            ("Qformer.bert.encoder.layer.1.output_query.LayerNorm.weight", format!("{layer}final_layer_norm.weight")),
            ("Qformer.bert.embeddings.downsampling.weight", "encoder.sentence_encoder.downsampling.0.weight".into()),
            ("Qformer.upsampling.bias", "encoder.sentence_encoder.upsampling.0.bias".into()),
            ("Qformer.cls.predictions.decoder.weight", "encoder.lm_head.weight".into()),
            ("Qformer.cls.predictions.transform.LayerNorm.weight", "encoder.lm_head.layer_norm.weight".into()),
        ] {
            assert_same(ours, &vars[ours], &expected[&theirs]);
        }
        let words = &vars["Qformer.bert.embeddings.word_embeddings.weight"];
        let musicbert_words = &expected["encoder.sentence_encoder.embed_tokens.weight"];
        assert_same("word rows", &words.narrow(0, 0, 13), musicbert_words);
        let dec = musicbert_words.to_kind(Kind::Float).mean_dim(0, true, None);
        assert!((words.narrow(0, 13, 1) - dec).abs().max().double_value(&[]) < 1e-6, "<DEC> row is the mean");
    }

    // hf-bin: single file and shards; names unchanged, tied tensors both present, dtypes kept.
    let expected = read(&d.join("hf_expected.safetensors"));
    for folder in ["hf_single", "hf_sharded"] {
        let out = d.join(format!("out_{folder}"));
        let ckpt = Checkpoint::open(&out).unwrap();
        assert_eq!(ckpt.names().count(), expected.len(), "{folder}");
        for (name, want) in &expected {
            let got = ckpt.get(name).unwrap();
            assert_eq!(got.kind(), want.kind(), "{folder} {name}");
            assert_same(name, &got, want);
        }
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["model_type"], "tiny");
        let leftovers: Vec<PathBuf> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(leftovers.len(), 2, "only model.safetensors and config.json: {leftovers:?}");
    }
}

#[test]
fn converter_refuses_bad_input_with_clear_errors() {
    let Some(python) = python() else { return };
    let f = fixtures(&python);
    let d = f.dir.as_path();
    // stdout and stderr together: the refused pickle's command would have printed to stdout.
    let stderr = |o: std::process::Output| {
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
    };
    let spawn = |format: &str, input: &str, out: &str| {
        let mut cmd = convert_command(format, &d.join(input), &d.join(out), &[]);
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
    };
    let (evil, wrong) =
        (spawn("musicbert", "evil.pt", "out_evil"), spawn("bossa-stage2", "bossa_stage1.pt", "out_wrong"));
    let err = stderr(evil.wait_with_output().unwrap());
    assert!(err.contains("evil.pt") && err.contains("allow-list") && err.contains("system"), "{err}");
    assert!(!err.contains("should-not-run"), "{err}");
    assert!(!d.join("out_evil/model.safetensors").exists());
    let err = stderr(wrong.wait_with_output().unwrap());
    assert!(err.contains("musecoco_proj.weight") && err.contains("--format"), "{err}");

    let err = stderr(convert("musicbert", &d.join("missing.pt"), &d.join("out_missing"), &[]));
    assert!(err.contains("missing.pt") && err.contains("no such file"), "{err}");

    let err = stderr(convert("bossa-stage1", &d.join("bossa_stage1.pt"), &d.join("out_set"), &["nonsense"]));
    assert!(err.contains("KEY=VALUE"), "{err}");

    let output = Command::new(env!("CARGO_BIN_EXE_stylebridge"))
        .args(["convert", "--format", "hf-bin"])
        .arg(d.join("hf_single"))
        .arg("-o")
        .arg(d.join("out_nopython"))
        .env_remove("PYTHON_SYS_EXECUTABLE")
        .output()
        .unwrap();
    let err = stderr(output);
    assert!(err.contains("PYTHON_SYS_EXECUTABLE"), "{err}");
}
