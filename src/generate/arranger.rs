//! One arrangement end to end, the library behind `stylebridge arrange` (and the demo's
//! style-transfer cases): read the lead sheet and the reference recordings, cut each window's clip
//! of every reference, turn the clips into Z with the trained Q-Former, mix them, project them
//! into soft prompts, sample K candidates through the window loop, decode them onto the lead
//! sheet's timeline, and rank them by their audio-to-MIDI similarity to the reference under the
//! stage-1 model the stage-2 run started from.
use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

use super::{arrange, windows, ArrangeConfig, ClipMode, Passage, ReferenceCodes, WindowRecord, WindowTiming};
use crate::data::encodings::{remi, Octuple};
use crate::data::leadsheet::{Pop909Song, CHORD_PROGRAM, CHORD_TRACK, MELODY_PROGRAM, MELODY_TRACK};
use crate::data::midi::{self, Score};
use crate::eval::scorer::{ScorePair, Scorer};
use crate::models::encodec::Encodec;
use crate::train::checkpoint::{self, Backbone};
use crate::train::stage1::Stage1Model;
use crate::train::stage2::Stage2Model;
use crate::train::trainer::Precision;

/// A reference recording quieter than this everywhere (peak amplitude) counts as silent.
const SILENCE: f32 = 1e-4;

/// Which candidates a job keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Keep {
    /// The candidate most similar to the reference (the stage-1 similarity).
    Best,
    /// Every candidate (ranked when a scorer is available).
    All,
}

/// What to arrange.
#[derive(Debug, Clone)]
pub struct Job {
    /// A lead-sheet MIDI file (melody + chords) or a POP909-style song folder.
    pub lead_sheet: PathBuf,
    /// Reference recordings and their mixing weights (normalised to sum 1).
    pub references: Vec<(PathBuf, f64)>,
    pub mode: ClipMode,
    pub start_bar: usize,
    pub bars: Option<usize>,
    pub num_samples: usize,
    pub keep: Keep,
    /// Sustain pedal at bar lines and chord changes (BOSSA's `add_pedal`).
    pub pedal: bool,
    pub settings: ArrangeConfig,
}

/// One sampled arrangement.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub sample: u64,
    pub score: Score,
    /// REMI tokens of every bar of the passage.
    pub bars: Vec<Vec<u32>>,
    pub windows: Vec<WindowRecord>,
    /// Similarity to the references per window (empty without a scorer).
    pub window_scores: Vec<f64>,
}

impl Candidate {
    /// The mean of the window scores (NaN without a scorer).
    pub fn similarity(&self) -> f64 {
        if self.window_scores.is_empty() { f64::NAN } else { self.window_scores.iter().sum::<f64>() / self.window_scores.len() as f64 }
    }
}

/// A finished job: candidates best first (when ranked), and where the time went.
pub struct Outcome {
    pub passage: Passage,
    pub candidates: Vec<Candidate>,
    pub ranked: bool,
    pub timings: Vec<WindowTiming>,
    /// Per window: the first frame of each reference's clip.
    pub clip_starts: Vec<Vec<i64>>,
}

/// Most candidates per job: they are drawn as one batch, and each holds its own recurrent state
/// (16 MiB at the MuseCoco-1B shape), so a typo such as 100000 would exhaust memory.
pub const MAX_SAMPLES: usize = 256;

/// `--num-samples` within 1 ..= [`MAX_SAMPLES`].
pub fn check_num_samples(n: usize) -> Result<()> {
    ensure!((1..=MAX_SAMPLES).contains(&n), "--num-samples must be 1 ..= {MAX_SAMPLES} (they are drawn as one batch), got {n}");
    Ok(())
}

/// A trained stage-2 model with the EnCodec that reads its references and, when one is known, the
/// stage-1 model that ranks candidates.
pub struct Arranger {
    model: Stage2Model,
    encodec: Encodec,
    scorer: Option<Scorer<Stage1Model>>,
    /// The stage-2 checkpoint folder and what it was built from.
    pub checkpoint: PathBuf,
    pub backbones: Vec<Backbone>,
}

impl Arranger {
    /// `checkpoint`: a stylebridge stage-2 run or checkpoint folder, or a converted BOSSA stage-2
    /// folder. `encodec` and `stage1` override the backbones the run names (a converted BOSSA
    /// checkpoint names none, so it needs `encodec`).
    pub fn open(checkpoint: &Path, encodec: Option<&Path>, stage1: Option<&Path>, device: Device) -> Result<Self> {
        let (model, dir) = Stage2Model::from_run(checkpoint, device)?;
        let named = |role: &str| model.backbones.iter().find(|b| b.role == role).map(|b| b.path.clone());
        let encodec_dir = encodec.map(Path::to_path_buf).or_else(|| named("encodec")).with_context(|| {
            format!("{} names no EnCodec (the one that made its training codes); pass --encodec DIR", dir.display())
        })?;
        let encodec = Encodec::load(&encodec_dir, device).with_context(|| format!("cannot load the EnCodec {}", encodec_dir.display()))?;
        model.audio.check_encodec(&encodec, &format!("EnCodec {} for the stage-2 model {}", encodec_dir.display(), dir.display()))?;
        let scorer = match stage1.map(Path::to_path_buf).or_else(|| named("stage1")) {
            Some(path) => {
                let (stage1, run) = Stage1Model::from_run(&path, device, Precision::Fp32).with_context(|| format!("the stage-1 scorer {}", path.display()))?;
                let data: crate::data::loader::DataConfig = checkpoint::config_section(&run, "data")?;
                Some(Scorer::new(stage1, data.max_notes))
            }
            None => None,
        };
        let mut backbones = model.backbones.clone();
        backbones.insert(0, Backbone::hash("stage2", &dir)?);
        Ok(Self { model, encodec, scorer, checkpoint: dir, backbones })
    }

    pub fn can_rank(&self) -> bool {
        self.scorer.is_some()
    }

    /// Run one job.
    pub fn arrange(&mut self, job: &Job) -> Result<Outcome> {
        check_num_samples(job.num_samples)?;
        ensure!(!job.references.is_empty(), "no reference audio");
        if job.keep == Keep::Best && job.num_samples > 1 && self.scorer.is_none() {
            bail!("--keep best ranks candidates with the stage-1 model, and {} names none (a \"w/o PT\" run?); pass --stage1 RUN or use --keep all", self.checkpoint.display());
        }
        let lead_sheet = read_lead_sheet(&job.lead_sheet)?;
        let passage = Passage::new(&lead_sheet, job.start_bar, job.bars).with_context(|| format!("lead sheet {}", job.lead_sheet.display()))?;
        let references: Vec<ReferenceCodes> = job.references.iter().map(|(path, _)| self.reference(path)).collect::<Result<_>>()?;
        let weights = Tensor::from_slice(&job.references.iter().map(|(_, w)| *w as f32).collect::<Vec<_>>()).view([-1, 1, 1]).to_device(self.model.device());

        // Every window's clips and soft prompt, before sampling (the model is then only read).
        let mut clips = Vec::new();
        let mut soft_prompts = Vec::new();
        for window in windows(passage.len()) {
            let (start, end) = passage.seconds(window.bars.clone());
            let window_clips = references.iter().map(|r| r.clip(job.mode, start, end)).collect::<Result<Vec<_>>>()
                .with_context(|| format!("window {} (bars {:?}, {start:.2}-{end:.2} s)", window.index, window.bars))?;
            let (n_q, frames) = (window_clips[0].n_q as i64, window_clips[0].mask.len() as i64);
            let codes = Tensor::from_slice(&window_clips.iter().flat_map(|c| c.codes.iter().copied()).collect::<Vec<i64>>()).view([-1, n_q, frames]);
            let device = self.model.device();
            let mask = crate::train::batch::mask(&window_clips.iter().flat_map(|c| c.mask.iter().copied()).collect::<Vec<u8>>(), window_clips.len() as i64, frames, device);
            let z = tch::no_grad(|| self.model.query_output(&codes.to_device(device), &mask, false))?;
            // Style mixing: a weighted mean of the references' Z (the weights sum to 1).
            let mixed = (z * &weights).sum_dim_intlist([0i64].as_slice(), true, Kind::Float);
            soft_prompts.push(tch::no_grad(|| self.model.net.project(&mixed)));
            clips.push(window_clips);
        }
        let samples = 0..job.num_samples as u64;
        let arrangement = arrange(&self.model.net.musecoco, &passage, samples, &job.settings, |w| Ok(soft_prompts[w.index].shallow_clone()))?;
        let mut candidates = Vec::with_capacity(arrangement.samples.len());
        for sample in arrangement.samples {
            let mut score = passage.to_score(&sample.bars).with_context(|| format!("sample {}: the tokens do not decode", sample.sample))?;
            if job.pedal {
                if let Some(piano) = score.instruments.first_mut() {
                    piano.control_changes = passage.pedal();
                }
            }
            candidates.push(Candidate { sample: sample.sample, score, bars: sample.bars, windows: sample.windows, window_scores: Vec::new() });
        }
        let ranked = self.scorer.is_some();
        if ranked {
            self.rank(&passage, &clips, &job.references, &mut candidates)?;
        }
        let clip_starts = clips.iter().map(|cs| cs.iter().map(|c| c.start_frame).collect()).collect();
        Ok(Outcome { passage, candidates, ranked, timings: arrangement.timings, clip_starts })
    }

    /// The reference's codes, refused when it is silent or not audio.
    fn reference(&self, path: &Path) -> Result<ReferenceCodes> {
        let rate = self.encodec.config().sampling_rate;
        let samples = crate::data::audio::load_mono(path, rate).with_context(|| format!("reference {}", path.display()))?;
        let peak = samples.iter().fold(0f32, |m, s| m.max(s.abs()));
        ensure!(peak >= SILENCE, "reference {}: the audio is silent (peak amplitude {peak:.1e}); a style cannot be read from it", path.display());
        let codes = self.encodec.encode(&Tensor::from_slice(&samples).view([1, 1, -1])).with_context(|| format!("cannot encode {}", path.display()))?;
        let c = self.encodec.config();
        let codes: Vec<i64> = Vec::try_from(codes.to_device(Device::Cpu).reshape([-1]))?;
        let pad = u16::try_from(c.codebook_size).context("codebooks larger than 65535 entries")?;
        ReferenceCodes::new(codes.into_iter().map(|c| c as u16).collect(), c.num_quantizers_used() as usize, pad, c.frame_rate() as f64)
    }

    /// Score every candidate's windows against the references' clips (mixed by weight), then
    /// sort best first.
    fn rank(&mut self, passage: &Passage, clips: &[Vec<super::AudioClip>], references: &[(PathBuf, f64)], candidates: &mut [Candidate]) -> Result<()> {
        let Some(scorer) = self.scorer.as_mut() else { return Ok(()) };
        let c = self.encodec.config();
        let (n_q, pad) = (c.num_quantizers_used() as usize, c.codebook_size as u16);
        let mut pairs = Vec::new();
        for candidate in candidates.iter() {
            for (window, window_clips) in windows(passage.len()).iter().zip(clips) {
                let arrangement = window_notes(&candidate.bars[window.bars.clone()])?;
                for clip in window_clips {
                    pairs.push(ScorePair { codes: clip.codes.iter().map(|&c| c as u16).collect(), lead_sheet: passage.lead_notes(window.bars.clone()), arrangement: arrangement.clone() });
                }
            }
        }
        // Each clip is scored against every candidate: through MusicGen once, for this job only.
        scorer.model_mut().cache_audio(true);
        let scores = scorer.scores(&pairs, n_q, pad);
        scorer.model_mut().cache_audio(false);
        let scores = scores?;
        let per_window = references.len();
        let windows_count = clips.len();
        for (k, candidate) in candidates.iter_mut().enumerate() {
            candidate.window_scores = (0..windows_count)
                .map(|w| {
                    let at = (k * windows_count + w) * per_window;
                    references.iter().enumerate().map(|(r, (_, weight))| weight * scores[at + r]).sum()
                })
                .collect();
        }
        candidates.sort_by(|a, b| b.similarity().total_cmp(&a.similarity()).then(a.sample.cmp(&b.sample)));
        Ok(())
    }
}

/// The notes of a window's bars (bars counted from its first).
fn window_notes(bars: &[Vec<u32>]) -> Result<Vec<Octuple>> {
    remi::decode(&bars.concat()).map_err(|e| anyhow::anyhow!("a sampled window does not decode: {e}"))
}

/// A lead sheet as stage 2 was trained on it: MELODY on program 0 and CHORDS on program 4. From a
/// POP909-style song folder (its MELODY track and chord_midi.txt), or a MIDI file: tracks named
/// MELODY and CHORDS (as `stylebridge leadsheet` writes them), else two tracks, melody first and
/// chords second (BOSSA's `read_leadsheet` layout).
pub fn read_lead_sheet(path: &Path) -> Result<Score> {
    let mut score = if path.is_dir() {
        Pop909Song::load(path)?.lead_sheet.to_score()
    } else {
        midi::read(path)?
    };
    let named = |name: &str| score.instruments.iter().position(|i| i.name.trim().eq_ignore_ascii_case(name) && !i.notes.is_empty());
    let (melody, chords) = match (named(MELODY_TRACK), named(CHORD_TRACK)) {
        (Some(m), Some(c)) => (m, c),
        _ => {
            let with_notes: Vec<usize> = (0..score.instruments.len()).filter(|&i| !score.instruments[i].notes.is_empty() && !score.instruments[i].is_drum).collect();
            match with_notes.as_slice() {
                [m, c] => (*m, *c),
                _ => bail!(
                    "{}: not a lead sheet: it needs a melody and a chord track (named {MELODY_TRACK} and {CHORD_TRACK}, or exactly two tracks with notes, melody first), found {}",
                    path.display(),
                    describe_tracks(&score)
                ),
            }
        }
    };
    let mut parts = Vec::new();
    for (index, name, program) in [(melody, MELODY_TRACK, MELODY_PROGRAM), (chords, CHORD_TRACK, CHORD_PROGRAM)] {
        let mut part = score.instruments[index].clone();
        (part.name, part.program, part.is_drum) = (name.to_string(), program, false);
        parts.push(part);
    }
    score.instruments = parts;
    Ok(score)
}

fn describe_tracks(score: &Score) -> String {
    if score.instruments.iter().all(|i| i.notes.is_empty()) {
        return "no notes at all".into();
    }
    let tracks: Vec<String> = score.instruments.iter().filter(|i| !i.notes.is_empty()).map(|i| format!("'{}' ({} notes)", i.name, i.notes.len())).collect();
    format!("{} track(s) with notes: {}", tracks.len(), tracks.join(", "))
}
