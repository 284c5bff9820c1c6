//! MIDI to audio with a General MIDI SoundFont (the pure-Rust `rustysynth` synthesiser).
//!
//! POP909's audio is not public, so its songs are rendered (SPEC 2): the MELODY, BRIDGE and
//! PIANO tracks get band-like GM programs ([`band_programs`]), which turns a POP909 song into
//! a paired audio + MIDI example. Notes are played with their instruments' control changes, so
//! a sustain pedal holds them past their note-off.
use crate::data::audio::{check_sample_rate, MAX_SECONDS};
use crate::data::midi::{Instrument, Score};
use crate::data::segments::TempoMap;
use anyhow::{bail, Context, Result};
use rustysynth::{SoundFont, Synthesizer, SynthesizerSettings};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Environment variable naming a SoundFont to use when `--soundfont` is not given.
pub const SOUNDFONT_ENV: &str = "STYLEBRIDGE_SOUNDFONT";
/// Environment variable naming the project's virtualenv (exported by the Makefile); the PyPI
/// package `pretty-midi` installed there ships `TimGM6mb.sf2`.
pub const VENV_ENV: &str = "STYLEBRIDGE_VENV";
/// Debian's packaged GM SoundFonts (`timgm6mb-soundfont`, `fluid-soundfont-gm`).
const SYSTEM_SOUNDFONTS: [&str; 2] = [
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
];

/// Seconds of release tail rendered after the last note ends.
pub const RELEASE_TAIL_S: f64 = 1.0;

/// GM programs that make a POP909 song sound like a small band: a sax-like lead for the
/// vocal melody, strings for the bridge (secondary melody), and the acoustic grand piano.
pub const POP909_BAND: [(&str, u8); 3] = [("MELODY", 65), ("BRIDGE", 48), ("PIANO", 0)];

/// Find the SoundFont to use: the explicit path, else `$STYLEBRIDGE_SOUNDFONT`, else
/// `TimGM6mb.sf2` from `pretty-midi` in `$STYLEBRIDGE_VENV` (default `~/.cache/stylebridge/venv`),
/// else a Debian GM SoundFont.
pub fn resolve_soundfont(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = explicit {
        anyhow::ensure!(path.is_file(), "SoundFont {} does not exist", path.display());
        return Ok(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os(SOUNDFONT_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        anyhow::ensure!(
            path.is_file(),
            "SoundFont {} (from ${SOUNDFONT_ENV}) does not exist",
            path.display()
        );
        return Ok(path);
    }
    // The Makefile's default virtualenv, for a binary run outside `make`.
    let default_venv = std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/stylebridge/venv"));
    let from_venv = std::env::var_os(VENV_ENV)
        .map(PathBuf::from)
        .or(default_venv)
        .and_then(|venv| venv_soundfont(&venv));
    let system = SYSTEM_SOUNDFONTS.iter().map(PathBuf::from).find(|p| p.is_file());
    from_venv.or(system).with_context(|| {
        format!(
            "no SoundFont found. Pass --soundfont FILE.sf2, set ${SOUNDFONT_ENV}, or run through `make` \
             (its set-up installs the PyPI package pretty-midi, which ships TimGM6mb.sf2, into the \
             virtualenv named by ${VENV_ENV}); `apt-get install fluid-soundfont-gm` also works"
        )
    })
}

/// `<venv>/lib/python3.*/site-packages/pretty_midi/TimGM6mb.sf2`, if present.
fn venv_soundfont(venv: &Path) -> Option<PathBuf> {
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(venv.join("lib"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    pythons.sort();
    pythons
        .into_iter()
        .map(|p| p.join("site-packages/pretty_midi/TimGM6mb.sf2"))
        .find(|p| p.is_file())
}

/// A copy of `score` where POP909's MELODY, BRIDGE and PIANO tracks play [`POP909_BAND`]
/// programs; other tracks keep theirs.
pub fn band_programs(score: &Score) -> Score {
    let mut banded = score.clone();
    for inst in banded.instruments.iter_mut().filter(|i| !i.is_drum) {
        let name = inst.name.trim();
        if let Some(&(_, program)) = POP909_BAND.iter().find(|(track, _)| name.eq_ignore_ascii_case(track)) {
            inst.program = program;
        }
    }
    banded
}

/// A loaded SoundFont, ready to render scores.
pub struct SoundFontSynth {
    font: Arc<SoundFont>,
}

/// What an event does. At one sample they run in this order: controllers (a pedal pressed as a
/// note ends holds it, as the MIDI writer orders them), note-offs (so a repeated key re-attacks
/// instead of being cut by the previous note's release), note-ons.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Action {
    Control,
    NoteOff,
    NoteOn,
}

/// One MIDI event at a sample position: a control change (`data` = controller, value) or a
/// note-off / note-on (`data` = key, velocity).
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Event {
    sample: u64,
    action: Action,
    channel: i32,
    data: (i32, i32),
}

impl SoundFontSynth {
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read SoundFont {}", path.display()))?;
        // rustysynth may panic on a malformed file; turn that into an error naming the file.
        let parsed = std::panic::catch_unwind(|| SoundFont::new(&mut bytes.as_slice()));
        let font = match parsed {
            Ok(Ok(font)) => font,
            Ok(Err(e)) => bail!("{} is not a usable SoundFont (.sf2): {e}", path.display()),
            Err(_) => bail!(
                "{} is not a usable SoundFont (.sf2): the parser rejected it",
                path.display()
            ),
        };
        anyhow::ensure!(
            !font.get_presets().is_empty(),
            "SoundFont {} has no presets",
            path.display()
        );
        Ok(Self { font: Arc::new(font) })
    }

    /// Render `score` with the programs it holds to mono audio at `sample_rate` Hz, through
    /// the last note's end (or the last control change, such as a pedal release) plus
    /// [`RELEASE_TAIL_S`]. Control changes act on their instrument's channel, which the other
    /// instruments of its program share. The stereo output is averaged; if the mix would clip,
    /// it is scaled down to a 0.99 peak.
    pub fn render(&self, score: &Score, sample_rate: u32) -> Result<Vec<f32>> {
        let tempo = TempoMap::new(score);
        let to_sample = |tick: u32| (tempo.seconds_at(f64::from(tick)) * sample_rate as f64).round() as u64;
        let note_ends = score.instruments.iter().flat_map(|i| &i.notes).map(|n| n.end);
        let controls = score.instruments.iter().flat_map(|i| &i.control_changes).map(|c| c.tick);
        // Sizes come from the caller and the file: check them before allocating the output.
        check_sample_rate(u64::from(sample_rate), "rendering")?;
        let last_end = note_ends.chain(controls).map(|tick| tempo.seconds_at(f64::from(tick))).fold(0.0, f64::max);
        let seconds = last_end + RELEASE_TAIL_S;
        if seconds > MAX_SECONDS {
            bail!("the score lasts {seconds:.0} s with its release tail, longer than the {MAX_SECONDS} s that can be rendered");
        }
        let total = (last_end * f64::from(sample_rate)).round() as usize + (RELEASE_TAIL_S * f64::from(sample_rate)) as usize;

        // GM has 15 melodic channels (9 is percussion): scores with more programs are rendered
        // in several passes, 15 programs each, and mixed.
        let mut programs: Vec<u8> = Vec::new();
        for inst in score.instruments.iter().filter(|i| !i.is_drum) {
            if !programs.contains(&inst.program) {
                programs.push(inst.program);
            }
        }
        let mut mix = vec![0f32; total];
        let passes: Vec<&[u8]> = if programs.is_empty() {
            vec![&[]]
        } else {
            programs.chunks(15).collect()
        };
        for (pass, pass_programs) in passes.into_iter().enumerate() {
            let channel_of: BTreeMap<u8, i32> = pass_programs
                .iter()
                .zip((0..16).filter(|&c| c != 9))
                .map(|(&p, c)| (p, c))
                .collect();
            let with_drums = pass == 0;
            let in_pass = |inst: &Instrument| {
                if inst.is_drum {
                    with_drums.then_some(9)
                } else {
                    channel_of.get(&inst.program).copied()
                }
            };
            let mut settings = SynthesizerSettings::new(sample_rate as i32);
            settings.maximum_polyphony = 128;
            let mut synth = Synthesizer::new(&self.font, &settings)
                .map_err(|e| anyhow::anyhow!("cannot start the synthesiser at {sample_rate} Hz: {e}"))?;
            for (&program, &channel) in &channel_of {
                synth.process_midi_message(channel, 0xC0, program as i32, 0);
            }
            let mut events = Vec::new();
            for inst in &score.instruments {
                let Some(channel) = in_pass(inst) else { continue };
                if inst.is_drum {
                    synth.process_midi_message(9, 0xC0, inst.program as i32, 0);
                }
                for c in &inst.control_changes {
                    let data = (i32::from(c.controller), i32::from(c.value));
                    events.push(Event { sample: to_sample(c.tick), action: Action::Control, channel, data });
                }
                for note in inst
                    .notes
                    .iter()
                    .filter(|n| n.end > n.start && n.pitch < 128 && n.velocity > 0)
                {
                    let (key, velocity) = (note.pitch as i32, note.velocity.min(127) as i32);
                    events.push(Event { sample: to_sample(note.start), action: Action::NoteOn, channel, data: (key, velocity) });
                    events.push(Event { sample: to_sample(note.end), action: Action::NoteOff, channel, data: (key, 0) });
                }
            }
            events.sort();
            let (mut left, mut right) = (vec![0f32; total], vec![0f32; total]);
            let mut cursor = 0usize;
            for event in &events {
                let at = (event.sample as usize).min(total);
                if at > cursor {
                    synth.render(&mut left[cursor..at], &mut right[cursor..at]);
                    cursor = at;
                }
                let (data1, data2) = event.data;
                match event.action {
                    Action::Control => synth.process_midi_message(event.channel, 0xB0, data1, data2),
                    Action::NoteOff => synth.note_off(event.channel, data1),
                    Action::NoteOn => synth.note_on(event.channel, data1, data2),
                }
            }
            synth.render(&mut left[cursor..], &mut right[cursor..]);
            for ((m, l), r) in mix.iter_mut().zip(&left).zip(&right) {
                *m += 0.5 * (l + r);
            }
        }
        let peak = mix.iter().fold(0f32, |p, s| p.max(s.abs()));
        if peak > 0.99 {
            let gain = 0.99 / peak;
            mix.iter_mut().for_each(|s| *s *= gain);
        }
        Ok(mix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::midi::Note;

    #[test]
    fn band_programs_remap_pop909_tracks_only() {
        let inst = |name: &str, program| Instrument {
            name: name.into(),
            program,
            is_drum: false,
            notes: vec![Note {
                start: 0,
                end: 10,
                pitch: 60,
                velocity: 80,
            }],
            control_changes: vec![],
        };
        let s = Score {
            ticks_per_beat: 480,
            instruments: vec![inst("MELODY", 0), inst("bridge", 0), inst("PIANO", 0), inst("Bass", 33)],
            tempo_changes: vec![],
            time_signatures: vec![],
        };
        let programs: Vec<u8> = band_programs(&s).instruments.iter().map(|i| i.program).collect();
        assert_eq!(programs, vec![65, 48, 0, 33]);
    }

    #[test]
    fn missing_soundfont_is_a_clear_error() {
        let err = resolve_soundfont(Some(Path::new("/nonexistent/font.sf2"))).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/font.sf2"));
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("bogus.sf2");
        std::fs::write(&bogus, b"RIFF\x04\x00\x00\x00sfbk").unwrap();
        let err = SoundFontSynth::load(&bogus).err().expect("a bogus SoundFont must fail");
        assert!(format!("{err:#}").contains("bogus.sf2"), "{err:#}");
    }
}
