//! Stage-2 inference: arrange a lead sheet for piano in the style of a reference audio (SPEC 6).
//!
//! A frozen MuseCoco reads a soft prompt (the projected Q-Former outputs of the reference audio)
//! and `</s>`, 60 attribute tokens, `<sep>`, the lead sheet of a 4-bar window in REMI with tempo
//! and velocity redacted, `<sep>`, then writes the piano part, top-k sampled (k = 15) under a
//! REMI grammar, window after window ([`window`]), each conditioned on the last 2 bars of the one
//! before.
//!
//! - [`passage`]: the lead sheet's bars, its tokens per window, and piano tokens back to a score;
//! - [`window`]: which bars each window covers and carries, and its clip of the reference audio;
//! - [`grammar`]: which token may come next, so every window decodes to its bars;
//! - [`sampling`]: temperature, top-k, top-p and reproducible keyed draws;
//! - [`arrange`](mod@arrange): the window loop over a batch of samples.
pub mod arrange;
pub mod arranger;
pub mod grammar;
pub mod passage;
pub mod sampling;
pub mod window;

pub use arrange::{arrange, ArrangeConfig, Arrangement, SampleTokens, WindowRecord, WindowTiming};
pub use grammar::{BarSpec, End, Grammar, TokenSet};
pub use passage::{Passage, PassageBar};
pub use sampling::{DrawKey, SamplingConfig};
pub use window::{windows, AudioClip, ClipMode, ReferenceCodes, Window};
