//! Window arithmetic, as the paper samples long pieces: 4-bar windows advancing 2 bars. The first
//! window generates all its bars; each later one is conditioned on the last 2 bars already
//! generated (carried as tokens, whole bars, so never cut inside a note) and generates the rest.
//! Over a passage of N bars window w covers bars [2w, min(2w + 4, N)), and the windows stop with
//! the first that reaches bar N; a passage of N <= 4 bars is one window.
//!
//! BOSSA's notebook differs in one detail: it stops a later window after 4 *new* bar ends, so it
//! samples 2 bars past the lead sheet of the window and throws them away (except in the last
//! window, which it keeps whole). Here a window writes exactly the bars its lead sheet covers.
//!
//! Each window also has its reference-audio clip of 508 EnCodec frames (10.16 s at 50 Hz):
//! - `follow`: centred on the window's bars (the middle of their start and end seconds on the
//!   lead sheet's timeline, plus an offset), moved inside the audio near its ends, as BOSSA's
//!   `collate_fn_inference` does;
//! - `fixed`: the same clip for every window, from an offset in seconds.
//!
//! A reference shorter than a clip is padded with the pad code and masked (1 = real frame), as
//! in training.
use anyhow::{ensure, Result};
use std::ops::Range;

use crate::data::pairing::{WindowSpec, WINDOW_SECONDS};

/// Bars per window.
pub const WINDOW_BARS: usize = 4;
/// Bars a window advances by; also the bars it carries over from the previous one.
pub const HOP_BARS: usize = 2;

/// One window of a passage (bar indices from the passage's first bar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub index: usize,
    /// Every bar the window's lead sheet covers.
    pub bars: Range<usize>,
    /// The bars carried over from the previous window (empty in the first).
    pub carried: Range<usize>,
}

impl Window {
    /// The bars this window samples.
    pub fn generated(&self) -> Range<usize> {
        self.carried.end..self.bars.end
    }
}

/// The windows over a passage of `bars` bars (none for 0 bars).
pub fn windows(bars: usize) -> Vec<Window> {
    let mut out: Vec<Window> = Vec::new();
    while out.last().is_none_or(|w| w.bars.end < bars) && bars > 0 {
        let index = out.len();
        let start = index * HOP_BARS;
        let carried = if index == 0 { start..start } else { start..start + HOP_BARS };
        out.push(Window { index, bars: start..(start + WINDOW_BARS).min(bars), carried });
    }
    out
}

/// Which part of the reference audio conditions each window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ClipMode {
    /// Follow the lead sheet: the clip centred on the window's bars, second `t` of the lead
    /// sheet being second `t + offset_seconds` of the audio.
    Follow { offset_seconds: f64 },
    /// One clip starting at `offset_seconds` of the audio for every window.
    Fixed { offset_seconds: f64 },
}

/// The reference audio as EnCodec codes.
#[derive(Debug, Clone)]
pub struct ReferenceCodes {
    /// [n_q, frames], row-major.
    codes: Vec<u16>,
    n_q: usize,
    frames: usize,
    pad_code: u16,
    frame_rate: f64,
    clip: WindowSpec,
}

/// One window's audio: codes [n_q, clip frames] row-major and a mask per frame (1 = real).
#[derive(Debug, Clone, PartialEq)]
pub struct AudioClip {
    /// Frame of the reference where the clip starts.
    pub start_frame: i64,
    pub n_q: usize,
    pub codes: Vec<i64>,
    pub mask: Vec<u8>,
}

impl ReferenceCodes {
    /// Codes [n_q, frames] (row-major) at `frame_rate` frames per second; clips of BOSSA's
    /// 10.16 s.
    pub fn new(codes: Vec<u16>, n_q: usize, pad_code: u16, frame_rate: f64) -> Result<Self> {
        ensure!(n_q > 0 && codes.len().is_multiple_of(n_q), "{} codes do not split into {n_q} codebooks", codes.len());
        let frames = codes.len() / n_q;
        ensure!(frames > 0, "the reference audio has no frames");
        let clip = WindowSpec::from_seconds(frame_rate, WINDOW_SECONDS, 0.0)?;
        Ok(Self { codes, n_q, frames, pad_code, frame_rate, clip })
    }

    /// Frames per clip (508 at 50 Hz).
    pub fn clip_frames(&self) -> usize {
        self.clip.window_frames
    }

    /// The clip of a window whose bars span `start_seconds..end_seconds` of the lead sheet.
    pub fn clip(&self, mode: ClipMode, start_seconds: f64, end_seconds: f64) -> Result<AudioClip> {
        let (ClipMode::Follow { offset_seconds } | ClipMode::Fixed { offset_seconds }) = mode;
        let seconds = self.frames as f64 / self.frame_rate;
        ensure!(offset_seconds.is_finite() && offset_seconds >= 0.0, "the audio offset is {offset_seconds} s; it must be 0 or more");
        ensure!(
            offset_seconds < seconds,
            "the audio offset {offset_seconds:.2} s is past the end of the reference audio ({seconds:.2} s, {} frames)",
            self.frames
        );
        let window = self.clip.window_frames as i64;
        let start = match mode {
            ClipMode::Follow { .. } => {
                let centred = self.clip.window_start(start_seconds + offset_seconds, end_seconds + offset_seconds, self.frame_rate);
                // BOSSA: a clip that would start before 0 starts at 0; one that would end past the
                // audio ends at its end (a reference shorter than a clip starts at 0).
                centred.min(self.frames as i64 - window).max(0)
            }
            ClipMode::Fixed { .. } => (offset_seconds * self.frame_rate).round() as i64,
        };
        let (start_frame, codes) = self.clip.cut(&self.codes, self.n_q, start, self.pad_code);
        let mask = (0..window).map(|j| u8::from(start + j < self.frames as i64)).collect();
        Ok(AudioClip { start_frame, n_q: self.n_q, codes: codes.into_iter().map(i64::from).collect(), mask })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(n: usize) -> Vec<(Range<usize>, Range<usize>, Range<usize>)> {
        windows(n).into_iter().map(|w| (w.bars.clone(), w.carried.clone(), w.generated())).collect()
    }

    #[test]
    fn windows_advance_two_bars_and_stop_at_the_end() {
        assert_eq!(spans(8), [(0..4, 0..0, 0..4), (2..6, 2..4, 4..6), (4..8, 4..6, 6..8)]);
        assert_eq!(spans(7), [(0..4, 0..0, 0..4), (2..6, 2..4, 4..6), (4..7, 4..6, 6..7)]);
        assert_eq!(spans(5), [(0..4, 0..0, 0..4), (2..5, 2..4, 4..5)]);
        assert_eq!(spans(6), [(0..4, 0..0, 0..4), (2..6, 2..4, 4..6)]);
        assert_eq!(spans(4), [(0..4, 0..0, 0..4)]);
        assert_eq!(spans(3), [(0..3, 0..0, 0..3)]);
        assert_eq!(spans(1), [(0..1, 0..0, 0..1)]);
        assert!(windows(0).is_empty());
        // Every bar generated exactly once, windows numbered in order.
        for n in 1..40 {
            let ws = windows(n);
            let generated: Vec<usize> = ws.iter().flat_map(|w| w.generated()).collect();
            assert_eq!(generated, (0..n).collect::<Vec<_>>(), "{n} bars");
            assert!(ws.iter().enumerate().all(|(i, w)| w.index == i && w.bars.len() <= WINDOW_BARS));
        }
    }

    /// 2 codebooks at 50 Hz; frame f of codebook q holds (q * 1000 + f) % 2048.
    fn reference(frames: usize) -> ReferenceCodes {
        let codes = (0..2).flat_map(|q| (0..frames).map(move |f| ((q * 1000 + f) % 2048) as u16)).collect();
        ReferenceCodes::new(codes, 2, 2048, 50.0).unwrap()
    }

    #[test]
    fn follow_centres_on_the_bars_and_stays_inside_the_audio() {
        let audio = reference(3000); // 60 s
        assert_eq!(audio.clip_frames(), 508);
        let follow = ClipMode::Follow { offset_seconds: 0.0 };
        // Bars 8 s .. 16 s: centre frame 600, clip 346..854.
        let clip = audio.clip(follow, 8.0, 16.0).unwrap();
        assert_eq!(clip.start_frame, 346);
        assert_eq!((clip.codes[0], clip.codes[507], clip.codes[508]), (346, 853, 1346));
        assert!(clip.mask.iter().all(|&m| m == 1));
        // The first window (0 s .. 8 s, centre 200) would start at -54: moved to 0.
        assert_eq!(audio.clip(follow, 0.0, 8.0).unwrap().start_frame, 0);
        // Near the end (52 s .. 60 s, centre 2800 -> 2546..3054): moved to end at frame 3000.
        let last = audio.clip(follow, 52.0, 60.0).unwrap();
        assert_eq!(last.start_frame, 3000 - 508);
        assert!(last.mask.iter().all(|&m| m == 1));
        // An offset moves the lead sheet along the audio: 8..16 s plays at 18..26 s.
        let shifted = audio.clip(ClipMode::Follow { offset_seconds: 10.0 }, 8.0, 16.0).unwrap();
        assert_eq!(shifted.start_frame, 346 + 500);
    }

    #[test]
    fn fixed_clips_start_at_the_offset_and_pad_past_the_end() {
        let audio = reference(1000); // 20 s
        let fixed = ClipMode::Fixed { offset_seconds: 3.0 };
        let a = audio.clip(fixed, 0.0, 8.0).unwrap();
        assert_eq!(a, audio.clip(fixed, 30.0, 38.0).unwrap(), "the same clip whatever the bars");
        assert_eq!((a.start_frame, a.codes[0]), (150, 150));
        // 19 s: 50 real frames, then pad code and mask 0.
        let tail = audio.clip(ClipMode::Fixed { offset_seconds: 19.0 }, 0.0, 8.0).unwrap();
        assert_eq!(tail.mask.iter().filter(|&&m| m == 1).count(), 50);
        assert_eq!((tail.mask[49], tail.mask[50]), (1, 0));
        assert_eq!((tail.codes[49], tail.codes[50], tail.codes[508 + 50]), (999, 2048, 2048));
        let err = audio.clip(ClipMode::Fixed { offset_seconds: 20.0 }, 0.0, 8.0).unwrap_err().to_string();
        assert!(err.contains("20.00 s") && err.contains("(20.00 s, 1000 frames)"), "{err}");
        assert!(audio.clip(ClipMode::Follow { offset_seconds: -1.0 }, 0.0, 8.0).is_err());
    }

    #[test]
    fn a_reference_shorter_than_a_clip_is_padded_and_masked() {
        let audio = reference(300); // 6 s
        for mode in [ClipMode::Follow { offset_seconds: 0.0 }, ClipMode::Fixed { offset_seconds: 0.0 }] {
            let clip = audio.clip(mode, 4.0, 12.0).unwrap();
            assert_eq!(clip.start_frame, 0, "{mode:?}");
            assert_eq!(clip.mask.iter().map(|&m| usize::from(m)).sum::<usize>(), 300);
            assert_eq!((clip.codes[299], clip.codes[300], clip.codes[508 + 299]), (299, 2048, 1299));
        }
        assert!(ReferenceCodes::new(vec![0; 5], 2, 2048, 50.0).is_err());
        assert!(ReferenceCodes::new(Vec::new(), 2, 2048, 50.0).is_err());
    }
}
