"""MusicGen's delay pattern, shared by the demo's LM pretraining (demo_musicgen.py) and the
MusicGen parity reference (parity/make_musicgen.py, whose output tests/parity_musicgen.rs
compares with the Rust `apply_delay_pattern`)."""
import torch


def delay_pattern(codes: torch.Tensor, pad: int) -> torch.Tensor:
    """audiocraft `DelayedPatternProvider` (delays 0..K-1) + `build_pattern_sequence`:
    [B, K, T] codes -> [B, K, T + K]; step 0 is all `pad`; codebook q at step s holds frame s - 1 - q."""
    b, k, t = codes.shape
    out = torch.full((b, k, t + k), pad, dtype=codes.dtype)
    for q in range(k):
        out[:, q, 1 + q : 1 + q + t] = codes[:, q]
    return out
