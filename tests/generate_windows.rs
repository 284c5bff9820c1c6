//! Windows of real passages, worked out by hand: which bars each window covers, carries and
//! generates, and which frames of the reference audio it reads in both clip modes, for a 3/4
//! piece, a 4/4 piece starting in mid-song and a piece shorter than one window.
use std::ops::Range;

use stylebridge::data::midi::{Instrument, Note, Score, TempoChange, TimeSignature};
use stylebridge::generate::{windows, ClipMode, Passage, ReferenceCodes};

/// `bars` bars of one chord each.
fn lead_sheet(meter: (u32, u32), bars: u32, bpm: f64) -> Score {
    let bar = 480 * 4 * meter.0 / meter.1;
    let chords = (0..bars).flat_map(|b| [48u8, 55].map(|pitch| Note { start: b * bar, end: (b + 1) * bar, pitch, velocity: 80 })).collect();
    Score {
        ticks_per_beat: 480,
        instruments: vec![Instrument { name: "CHORDS".into(), program: 4, is_drum: false, notes: chords, control_changes: Vec::new() }],
        tempo_changes: vec![TempoChange { tick: 0, bpm }],
        time_signatures: vec![TimeSignature { tick: 0, numerator: meter.0, denominator: meter.1 }],
    }
}

/// Codes of `frames` frames at 50 Hz, 4 codebooks, frame f holding f.
fn reference(frames: usize) -> ReferenceCodes {
    ReferenceCodes::new((0..4).flat_map(|_| (0..frames).map(|f| f as u16)).collect(), 4, 2048, 50.0).unwrap()
}

/// One window: its bars, carried bars, generated bars, first audio frame and real frames.
type WindowLayout = (Range<usize>, Range<usize>, Range<usize>, i64, usize);

fn layout(passage: &Passage, audio: &ReferenceCodes, mode: ClipMode) -> Vec<WindowLayout> {
    windows(passage.len())
        .into_iter()
        .map(|w| {
            let (start, end) = passage.seconds(w.bars.clone());
            let clip = audio.clip(mode, start, end).unwrap();
            assert_eq!((clip.codes.len(), clip.mask.len()), (4 * 508, 508));
            let real = clip.mask.iter().filter(|&&m| m == 1).count();
            (w.bars.clone(), w.carried.clone(), w.generated(), clip.start_frame, real)
        })
        .collect()
}

#[test]
fn three_four_piece_with_the_audio_following_it() {
    // 3/4 at 90 bpm: 2 s a bar; 7 bars = 14 s; a reference of exactly 14 s (700 frames).
    let passage = Passage::new(&lead_sheet((3, 4), 7, 90.0), 0, None).unwrap();
    let audio = reference(700);
    let got = layout(&passage, &audio, ClipMode::Follow { offset_seconds: 0.0 });
    // Window 0: bars 0..4 = 0..8 s, centre frame 200, would start at -54: starts at 0.
    // Window 1: 4..12 s, centre 400: frames 146..654.
    // Window 2: bars 4..7 = 8..14 s, centre 550 -> 296..804, past the end: moved to 192..700.
    assert_eq!(got, [(0..4, 0..0, 0..4, 0, 508), (2..6, 2..4, 4..6, 146, 508), (4..7, 4..6, 6..7, 192, 508)]);
    // Fixed mode: one clip at 1.5 s for every window.
    let fixed = layout(&passage, &audio, ClipMode::Fixed { offset_seconds: 1.5 });
    assert!(fixed.iter().all(|w| (w.3, w.4) == (75, 508)));
    // The first frame's code is the frame index.
    let (start, end) = passage.seconds(2..6);
    assert_eq!(audio.clip(ClipMode::Follow { offset_seconds: 0.0 }, start, end).unwrap().codes[0], 146);
}

#[test]
fn passage_from_mid_song_keeps_the_lead_sheets_seconds() {
    // 4/4 at 120 bpm: 2 s a bar. Bars 3..11 of 12: 8 bars, lead-sheet seconds 6..22.
    let passage = Passage::new(&lead_sheet((4, 4), 12, 120.0), 3, Some(8)).unwrap();
    let audio = reference(1500); // 30 s
    let got = layout(&passage, &audio, ClipMode::Follow { offset_seconds: 0.0 });
    // Lead-sheet bars 3..7 = 6..14 s (centre frame 500), 5..9 = 10..18 s (700), 7..11 = 14..22 s (900).
    assert_eq!(got, [(0..4, 0..0, 0..4, 246, 508), (2..6, 2..4, 4..6, 446, 508), (4..8, 4..6, 6..8, 646, 508)]);
    // The audio starting 5 s before the lead sheet's second 0 on: everything 250 frames later.
    let shifted = layout(&passage, &audio, ClipMode::Follow { offset_seconds: 5.0 });
    assert_eq!(shifted.iter().map(|w| w.3).collect::<Vec<_>>(), [496, 696, 896]);
    // A fixed clip near the end of the audio: 28 s = frame 1400, 100 real frames, the rest padded.
    let tail = layout(&passage, &audio, ClipMode::Fixed { offset_seconds: 28.0 });
    assert!(tail.iter().all(|w| (w.3, w.4) == (1400, 100)));
}

#[test]
fn a_piece_shorter_than_a_window_with_a_short_reference() {
    // 3 bars of 4/4 at 120 bpm (6 s) and 6 s of audio (300 frames, under one clip).
    let passage = Passage::new(&lead_sheet((4, 4), 3, 120.0), 0, None).unwrap();
    let audio = reference(300);
    for mode in [ClipMode::Follow { offset_seconds: 0.0 }, ClipMode::Fixed { offset_seconds: 0.0 }] {
        assert_eq!(layout(&passage, &audio, mode), [(0..3, 0..0, 0..3, 0, 300)], "{mode:?}");
    }
    let err = audio.clip(ClipMode::Fixed { offset_seconds: 7.0 }, 0.0, 6.0).unwrap_err().to_string();
    assert!(err.contains("7.00 s is past the end of the reference audio (6.00 s, 300 frames)"), "{err}");
}
