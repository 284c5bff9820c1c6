//! End to end: `stylebridge render` turns MIDI into audio with the GM SoundFont, and
//! `stylebridge corpus synth` writes a consistent, seeded corpus whose styles are told apart
//! from the audio alone.
//!
//! The SoundFont comes from the project's set-up (`make` installs pretty-midi, which ships
//! TimGM6mb.sf2); these tests run through `make test` / `make cargo`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use stylebridge::data::audio::load_mono;
use stylebridge::data::corpus::{drawn_touch, Manifest, Style, Touch};
use stylebridge::data::leadsheet::read_chord_file;
use stylebridge::data::midi::{self, ControlChange, Instrument, Note, Score, TempoChange, TimeSignature, SUSTAIN_PEDAL};

fn stylebridge(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_stylebridge"))
        .args(args)
        .output()
        .expect("run stylebridge");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// `corpus synth` of `songs` lead sheets at the tests' seed, bars and rate, plus `extra` flags.
fn synth(out: &Path, songs: usize, extra: &[&str]) -> (bool, String) {
    let (songs, bars, rate) = (songs.to_string(), BARS.to_string(), RATE.to_string());
    let mut args =
        vec!["corpus", "synth", "--out", path_str(out), "--songs", &songs, "--seed", SEED, "--bars", &bars, "--sample-rate", &rate];
    args.extend_from_slice(extra);
    stylebridge(&args)
}

/// Strength of a sinusoid at `freq` in `x` (least-squares amplitude).
fn tone_amplitude(x: &[f32], rate: u32, freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
    let (c, s) = x.iter().enumerate().fold((0.0, 0.0), |(c, s), (i, &v)| {
        (
            c + f64::from(v) * (w * i as f64).cos(),
            s + f64::from(v) * (w * i as f64).sin(),
        )
    });
    2.0 * (c * c + s * s).sqrt() / x.len() as f64
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

#[test]
fn render_plays_the_notes_at_their_times_and_pitch() {
    let dir = tempfile::tempdir().unwrap();
    // 120 bpm: an A4 (440 Hz) for beats 0-2 (1 s), silence, then an A3 for beats 4-6.
    let note = |start, end, pitch| Note {
        start,
        end,
        pitch,
        velocity: 100,
    };
    let score = Score {
        ticks_per_beat: 480,
        instruments: vec![
            Instrument {
                name: "PIANO".into(),
                program: 0,
                is_drum: false,
                notes: vec![note(0, 960, 69), note(1920, 2880, 57)],
                control_changes: vec![],
            },
            Instrument {
                name: "DRUMS".into(),
                program: 0,
                is_drum: true,
                notes: vec![note(1920, 2000, 36)],
                control_changes: vec![],
            },
        ],
        tempo_changes: vec![TempoChange { tick: 0, bpm: 120.0 }],
        time_signatures: vec![TimeSignature {
            tick: 0,
            numerator: 4,
            denominator: 4,
        }],
    };
    let mid = dir.path().join("two_notes.mid");
    midi::write(&score, &mid).unwrap();
    let wav = dir.path().join("two_notes.wav");
    let (ok, text) = stylebridge(&["render", path_str(&mid), "-o", path_str(&wav)]);
    assert!(ok, "{text}");
    assert!(text.contains("two_notes.wav"), "{text}");

    let sr = 32_000;
    let audio = load_mono(&wav, sr).unwrap();
    // The last note ends at 3 s; one second of release tail follows.
    assert_eq!(audio.len(), 4 * sr as usize);
    let secs = |a: f64, b: f64| &audio[(a * f64::from(sr)) as usize..(b * f64::from(sr)) as usize];
    let first = secs(0.1, 0.9);
    let gap = secs(1.8, 1.95);
    let second = secs(2.1, 2.9);
    assert!(
        rms(first) > 20.0 * rms(gap),
        "first note {} vs gap {}",
        rms(first),
        rms(gap)
    );
    assert!(
        rms(second) > 20.0 * rms(gap),
        "second note {} vs gap {}",
        rms(second),
        rms(gap)
    );
    // A4's 440 Hz fundamental, not 220 Hz, in the first note; A3's 220 Hz only in the second.
    assert!(tone_amplitude(first, sr, 440.0) > 5.0 * tone_amplitude(first, sr, 220.0));
    assert!(tone_amplitude(second, sr, 220.0) > 5.0 * tone_amplitude(first, sr, 220.0));
}

/// A sustain pedal written to the MIDI file holds a note past its note-off: `render` of the file
/// keeps sounding where the same file without the pedal has gone quiet.
#[test]
fn a_held_pedal_sustains_a_note_past_its_note_off() {
    let dir = tempfile::tempdir().unwrap();
    // 120 bpm: an A4 for 0.25 s (240 ticks); the pedal goes down at 0 and up at 2 s.
    let pedal = |tick, value| ControlChange { tick, controller: SUSTAIN_PEDAL, value };
    let with_pedal = |control_changes: Vec<ControlChange>| Score {
        ticks_per_beat: 480,
        instruments: vec![Instrument {
            name: "PIANO".into(),
            program: 0,
            is_drum: false,
            notes: vec![Note { start: 0, end: 240, pitch: 69, velocity: 100 }],
            control_changes,
        }],
        tempo_changes: vec![TempoChange { tick: 0, bpm: 120.0 }],
        time_signatures: vec![],
    };
    let sr = 16_000;
    let render = |name: &str, score: &Score| {
        let (mid, wav) = (dir.path().join(format!("{name}.mid")), dir.path().join(format!("{name}.wav")));
        midi::write(score, &mid).unwrap();
        let (ok, text) = stylebridge(&["render", path_str(&mid), "-o", path_str(&wav), "--sample-rate", &sr.to_string()]);
        assert!(ok, "{text}");
        load_mono(&wav, sr).unwrap()
    };
    let held = render("held", &with_pedal(vec![pedal(0, 127), pedal(1920, 0)]));
    let dry = render("dry", &with_pedal(vec![]));
    // Through the pedal's release (2 s) plus the 1 s tail, against the note's end plus the tail.
    assert_eq!((held.len(), dry.len()), (3 * sr as usize, 5 * sr as usize / 4));
    let after_release = |x: &[f32]| rms(&x[(0.6 * f64::from(sr)) as usize..(1.2 * f64::from(sr)) as usize]);
    let (sustained, released) = (after_release(&held), after_release(&dry));
    assert!(sustained > 10.0 * released && sustained > 1e-3, "0.6-1.2 s after the onset: {sustained} with the pedal, {released} without");
    // While the key is down both sound alike.
    let attack = |x: &[f32]| rms(&x[..(0.2 * f64::from(sr)) as usize]);
    assert!((attack(&held) / attack(&dry) - 1.0).abs() < 0.05, "{} vs {}", attack(&held), attack(&dry));
}

#[test]
fn render_reports_bad_inputs_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let not_midi = dir.path().join("notes.mid");
    std::fs::write(&not_midi, b"not a midi file").unwrap();
    let out = dir.path().join("out.wav");
    let (ok, text) = stylebridge(&["render", path_str(&not_midi), "-o", path_str(&out)]);
    assert!(!ok && text.contains("notes.mid"), "{text}");

    let mid = dir.path().join("empty.mid");
    let empty = Score {
        ticks_per_beat: 480,
        instruments: vec![],
        tempo_changes: vec![],
        time_signatures: vec![],
    };
    midi::write(&empty, &mid).unwrap();
    let bogus = dir.path().join("bogus.sf2");
    std::fs::write(&bogus, b"RIFF....sfbk").unwrap();
    // A missing SoundFont and one that is not a SoundFont, each named in the error.
    for (soundfont, expected) in [("/nonexistent/gm.sf2", "/nonexistent/gm.sf2"), (path_str(&bogus), "bogus.sf2")] {
        let (ok, text) = stylebridge(&["render", path_str(&mid), "-o", path_str(&out), "--soundfont", soundfont]);
        assert!(!ok && text.contains(expected) && text.contains("SoundFont"), "{text}");
    }
    assert!(!out.exists());
}

const SEED: &str = "11";
const BARS: u32 = 4;
const RATE: u32 = 16_000;

/// One small corpus shared by the tests below: 3 lead sheets (two in 4/4, one in 3/4), 4 bars,
/// every pattern played as written (the drawn touch is checked on its own).
fn corpus() -> &'static (tempfile::TempDir, Manifest) {
    static CORPUS: OnceLock<(tempfile::TempDir, Manifest)> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("corpus");
        let (ok, text) = synth(&out, 3, &["--as-written"]);
        assert!(ok, "{text}");
        assert!(text.contains("14 arrangements of 3 lead sheets"), "{text}");
        let manifest = Manifest::read(&out).unwrap();
        (dir, manifest)
    })
}

fn corpus_dir() -> PathBuf {
    corpus().0.path().join("corpus")
}

#[test]
fn corpus_files_agree_with_the_manifest() {
    let (_, manifest) = corpus();
    let dir = corpus_dir();
    assert_eq!((manifest.songs, manifest.bars, manifest.sample_rate), (3, BARS, RATE));
    let mut by_sheet: BTreeMap<&str, Vec<&stylebridge::data::corpus::Item>> = BTreeMap::new();
    for item in &manifest.items {
        by_sheet.entry(&item.lead_sheet).or_default().push(item);
    }
    assert_eq!(
        by_sheet.keys().copied().collect::<Vec<_>>(),
        ["ls000", "ls001", "ls002"]
    );
    for (sheet, items) in &by_sheet {
        let meter = &items[0].meter;
        let styles: Vec<Style> = items.iter().map(|i| i.style).collect();
        let expected: Vec<Style> = Style::ALL
            .into_iter()
            .filter(|s| s.fits(if meter == "3/4" { 3 } else { 4 }))
            .collect();
        assert_eq!(styles, expected, "{sheet}");
        let mut melodies = Vec::new();
        let mut pianos = Vec::new();
        for item in items {
            // The name says which lead sheet and style the files hold.
            assert_eq!(item.name, format!("{}_{}", item.lead_sheet, item.style.name()));
            for f in [&item.midi, &item.audio, &item.chord_file] {
                assert!(f.starts_with(&item.name), "{f}");
            }
            assert_eq!(
                (&item.key, item.tempo_bpm, &item.meter),
                (&items[0].key, items[0].tempo_bpm, meter)
            );
            let score = midi::read(&dir.join(&item.midi)).unwrap();
            let track = |name: &str| {
                score
                    .instruments
                    .iter()
                    .find(|i| i.name == name)
                    .unwrap_or_else(|| panic!("{name}"))
            };
            melodies.push(track("MELODY").notes.clone());
            pianos.push(track("PIANO").notes.clone());
            assert_eq!(score.tempo_changes[0].bpm.round(), item.tempo_bpm);
            let beats = score.time_signatures[0].numerator;
            assert_eq!(format!("{beats}/{}", score.time_signatures[0].denominator), item.meter);
            let song_s = f64::from(BARS * beats) * 60.0 / item.tempo_bpm;
            // Chord file: one chord per bar, labels as in the manifest, covering the song.
            let chords = read_chord_file(&dir.join(&item.chord_file)).unwrap();
            assert_eq!(chords.iter().map(|c| c.label.clone()).collect::<Vec<_>>(), item.chords);
            assert!(chords.iter().all(|c| c.chord.is_some()));
            assert!((chords.last().unwrap().end - song_s).abs() < 1e-3);
            // Audio: the song plus the synthesiser's one-second release tail.
            let audio = load_mono(&dir.join(&item.audio), RATE).unwrap();
            assert!((audio.len() as f64 / f64::from(RATE) - item.seconds).abs() < 1e-3);
            assert!(
                (item.seconds - (song_s + 1.0)).abs() < 0.01,
                "{}: {} s",
                item.name,
                item.seconds
            );
            assert!(rms(&audio) > 1e-3, "{} is silent", item.name);
        }
        // One lead sheet: the same melody in every style, a different piano part in each.
        assert!(melodies.windows(2).all(|w| w[0] == w[1]), "{sheet}");
        for i in 0..pianos.len() {
            for j in i + 1..pianos.len() {
                assert_ne!(pianos[i], pianos[j], "{sheet}: {:?} == {:?}", styles[i], styles[j]);
            }
        }
    }
    assert_eq!(by_sheet["ls002"][0].meter, "3/4");
    assert_eq!(by_sheet["ls000"][0].meter, "4/4");
}

#[test]
fn corpus_is_seeded_and_band_parts_are_optional() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("one");
    let (ok, text) = synth(&out, 1, &["--styles", "stride,bossa", "--band", "--as-written"]);
    assert!(ok, "{text}");
    let manifest = Manifest::read(&out).unwrap();
    assert!(manifest.band);
    assert_eq!(
        manifest.items.iter().map(|i| i.style).collect::<Vec<_>>(),
        [Style::Stride, Style::Bossa]
    );
    let shared = midi::read(&corpus_dir().join("ls000_stride.mid")).unwrap();
    let banded = midi::read(&out.join("ls000_stride.mid")).unwrap();
    // Same seed, same lead sheet and piano part; the band adds BASS and DRUMS.
    for name in ["MELODY", "PIANO"] {
        let notes = |s: &Score| s.instruments.iter().find(|i| i.name == name).map(|i| i.notes.clone());
        assert_eq!(notes(&shared), notes(&banded), "{name}");
    }
    let names: Vec<(&str, bool)> = banded
        .instruments
        .iter()
        .map(|i| (i.name.as_str(), i.is_drum))
        .collect();
    assert_eq!(
        names,
        [("MELODY", false), ("PIANO", false), ("BASS", false), ("DRUMS", true)]
    );

    let (ok, text) = stylebridge(&[
        "corpus",
        "synth",
        "--out",
        path_str(&out),
        "--songs",
        "1",
        "--styles",
        "waltz",
    ]);
    assert!(!ok && text.contains("none of the selected styles"), "{text}");
}

#[test]
fn each_arrangement_draws_its_touch_and_the_manifest_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("drawn");
    let (ok, text) = synth(&out, 3, &[]);
    assert!(ok, "{text}");
    let drawn = Manifest::read(&out).unwrap();
    let (_, plain) = corpus();
    assert!(plain.items.iter().all(|i| i.touch == Touch::AS_WRITTEN));
    let seed: u64 = SEED.parse().unwrap();
    for (item, written) in drawn.items.iter().zip(&plain.items) {
        assert_eq!((&item.name, item.style), (&written.name, written.style));
        let index: u64 = item.lead_sheet[2..].parse().unwrap();
        assert_eq!(item.touch, drawn_touch(seed, index, item.style), "{}", item.name);
        let piano = |dir: &Path| {
            let score = midi::read(&dir.join(&item.midi)).unwrap();
            score.instruments.into_iter().find(|i| i.name == "PIANO").unwrap().notes
        };
        let (played, as_written) = (piano(&out), piano(&corpus_dir()));
        // The register moves the whole part (the note count can differ: overlapping repeats of
        // one pitch pair up differently once staccato shortens them).
        let span = |notes: &[Note]| {
            let pitches = notes.iter().map(|n| i32::from(n.pitch));
            (pitches.clone().min().unwrap(), pitches.max().unwrap())
        };
        let ((low, high), (written_low, written_high)) = (span(&played), span(&as_written));
        let register = item.touch.register;
        assert_eq!((low, high), (written_low + register, written_high + register), "{}", item.name);
    }
    // Two arrangements of one style rarely play it alike.
    let distinct: std::collections::BTreeSet<String> = drawn.items.iter().map(|i| format!("{:?}", i.touch)).collect();
    assert!(distinct.len() >= 6, "only {} touches among {} arrangements", distinct.len(), drawn.items.len());
}

/// Audio features a listener would use to tell accompaniment styles apart: how onsets fall on the
/// sixteenth-note grid (spectral flux folded by position within the beat), the spread of energy
/// over five bands (bass ... treble), and the overall onset density.
fn style_features(audio: &[f32], rate: u32, bpm: f64) -> Vec<f64> {
    const N: usize = 512;
    let hop = rate as usize / 100;
    let mut planner = realfft::RealFftPlanner::<f64>::new();
    let fft = planner.plan_fft_forward(N);
    let window: Vec<f64> = (0..N)
        .map(|i| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / N as f64).cos())
        .collect();
    let frames = (audio.len() - N) / hop;
    let mut spectrum = fft.make_output_vec();
    let mut previous: Vec<f64> = vec![0.0; N / 2 + 1];
    let mut power = vec![0.0; N / 2 + 1];
    let (mut sub_flux, mut sub_count) = ([0.0; 4], [0.0; 4]);
    let mut total_flux = 0.0;
    for f in 0..frames {
        let mut input: Vec<f64> = (0..N).map(|i| f64::from(audio[f * hop + i]) * window[i]).collect();
        fft.process(&mut input, &mut spectrum).unwrap();
        let magnitude: Vec<f64> = spectrum.iter().map(|c| c.norm()).collect();
        let log_mag: Vec<f64> = magnitude.iter().map(|m| (1.0 + 100.0 * m).ln()).collect();
        for (p, m) in power.iter_mut().zip(&magnitude) {
            *p += m * m;
        }
        if f > 0 {
            let flux: f64 = log_mag.iter().zip(&previous).map(|(a, b)| (a - b).max(0.0)).sum();
            let t = (f * hop + N / 2) as f64 / f64::from(rate);
            let sixteenth = ((t * bpm / 60.0 * 4.0).round() as usize) % 4;
            sub_flux[sixteenth] += flux;
            sub_count[sixteenth] += 1.0;
            total_flux += flux;
        }
        previous = log_mag;
    }
    let profile: Vec<f64> = (0..4).map(|k| sub_flux[k] / sub_count[k]).collect();
    let mean = profile.iter().sum::<f64>() / 4.0;
    let hz_per_bin = f64::from(rate) / N as f64;
    let bands = [
        (0.0, 150.0),
        (150.0, 300.0),
        (300.0, 600.0),
        (600.0, 1200.0),
        (1200.0, 4000.0),
    ];
    let band_power: Vec<f64> = bands
        .iter()
        .map(|&(lo, hi)| {
            power
                .iter()
                .enumerate()
                .filter(|(k, _)| (lo..hi).contains(&(*k as f64 * hz_per_bin)))
                .map(|(_, p)| p)
                .sum()
        })
        .collect();
    let all: f64 = band_power.iter().sum();
    let mut features: Vec<f64> = profile.iter().map(|p| p / mean).collect();
    features.extend(band_power.iter().map(|p| (p / all).ln()));
    features.push((total_flux / frames as f64).ln());
    features
}

#[test]
fn styles_are_told_apart_from_the_audio_of_another_lead_sheet() {
    let (_, manifest) = corpus();
    let dir = corpus_dir();
    // The two 4/4 lead sheets share five styles: label each arrangement of one lead sheet with
    // the style of its nearest neighbour among the other's (features standardised).
    let items: Vec<_> = manifest.items.iter().filter(|i| i.meter == "4/4").collect();
    let raw: Vec<Vec<f64>> = items
        .iter()
        .map(|i| style_features(&load_mono(&dir.join(&i.audio), RATE).unwrap(), RATE, i.tempo_bpm))
        .collect();
    let dims = raw[0].len();
    let n = raw.len() as f64;
    let mean: Vec<f64> = (0..dims).map(|d| raw.iter().map(|f| f[d]).sum::<f64>() / n).collect();
    let sd: Vec<f64> = (0..dims)
        .map(|d| (raw.iter().map(|f| (f[d] - mean[d]).powi(2)).sum::<f64>() / n).sqrt() + 1e-9)
        .collect();
    let z: Vec<Vec<f64>> = raw
        .iter()
        .map(|f| (0..dims).map(|d| (f[d] - mean[d]) / sd[d]).collect())
        .collect();
    let dist = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();

    let mut correct = 0;
    for (i, item) in items.iter().enumerate() {
        let nearest = (0..items.len())
            .filter(|&j| items[j].lead_sheet != item.lead_sheet)
            .min_by(|&a, &b| dist(&z[i], &z[a]).total_cmp(&dist(&z[i], &z[b])))
            .unwrap();
        println!("{} -> {}", item.name, items[nearest].style.name());
        correct += usize::from(items[nearest].style == item.style);
    }
    // Chance is 1 in 5; the generator's styles are clearly distinct in sound.
    assert!(
        correct >= 8,
        "only {correct} of {} arrangements matched their style",
        items.len()
    );

    // Within one lead sheet every pair of styles sounds different.
    for (i, a) in items.iter().enumerate() {
        for (j, b) in items.iter().enumerate().skip(i + 1) {
            if a.lead_sheet == b.lead_sheet {
                assert!(dist(&z[i], &z[j]) > 1.0, "{} and {} sound alike", a.name, b.name);
            }
        }
    }
}

#[test]
fn pop909_song_renders_with_band_programs() {
    let song = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/pop909/POP909/001/001.mid");
    if !song.is_file() {
        println!("skipped: {} is absent (POP909 lives in ../shared)", song.display());
        return;
    }
    let score = midi::read(&song).unwrap();
    let banded = stylebridge::data::render::band_programs(&score);
    let program = |name: &str| banded.instruments.iter().find(|i| i.name == name).map(|i| i.program);
    assert_eq!(
        (program("MELODY"), program("BRIDGE"), program("PIANO")),
        (Some(65), Some(48), Some(0))
    );
    // Its PIANO track pedals: pretty_midi 0.2.11 counts 274 sustain events in 001.mid, as here.
    let piano = banded.instruments.iter().find(|i| i.name == "PIANO").unwrap();
    assert_eq!(piano.control_changes.iter().filter(|c| c.controller == SUSTAIN_PEDAL).count(), 274);
    // The first 16 beats are enough to hear all three parts.
    let cut = 16 * score.ticks_per_beat;
    let mut short = banded.clone();
    for inst in &mut short.instruments {
        inst.notes.retain(|n| n.start < cut);
        inst.notes.iter_mut().for_each(|n| n.end = n.end.min(cut));
        // POP909's PIANO tracks pedal (CC 64); the render lasts through the last control change.
        inst.control_changes.retain(|c| c.tick < cut);
    }
    let font = stylebridge::data::render::resolve_soundfont(None).unwrap();
    let audio = stylebridge::data::render::SoundFontSynth::load(&font)
        .unwrap()
        .render(&short, 32_000)
        .unwrap();
    let tempo = stylebridge::data::segments::TempoMap::new(&short);
    // Through the last note's end or pedal change, whichever is later, plus the release tail.
    let note_ends = short.instruments.iter().flat_map(|i| &i.notes).map(|n| n.end);
    let last = note_ends.chain(short.instruments.iter().flat_map(|i| &i.control_changes).map(|c| c.tick)).max().unwrap();
    let expected = tempo.seconds_at(f64::from(last)) + stylebridge::data::render::RELEASE_TAIL_S;
    assert!((audio.len() as f64 / 32_000.0 - expected).abs() < 1e-3);
    assert!(rms(&audio) > 1e-3);
}
