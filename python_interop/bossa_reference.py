"""Run BOSSA's reference code (zhaojw1998/bossa-piano-cover-arrangement) on CPU with random weights
of shapes chosen here: the shared part of bench_bossa_step.py, bench_bossa_stage2.py,
bench_bossa_generate.py and parity/make_stage2.py.

BOSSA's code is imported at run time from a checkout given by --bossa-repo (nothing of it is copied
into this repository). Export one outside it, e.g.

    mkdir -p /tmp/bossa_ref && git -C <bare mirror of zhaojw1998/bossa-piano-cover-arrangement> \\
        archive HEAD -- . ':(exclude)musecoco/hf_musecoco/midi_utils/midiprocessor/legacy_tools/tools/midi_model' \\
        | tar -x -C /tmp/bossa_ref

(the excluded folder holds binary models that nothing here uses).

Environment. BOSSA pins transformers==4.48.0; its model_Qformer.py imports helpers that
transformers 5 no longer has (`transformers.modeling_utils.apply_chunking_to_forward`, ...), so
this runs in a scratch venv, not the project's, with the project's torch:

    python3.11 -m venv /tmp/bossa_venv
    /tmp/bossa_venv/bin/pip install transformers==4.48.0   # brings tokenizers 0.21, huggingface_hub 0.x
    echo ~/.cache/stylebridge/venv/lib/python3.11/site-packages \\
        > /tmp/bossa_venv/lib/python3.11/site-packages/stylebridge_venv.pth   # torch 2.13.0 (after, so
                                                                              # transformers 4.48 wins)
Stage 2 (MuseCoco and BOSSA's dataset.py) needs two more packages in that venv:

    /tmp/bossa_venv/bin/pip install wheel ninja miditoolkit==1.0.1
    /tmp/bossa_venv/bin/pip install --no-build-isolation pytorch-fast-transformers==0.4.0

the second compiles fast_transformers' C++ CPU kernels (BOSSA's `causal_linear` calls
`fast_transformers.causal_product.causal_dot_product`) against the project's torch; miditoolkit is
imported by the MuseCoco vocabulary helpers that dataset.py uses.

Nothing is downloaded: every hub name BOSSA loads is replaced by a config built here
(`patch_hub_loads`). What differs from BOSSA's own construction, and why:
- MusicGen: `init_audio_encoder` loads "facebook/musicgen-large"; it gets a random MusicGen whose
  decoder has the shape asked for (4 codebooks x 2048 codes, pad 2048) with a tiny T5 and EnCodec
  beside it (BOSSA only uses `get_unconditional_inputs` and `enc_to_dec_proj` of them). BOSSA's own
  rule then keeps `num_hidden_layers // 2 + 1` decoder layers.
- Q-Former: `init_Qformer` reads "bert-base-uncased"; it gets a BertConfig of the shape asked for
  (other fields are bert-base's, which are BertConfig's defaults). `load_pretrained=False` (no
  MusicBERT).
- MuseCoco: `Blip2Musecoco.__init__` loads MuseCoco-1B from a fixed path; it gets a random
  `MuseCocoLMHeadModel` whose config is BOSSA's musecoco/1b/model/config.json with the shape asked
  for. `Blip2Musecoco` builds its `Blip2Qformer` with the default 32 queries; the stage-2 entry
  points rebind that name to one with the query count asked for.
- dataset.py loads the MuseCoco tokenizer from a fixed path; it gets the checkout's
  musecoco/1b/tokenizer, and `h5py` (imported for the training data files only) a stand-in.
"""
import functools
import json
import os
import resource
import sys
import types


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def count(params):
    return sum(p.numel() for p in params)


def unavailable(name):
    def fail(*args, **kwargs):
        raise RuntimeError(f"{name} was replaced by a stand-in and cannot be called here")

    return fail


def add_checkout(repo):
    """Put a BOSSA checkout first on sys.path, or exit naming what is wrong with it."""
    if not os.path.isfile(os.path.join(repo, "model_blip2.py")):
        sys.exit(f"--bossa-repo {repo}: no model_blip2.py there; give a BOSSA checkout")
    sys.path.insert(0, os.path.abspath(repo))


def stub_inference():
    """model_blip2.py imports `nucleus_filter` (top-p sampling) from utils.inference, which pulls in
    torchaudio and scipy; top-k sampling and training do not use it."""
    inference = types.ModuleType("utils.inference")
    inference.nucleus_filter = unavailable("utils.inference.nucleus_filter")
    sys.modules["utils.inference"] = inference


def stub_musecoco():
    """Stage 1 only: model_blip2.py imports `MuseCocoLMHeadModel`, whose module needs the compiled
    fast_transformers extension."""
    for name in ["musecoco", "musecoco.hf_musecoco"]:
        sys.modules[name] = types.ModuleType(name)
    modeling = types.ModuleType("musecoco.hf_musecoco.modeling_musecoco")
    modeling.MuseCocoLMHeadModel = unavailable("MuseCocoLMHeadModel")
    sys.modules["musecoco.hf_musecoco.modeling_musecoco"] = modeling


def import_model_blip2(repo, stage):
    """BOSSA's model_blip2 module; for stage 1 without MuseCoco (so without fast_transformers)."""
    add_checkout(repo)
    stub_inference()
    if stage == 1:
        stub_musecoco()
    else:
        try:
            import fast_transformers.causal_product  # noqa: F401
        except ImportError as e:
            sys.exit(f"stage 2 needs fast_transformers' compiled CPU kernels ({e}); see {__file__}")
    import model_blip2

    return model_blip2


def import_dataset(repo):
    """BOSSA's dataset module (for `collate_fn_musecoco2`) with its tokenizer read from the checkout."""
    add_checkout(repo)
    sys.modules.setdefault("h5py", types.ModuleType("h5py"))
    from musecoco.hf_musecoco import tokenization_musecoco

    real = tokenization_musecoco.MuseCocoTokenizer
    checkout_tokenizer = os.path.join(os.path.abspath(repo), "musecoco", "1b", "tokenizer")

    def from_checkout(path, *args, **kwargs):
        assert path.endswith(os.path.join("1b", "tokenizer")), path
        return real.from_pretrained(checkout_tokenizer, *args, **kwargs)

    tokenization_musecoco.MuseCocoTokenizer = types.SimpleNamespace(from_pretrained=from_checkout)
    try:
        import dataset
    finally:
        tokenization_musecoco.MuseCocoTokenizer = real
    return dataset


def musicgen_config(hidden_size, num_hidden_layers, num_attention_heads, ffn_dim):
    """A MusicGen whose decoder has this shape (4 codebooks x 2048 codes, pad/BOS 2048, as
    musicgen-large) plus the smallest T5 and EnCodec the composite config needs. T5's width (32)
    differs from the decoder's so that `enc_to_dec_proj` exists, as in musicgen-large (768 -> 2048)."""
    from transformers import EncodecConfig, MusicgenConfig, MusicgenDecoderConfig, T5Config

    decoder = MusicgenDecoderConfig(
        vocab_size=2048,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        ffn_dim=ffn_dim,
        num_codebooks=4,
        pad_token_id=2048,
        bos_token_id=2048,
    )
    text = T5Config(vocab_size=32, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2)
    audio = EncodecConfig(
        num_filters=4, hidden_size=16, codebook_size=2048, codebook_dim=16, upsampling_ratios=[4, 4], num_lstm_layers=1
    )
    return MusicgenConfig.from_sub_models_config(text, audio, decoder)


def bert_config(hidden_size, num_hidden_layers, num_attention_heads, intermediate_size):
    from transformers import BertConfig

    return BertConfig(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
    )


def musecoco_config(repo, n_embd, n_head, n_layer, ffn_dim, use_lora=True):
    """BOSSA's musecoco/1b/model/config.json (vocab 1253, pre-LN, scaled embeddings, dropout 0.1,
    8192 positions) with the shape asked for."""
    from musecoco.hf_musecoco.configuration_musecoco import MuseCocoConfig

    with open(os.path.join(repo, "musecoco", "1b", "model", "config.json")) as f:
        fields = json.load(f)
    fields.update(n_embd=n_embd, n_head=n_head, n_layer=n_layer, ffn_dim=ffn_dim, use_lora=use_lora)
    return MuseCocoConfig(**fields)


def patch_hub_loads(model_blip2, musicgen, bert, musecoco=None):
    """Replace the hub loads of `Blip2Qformer.__init__` (MusicGen config and weights, BERT config)
    and, for stage 2, of `Blip2Musecoco.__init__` (MuseCoco) with the configs given and randomly
    initialised models. Only names inside model_blip2 are rebound."""
    from transformers import MusicgenForConditionalGeneration

    def musicgen_config_for(name):
        assert name == "facebook/musicgen-large", name
        return musicgen

    def random_musicgen(name, config):
        return MusicgenForConditionalGeneration(config=config)

    def bert_config_for(name):
        assert name == "bert-base-uncased", name
        return bert

    model_blip2.MusicgenConfig = types.SimpleNamespace(from_pretrained=musicgen_config_for)
    model_blip2.MusicgenForConditionalGeneration = types.SimpleNamespace(from_pretrained=random_musicgen)
    model_blip2.BertConfig = types.SimpleNamespace(from_pretrained=bert_config_for)
    if musecoco is not None:
        from musecoco.hf_musecoco.modeling_musecoco import MuseCocoLMHeadModel

        def random_musecoco(path):
            # from_pretrained returns the model in eval mode; so does this.
            return MuseCocoLMHeadModel(musecoco).eval()

        model_blip2.MuseCocoLMHeadModel = types.SimpleNamespace(from_pretrained=random_musecoco)


def stage2_model(repo, musicgen, qformer, musecoco, queries, cross_attention_freq=2):
    """BOSSA's `Blip2Musecoco()`, random, with these shapes: keyword dicts for `musicgen_config`,
    `bert_config` and `musecoco_config`, and `queries` instead of `Blip2Qformer`'s default 32.
    Returns it with BOSSA's dataset module (for its collate functions)."""
    model_blip2 = import_model_blip2(repo, stage=2)
    dataset = import_dataset(repo)
    patch_hub_loads(model_blip2, musicgen_config(**musicgen), bert_config(**qformer), musecoco_config(repo, **musecoco))
    full = model_blip2.Blip2Qformer
    model_blip2.Blip2Qformer = functools.partial(full, num_query_token=queries, cross_attention_freq=cross_attention_freq)
    try:
        return model_blip2.Blip2Musecoco(), dataset
    finally:
        model_blip2.Blip2Qformer = full


def stage2_arguments(description, presets):
    """Flags every stage-2 entry point takes; `--set SECTION.KEY=N` overrides a preset's shape."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bossa-repo", required=True, help="checkout of zhaojw1998/bossa-piano-cover-arrangement")
    parser.add_argument("--preset", choices=sorted(presets), default="demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=N",
                        help="override a shape of the preset, e.g. musecoco.n_layer=2 or batch=4")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def preset_with_overrides(parser, args, presets):
    """The chosen preset (a copy) with `--set` applied; a key it does not have is an error."""
    preset = json.loads(json.dumps(presets[args.preset]))
    for item in args.overrides:
        key, sep, value = item.partition("=")
        *sections, name = key.split(".")
        node = preset
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if not sep or not isinstance(node, dict) or name not in node or not value.lstrip("-").isdigit():
            parser.error(f"--set {item!r}: expected KEY=INTEGER with KEY one of {', '.join(flat_keys(preset))}")
        node[name] = int(value)
    return preset


def flat_keys(tree, prefix=""):
    return [k for name, v in tree.items() for k in (flat_keys(v, f"{prefix}{name}.") if isinstance(v, dict) else [prefix + name])]


def set_positions(model, positions):
    """Stage 1: BOSSA hard-codes MusicBERT's 8194 positions; rebuild the table at `positions` rows."""
    import torch
    from torch import nn

    embeddings = model.Qformer.bert.embeddings
    table = nn.Embedding(positions, model.Qformer.config.hidden_size)
    table.weight.data.normal_(mean=0.0, std=model.Qformer.config.initializer_range)  # BERT `_init_weights`
    embeddings.position_embeddings = table
    embeddings.register_buffer("position_ids", torch.arange(positions).expand((1, -1)))
    model.Qformer.config.max_position_embeddings = positions


def parameter_groups(model):
    """Blip2Musecoco's trainable parameters by group (Q-Former incl. its queries and the audio
    LayerNorm, LoRA, musecoco_proj) and its frozen ones (MusicGen decoder, MuseCoco base)."""
    groups = {"qformer": [], "lora": [], "proj": []}
    frozen = {"musicgen": [], "musecoco": []}
    for name, p in model.named_parameters():
        if name.startswith("blip2qformer.musicgen_"):
            assert not p.requires_grad, name
            frozen["musicgen"].append((name, p))
        elif name.startswith("blip2qformer."):
            groups["qformer"].append((name, p))
        elif name.startswith("musecoco_proj."):
            groups["proj"].append((name, p))
        elif ".lora_" in name:
            groups["lora"].append((name, p))
        else:
            assert name.startswith("musecoco.") and not p.requires_grad, name
            frozen["musecoco"].append((name, p))
    for name, p in (pair for pairs in groups.values() for pair in pairs):
        assert p.requires_grad, name
    return groups, frozen
