//! Audio side throughput, single thread:
//! - decoding + resampling to 32 kHz (`load_mono`) of a 30 s 44.1 kHz WAV, x realtime;
//! - SoundFont rendering of one 8-bar arrangement of the embedded corpus, x realtime;
//! - `corpus synth` end to end (compose, arrange, render, write MIDI/WAV/chords), arrangements/s.
//!
//! ```text
//! make cargo ARGS="bench --bench audio_corpus"
//! ```
//! Figures are medians of several runs; the machine is shared, so expect 10-20 % noise.
use std::time::Instant;
use stylebridge::data::audio::{load_mono, write_wav};
use stylebridge::data::corpus::{arrangement, drawn_touch, lead_sheet, synthesize, Style, SynthOptions};
use stylebridge::data::render::{resolve_soundfont, SoundFontSynth};

fn median_seconds(repeats: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let wav = dir.path().join("tone.wav");
    let seconds = 30.0;
    let x: Vec<f32> = (0..(44_100.0 * seconds) as usize)
        .map(|i| 0.5 * (i as f32 * 0.0627).sin())
        .collect();
    write_wav(&wav, &x, 44_100)?;
    let t = median_seconds(5, || {
        load_mono(&wav, 32_000).expect("decode");
    });
    println!(
        "load_mono 44.1 kHz WAV -> 32 kHz: {:.3} s per {seconds} s file ({:.0}x realtime)",
        t,
        seconds / t
    );

    let font = resolve_soundfont(None)?;
    let synth = SoundFontSynth::load(&font)?;
    let sheet = lead_sheet(0, 0, 8);
    for style in [Style::Block, Style::Arpeggio] {
        let score = arrangement(&sheet, style, drawn_touch(0, 0, style), true, 0, 0);
        let mut audio_s = 0.0;
        let t = median_seconds(5, || {
            audio_s = synth.render(&score, 32_000).expect("render").len() as f64 / 32_000.0;
        });
        println!(
            "render 8-bar {} + band: {:.3} s per {audio_s:.1} s of audio ({:.0}x realtime)",
            style.name(),
            t,
            audio_s / t
        );
    }

    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let options = SynthOptions {
        out: dir.path().join("corpus"),
        songs: 3,
        seed: 0,
        bars: 8,
        styles: Style::ALL.to_vec(),
        band: false,
        as_written: false,
        sample_rate: 32_000,
    };
    let mut items = 0;
    let t = median_seconds(3, || {
        items = pool
            .install(|| synthesize(&options, &synth, &font))
            .expect("corpus")
            .items
            .len();
    });
    println!(
        "corpus synth, 3 lead sheets x styles = {items} arrangements of 8 bars, 1 thread: {:.2} s ({:.1} arrangements/s, {:.2} lead sheets/s)",
        t,
        items as f64 / t,
        3.0 / t
    );
    Ok(())
}
