"""Convert pickled checkpoints to safetensors + config.json for the Rust side.

Run through `stylebridge convert --format FORMAT IN -o OUT_DIR` (which embeds this file), or
directly: `python convert.py --format FORMAT IN OUT_DIR [--set key=value ...]`.

Formats:
  musicbert     fairseq MusicBERT `.pt` (weights under ['model']); renamed as BOSSA's
                `init_Qformer` renames them, so the names are the Q-Former's (`bert.*`, `cls.*`,
                `upsampling.*`).
  bossa-stage1  BOSSA's `bossa_stage1.pt` (Blip2Qformer state dict); old LAVIS names
                (ln_audio, vision_proj, text_proj, itm_head) renamed as BOSSA does when loading.
  bossa-stage2  BOSSA's `bossa_stage2.pt` (Blip2Musecoco state dict); `blip2qformer.ln_audio`
                renamed as BOSSA's notebook does.
  hf-bin        an HF folder with `pytorch_model.bin` (or its sharded index) + config.json
                (EnCodec, MusicGen): names unchanged, config.json copied.
Both BOSSA formats also store the frozen, truncated MusicGen decoder; its shape goes to the
`musicgen` section (HF `MusicgenDecoderConfig` fields; `num_hidden_layers` = the layers stored).

Unpickling is `torch.load(weights_only=True)`: only tensors and plain containers, plus an
explicit allow-list for what a fairseq checkpoint pickles besides weights (argparse.Namespace,
numpy scalars, and its OmegaConf/fairseq config objects, which are replaced by inert stand-ins
that only hold their pickled state and run none of their code). Anything else is refused.
Tensors are streamed to disk one at a time from a memory-mapped load, so a 1B-parameter
checkpoint converts without holding a second copy in memory.

Shapes are read from the tensors; head counts cannot be, so they are defaults that `--set`
overrides: `qformer.num_attention_heads` (BERT-base's 12; fairseq MusicBERT states its own),
`musecoco.n_head` (MuseCoco-1B's 24), `musicgen.num_attention_heads` (hidden_size // 64: MusicGen's
heads are 64 wide in every released size, large 2048 / 32), e.g.
`--set musecoco.n_head=3 --set musicgen.num_attention_heads=2`.
"""
import argparse
import json
import os
import re
import struct
import sys
import tempfile

import torch

SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


class ConvertError(Exception):
    pass


# ---------------------------------------------------------------- loading (allow-listed) ----

class Opaque:
    """Inert stand-in for a pickled config class: keeps constructor args and state, runs nothing."""

    args, kwargs, state = (), {}, None

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state):
        self.state = state


# Module families of a fairseq checkpoint's non-weight content ('cfg', 'args' values, meters),
# and builtins/typing names that OmegaConf metadata refers to. All become `Opaque`.
OPAQUE_MODULES = ("omegaconf.", "fairseq.", "typing.", "enum.")
OPAQUE_NAMES = {"builtins.dict", "builtins.list", "builtins.tuple", "builtins.set", "builtins.int",
                "builtins.float", "builtins.str", "builtins.bool", "builtins.object", "builtins.type"}


def real_allowed_globals():
    import argparse as _argparse
    allowed = [_argparse.Namespace]
    try:  # numpy scalars and dtypes (e.g. a best-loss value in 'extra_state')
        import numpy as np
        allowed += [(np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
                    (np._core.multiarray.scalar, "numpy._core.multiarray.scalar"), np.dtype]
        allowed += [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "bool")]
    except (ImportError, AttributeError):
        pass
    return allowed


def load_pickle(path):
    """torch.load(weights_only=True) with the allow-list above; memory-mapped when possible."""
    needed = []
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy (non-zip) files: the unpickler below still refuses what is not allowed
        pass
    stand_ins = [(Opaque, name) for name in needed
                 if name.startswith(OPAQUE_MODULES) or name in OPAQUE_NAMES]
    with torch.serialization.safe_globals(real_allowed_globals() + stand_ins):
        for mmap in (True, False):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as e:
                if mmap and "mmap" in str(e):
                    continue  # legacy format: load into memory instead
                raise ConvertError(f"{path}: cannot load: {e}") from None
            except Exception as e:  # pickle.UnpicklingError and friends
                refused = [n for n in needed if not (n.startswith(OPAQUE_MODULES) or n in OPAQUE_NAMES)]
                hint = f" (globals outside the allow-list: {', '.join(refused)})" if refused else ""
                raise ConvertError(f"{path}: refused by the weights-only unpickler{hint}: {e}") from None


def tensor_dict(obj, path, what):
    if not isinstance(obj, dict):
        raise ConvertError(f"{path}: {what} is a {type(obj).__name__}, not a state dict")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConvertError(f"{path}: {what} holds non-tensor entries: {', '.join(map(str, bad[:10]))}")
    return dict(obj)


# ---------------------------------------------------------------- renames ----

# BOSSA model_blip2.Blip2Base.init_Qformer, in its order (each applied to every key).
MUSICBERT_RENAMES = [
    ("encoder.sentence_encoder.layers", "bert.encoder.layer"),
    ("self_attn.k_proj", "attention.self.key"),
    ("self_attn.v_proj", "attention.self.value"),
    ("self_attn.q_proj", "attention.self.query"),
    ("self_attn.out_proj", "attention.output.dense"),
    ("self_attn_layer_norm", "attention.output.LayerNorm"),
    ("fc1", "intermediate.dense"),
    ("fc2", "output.dense"),
    ("final_layer_norm", "output.LayerNorm"),
    ("encoder.sentence_encoder.embed_tokens", "bert.embeddings.word_embeddings"),
    ("encoder.sentence_encoder.embed_positions", "bert.embeddings.position_embeddings"),
    ("encoder.sentence_encoder.emb_layer_norm", "bert.embeddings.LayerNorm"),
    ("encoder.lm_head.weight", "cls.predictions.decoder.weight"),
    ("encoder.lm_head.bias", "cls.predictions.decoder.bias"),
    ("encoder.lm_head.dense", "cls.predictions.transform.dense"),
    ("encoder.lm_head.layer_norm", "cls.predictions.transform.LayerNorm"),
    ("encoder.sentence_encoder.downsampling.0", "bert.embeddings.downsampling"),
    ("encoder.sentence_encoder.upsampling.0", "upsampling"),
]
# BOSSA Blip2Musecoco.__init__ / test_stage1_contrastive.py.
STAGE1_RENAMES = [("ln_audio", "layer_norm"), ("vision_proj", "audio_proj"), ("text_proj", "symbo_proj"),
                  ("itm_head", "binary_head")]
# BOSSA test_stage2_generate.ipynb.
STAGE2_RENAMES = [("blip2qformer.ln_audio", "blip2qformer.layer_norm")]


def renamed(state, renames):
    out = {}
    for key, value in state.items():
        new = key
        for old, rep in renames:
            new = new.replace(old, rep)
        if new in out:
            raise ConvertError(f"two tensors are both named {new} after renaming")
        out[new] = value
    return out


def layer_count(names, pattern):
    found = [int(m.group(1)) for n in names for m in [re.match(pattern, n)] if m]
    return max(found) + 1 if found else 0


def shape(state, name, path):
    if name not in state:
        raise ConvertError(f"{path}: no tensor {name}; is this the right --format?")
    return list(state[name].shape)


def qformer_config(state, path, prefix, symbolic):
    """Q-Former shapes read from the tensors; the head count cannot be, so it is BERT-base's 12
    unless the caller knows better (fairseq args, or --set)."""
    p = prefix
    layer = f"{p}Qformer.bert.encoder.layer."
    hidden = shape(state, f"{p}Qformer.bert.embeddings.LayerNorm.weight", path)[0]
    layers = layer_count(state, re.escape(layer) + r"(\d+)\.")
    cross = sorted(int(m.group(1)) for n in state for m in [re.match(re.escape(layer) + r"(\d+)\.crossattention\.self\.key\.weight", n)] if m)
    cfg = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=12,
               intermediate_size=shape(state, f"{layer}0.intermediate_query.dense.weight", path)[0],
               num_query_tokens=shape(state, f"{p}query_tokens", path)[1], symbolic=symbolic,
               cross_attention_freq=cross[1] - cross[0] if len(cross) > 1 else max(layers, 1))
    if cross:
        cfg["encoder_width"] = shape(state, f"{layer}{cross[0]}.crossattention.self.key.weight", path)[1]
    if symbolic:
        cfg["vocab_size"] = shape(state, f"{p}Qformer.bert.embeddings.word_embeddings.weight", path)[0]
        cfg["max_position_embeddings"] = shape(state, f"{p}Qformer.bert.embeddings.position_embeddings.weight", path)[0]
        cfg["embed_dim"] = shape(state, f"{p}audio_proj.weight", path)[0]
    return cfg


def musecoco_config(state, path, prefix):
    d = f"{prefix}decoder."
    vocab, n_embd = shape(state, f"{d}embed_tokens.weight", path)
    return dict(vocab_size=vocab, n_embd=n_embd, n_head=24, n_layer=layer_count(state, re.escape(d) + r"layers\.(\d+)\."),
                ffn_dim=shape(state, f"{d}layers.0.fc1.weight", path)[0], scale_emb=True, norm_before=True,
                layernorm_emb=False, use_lora=any(".lora_" in n for n in state if n.startswith(prefix)), dropout=0.1)


# MusicGen's head width in every released size (small 1024/16, medium 1536/24, large 2048/32).
MUSICGEN_HEAD_WIDTH = 64


def musicgen_config(state, path, prefix):
    """The stored MusicGen decoder (`prefix` = its `decoder.` module) as the HF
    `MusicgenDecoderConfig` fields the Rust side reads. Its embedding tables have a row per code
    plus the pad/BOS code (2048, which BOSSA hard-codes), so vocab_size = rows - 1 = pad_token_id."""
    rows, hidden = shape(state, f"{prefix}embed_tokens.0.weight", path)
    return dict(vocab_size=rows - 1, hidden_size=hidden,
                num_hidden_layers=layer_count(state, re.escape(prefix) + r"layers\.(\d+)\."),
                num_attention_heads=hidden // MUSICGEN_HEAD_WIDTH if hidden % MUSICGEN_HEAD_WIDTH == 0 else 1,
                ffn_dim=shape(state, f"{prefix}layers.0.fc1.weight", path)[0],
                num_codebooks=layer_count(state, re.escape(prefix) + r"embed_tokens\.(\d+)\."), pad_token_id=rows - 1)


def doubtful_guesses(cfg, overrides):
    """Notes on head counts guessed against the rule they come from, unless --set gave them."""
    given = {item.partition("=")[0] for item in overrides}
    musicgen = cfg.get("musicgen")
    if musicgen and musicgen["hidden_size"] % MUSICGEN_HEAD_WIDTH and "musicgen.num_attention_heads" not in given:
        return [f"the MusicGen decoder is {musicgen['hidden_size']} wide, not a multiple of {MUSICGEN_HEAD_WIDTH}: "
                "num_attention_heads is set to 1; give the real count with --set musicgen.num_attention_heads=N"]
    return []


def fairseq_heads(ckpt):
    """encoder_attention_heads from fairseq's 'args' Namespace, or from its OmegaConf 'cfg'."""
    args = ckpt.get("args")
    if args is not None and hasattr(args, "encoder_attention_heads"):
        return int(args.encoder_attention_heads)
    node = ckpt.get("cfg")
    for key in ("model", "encoder_attention_heads"):
        node = omegaconf_child(node, key)
    return int(node) if isinstance(node, int) else None


def omegaconf_child(node, key):
    """Walk a pickled DictConfig (an Opaque whose state holds '_content') without OmegaConf."""
    if isinstance(node, Opaque) and isinstance(node.state, dict):
        if "_content" in node.state:
            node = node.state["_content"]
        elif "_val" in node.state:
            node = node.state["_val"]
    if isinstance(node, dict):
        child = node.get(key)
        if isinstance(child, Opaque) and isinstance(child.state, dict) and "_val" in child.state:
            return child.state["_val"]
        return child
    return None


def convert_musicbert(path):
    ckpt = load_pickle(path)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ConvertError(f"{path}: not a fairseq checkpoint (no 'model' entry)")
    state = tensor_dict(ckpt["model"], path, "['model']")
    # fairseq's RobertaModel.upgrade_state_dict_named: old checkpoints say 'decoder' for 'encoder'.
    state = {("encoder." + k[len("decoder."):] if k.startswith("decoder.") else k): v for k, v in state.items()}
    state = renamed(state, MUSICBERT_RENAMES)
    dropped = sorted(k for k in state if not k.startswith(("bert.", "cls.", "upsampling.")))
    for k in dropped:
        del state[k]
    layer = "bert.encoder.layer."
    cfg = dict(hidden_size=shape(state, "bert.embeddings.LayerNorm.weight", path)[0],
               num_hidden_layers=layer_count(state, re.escape(layer) + r"(\d+)\."),
               num_attention_heads=fairseq_heads(ckpt) or 12,
               intermediate_size=shape(state, f"{layer}0.intermediate.dense.weight", path)[0],
               vocab_size=shape(state, "bert.embeddings.word_embeddings.weight", path)[0] + 1,  # + <DEC>
               max_position_embeddings=shape(state, "bert.embeddings.position_embeddings.weight", path)[0])
    notes = [f"not part of the Q-Former, left out: {', '.join(dropped)}"] if dropped else []
    return state, {"qformer": cfg}, notes


def convert_stage1(path):
    state = renamed(tensor_dict(load_pickle(path), path, "the checkpoint"), STAGE1_RENAMES)
    musicgen = musicgen_config(state, path, "musicgen_decoder.decoder.")
    cfg = {"qformer": qformer_config(state, path, "", True), "musicgen": musicgen,
           "musicgen_layers": musicgen["num_hidden_layers"]}
    return state, cfg, []


def convert_stage2(path):
    state = renamed(tensor_dict(load_pickle(path), path, "the checkpoint"), STAGE2_RENAMES)
    proj = shape(state, "musecoco_proj.weight", path)
    musicgen = musicgen_config(state, path, "blip2qformer.musicgen_decoder.decoder.")
    cfg = {"qformer": qformer_config(state, path, "blip2qformer.", False),
           "musecoco": musecoco_config(state, path, "musecoco."),
           "musecoco_proj": {"in_features": proj[1], "out_features": proj[0]},
           "musicgen": musicgen, "musicgen_layers": musicgen["num_hidden_layers"]}
    return state, cfg, []


def convert_hf_bin(path):
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    index = os.path.join(folder, "pytorch_model.bin.index.json")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(folder, "pytorch_model.bin")):
            files = [os.path.join(folder, "pytorch_model.bin")]
        elif os.path.isfile(index):
            with open(index) as f:
                files = [os.path.join(folder, s) for s in sorted(set(json.load(f)["weight_map"].values()))]
        else:
            raise ConvertError(f"{path}: no pytorch_model.bin or pytorch_model.bin.index.json")
    else:
        files = [path]
    state = {}
    for file in files:
        part = tensor_dict(load_pickle(file), file, "the state dict")
        clash = set(part) & set(state)
        if clash:
            raise ConvertError(f"{file}: tensors also in another shard: {', '.join(sorted(clash)[:10])}")
        state.update(part)
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise ConvertError(f"{folder}: no config.json beside the weights")
    with open(config_path) as f:
        return state, json.load(f), []


CONVERTERS = {"musicbert": convert_musicbert, "bossa-stage1": convert_stage1, "bossa-stage2": convert_stage2,
              "hf-bin": convert_hf_bin}


# ---------------------------------------------------------------- writing ----

def atomic_write(path, fill):
    """Write through a temporary file in the same folder, fsync, rename."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_safetensors(path, state, metadata):
    """safetensors layout (u64 header size, JSON header, raw little-endian data), streamed one
    tensor at a time; tensors sharing storage (tied weights) are written once each."""
    header, offset = {}, 0
    names = sorted(state)
    for name in names:
        t = state[name]
        if t.dtype not in SAFETENSORS_DTYPES:
            raise ConvertError(f"tensor {name} has dtype {t.dtype}, which safetensors cannot hold")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)

    def fill(f):
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name in names:
            data = state[name].detach().contiguous().reshape(-1).view(torch.uint8).numpy()
            f.write(memoryview(data))

    atomic_write(path, fill)


def apply_overrides(cfg, overrides):
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConvertError(f"--set {item!r}: expected KEY=VALUE, e.g. qformer.num_attention_heads=12")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node, parts = cfg, key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConvertError(f"--set {item!r}: the config has no section {part!r}")
            node = node[part]
        node[parts[-1]] = value


def main(argv):
    parser = argparse.ArgumentParser(prog="stylebridge convert", description=__doc__.split("\n")[0])
    parser.add_argument("--format", required=True, choices=sorted(CONVERTERS))
    parser.add_argument("input")
    parser.add_argument("out_dir")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        if not os.path.exists(args.input):
            raise ConvertError(f"{args.input}: no such file or folder")
        state, cfg, notes = CONVERTERS[args.format](args.input)
        if args.format != "hf-bin":
            cfg = {"format": args.format, **cfg}
        apply_overrides(cfg, args.overrides)
        notes += doubtful_guesses(cfg, args.overrides)
        os.makedirs(args.out_dir, exist_ok=True)
        metadata = {"format": "pt", "converted_from": os.path.basename(os.path.abspath(args.input)),
                    "stylebridge_format": args.format}
        write_safetensors(os.path.join(args.out_dir, "model.safetensors"), state, metadata)
        text = (json.dumps(cfg, indent=2) + "\n").encode()
        atomic_write(os.path.join(args.out_dir, "config.json"), lambda f: f.write(text))
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
