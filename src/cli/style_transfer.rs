//! `stylebridge eval style-transfer`: the demo's style-transfer table on the embedded corpus.
//!
//! Held-out test lead sheets are arranged, each with a test-split recording of every style its
//! meter allows (taken from another lead sheet, `fixed` mode from second 0; with `--cover` the
//! lead sheet's own recording in that style, `follow` mode), by the stage-2 run
//! and by any `--compare` runs (the "w/o PT" ablation); an independent judge fitted on the
//! ground-truth arrangements of the training split names each arrangement's style
//! (`eval::style_transfer`). MIDI and WAV files land under `OUT/arrange/<model>/`, the table in
//! `OUT/style_transfer.{md,json}`.
use anyhow::{ensure, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::data::corpus::{self, Item, Style};
use crate::data::leadsheet::{read_chord_file, LeadSheet, MELODY_TRACK};
use crate::data::midi::{self, Note, Score};
use crate::data::render::{resolve_soundfont, SoundFontSynth};
use crate::data::shards;
use crate::data::split::Split;
use crate::eval::style_transfer::{features, melody_kept, Case, Report, StyleJudge};
use crate::generate::arranger::{check_num_samples, Arranger, Job, Keep};
use crate::generate::ClipMode;
use crate::progress::Progress;

use super::arrange::SamplingArgs;

#[derive(clap::Args)]
pub struct Args {
    /// The stage-2 run to judge.
    #[arg(long)]
    checkpoint: PathBuf,
    /// More runs on the same cases, as NAME=RUN (e.g. `w/o PT=runs/demo/stage2_wo_pt`).
    #[arg(long, value_name = "NAME=RUN")]
    compare: Vec<String>,
    /// The embedded corpus (`stylebridge corpus synth`): its MIDI, audio and manifest.
    #[arg(long)]
    corpus: PathBuf,
    /// The shards prepared from it: their manifest says which songs are train and test.
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Test lead sheets to arrange (each with every style its meter allows).
    #[arg(long, default_value_t = 12)]
    lead_sheets: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Candidates per case, the stage-1 scorer keeping the one most similar to the reference (the
    /// paper keeps the best of 3, chosen by ear).
    #[arg(long, default_value_t = 1)]
    num_samples: usize,
    /// Covers instead of style transfer: each case's reference is the lead sheet's own recording
    /// in that style, read in `follow` mode (the audio is the song itself, as for the paper's
    /// covers), not another lead sheet's from second 0.
    #[arg(long)]
    cover: bool,
    /// Also render every arrangement to WAV.
    #[arg(long)]
    render: bool,
    /// The EnCodec that reads the references [default: the one each run's training codes came from].
    #[arg(long)]
    encodec: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
}

pub fn run(args: Args) -> Result<()> {
    ensure!(args.lead_sheets >= 1, "--lead-sheets must be at least 1");
    check_num_samples(args.num_samples)?;
    let items = corpus::Manifest::read(&args.corpus)?.items;
    let splits = shards::Manifest::read(&args.data)?.songs;
    let in_split = |split: Split| -> Vec<&Item> {
        let songs = splits.get(&split).cloned().unwrap_or_default();
        items.iter().filter(|i| songs.contains(&i.name)).collect()
    };
    let (train, test) = (in_split(Split::Train), in_split(Split::Test));
    ensure!(!test.is_empty(), "{} has no test songs of the corpus {}", args.data.display(), args.corpus.display());
    let truth = |item: &Item| -> Result<(Vec<f64>, Style)> {
        let (arrangement, melody) = ground_truth(&args.corpus, item)?;
        Ok((features(&arrangement, &melody)?, item.style))
    };
    let judge = StyleJudge::fit(&train.iter().map(|i| truth(i)).collect::<Result<Vec<_>>>()?)?;
    let mut right = 0;
    for item in &test {
        let (f, style) = truth(item)?;
        right += usize::from(judge.judge(&f, beats(item)) == style);
    }
    let judge_accuracy = 100.0 * right as f64 / test.len() as f64;

    let cases = plan(&test, args.lead_sheets, args.cover);
    let leadsheets = args.out.join("leadsheets");
    std::fs::create_dir_all(&leadsheets).with_context(|| format!("cannot create {}", leadsheets.display()))?;
    let mut models = vec![("stage 2".to_string(), args.checkpoint.clone())];
    for spec in &args.compare {
        let (name, run) = spec.split_once('=').with_context(|| format!("--compare {spec}: expected NAME=RUN"))?;
        models.push((name.to_string(), PathBuf::from(run)));
    }
    let synth = if args.render { Some(SoundFontSynth::load(&resolve_soundfont(None)?)?) } else { None };
    let device = crate::device::parse(&args.device)?;
    let settings = args.sampling.settings()?;
    let progress = Progress::new("style transfer", (cases.len() * models.len()) as u64);
    // Each lead sheet once: written where the jobs read it, with its melody for the figures.
    let mut sheets = std::collections::BTreeMap::new();
    for (lead, _) in &cases {
        if !sheets.contains_key(&lead.lead_sheet) {
            let sheet = lead_sheet(&args.corpus, lead)?;
            let path = leadsheets.join(format!("{}.mid", lead.lead_sheet));
            midi::write(&sheet, &path)?;
            let melody = melody_of(&sheet);
            sheets.insert(lead.lead_sheet.clone(), (path, sheet, melody));
        }
    }
    let mut judged = Vec::new();
    for (model, run) in &models {
        let mut arranger = Arranger::open(run, args.encodec.as_deref(), None, device)?;
        let folder = args.out.join("arrange").join(model.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
        std::fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
        for (lead, reference) in &cases {
            let (sheet_path, sheet, melody) = &sheets[&lead.lead_sheet];
            let job = Job {
                lead_sheet: sheet_path.clone(),
                references: vec![(args.corpus.join(&reference.audio), 1.0)],
                mode: if args.cover { ClipMode::Follow { offset_seconds: 0.0 } } else { ClipMode::Fixed { offset_seconds: 0.0 } },
                start_bar: 0,
                bars: None,
                num_samples: args.num_samples,
                keep: Keep::Best,
                pedal: false,
                settings: settings.clone(),
            };
            let outcome = arranger.arrange(&job);
            let (judged_style, kept) = match &outcome {
                Ok(o) => {
                    let score = &o.candidates[0].score;
                    let out = folder.join(format!("{}__{}.mid", lead.lead_sheet, reference.style.name()));
                    midi::write(score, &out)?;
                    if let Some(synth) = &synth {
                        crate::data::audio::write_wav(&out.with_extension("wav"), &synth.render(score, 32_000)?, 32_000)?;
                    }
                    (Some(judge.judge(&features(score, melody)?, beats(lead))), melody_kept(score, melody, sheet.ticks_per_beat).0)
                }
                Err(e) => {
                    eprintln!("{model}: {} with a {} reference did not arrange: {e:#}", lead.lead_sheet, reference.style.name());
                    (None, 0)
                }
            };
            judged.push(Case {
                model: model.clone(),
                lead_sheet: lead.lead_sheet.clone(),
                reference: reference.name.clone(),
                reference_style: reference.style,
                beats: beats(lead),
                judged: judged_style,
                melody_kept: kept,
                melody_notes: melody.len(),
            });
            progress.inc(1);
        }
    }
    progress.finish();
    let report = Report::new(args.cover, judge_accuracy, test.len(), judged);
    let markdown = report.to_markdown();
    crate::atomic::write(&args.out.join("style_transfer.md"), markdown.as_bytes())?;
    crate::atomic::write(&args.out.join("style_transfer.json"), serde_json::to_string_pretty(&report)?.as_bytes())?;
    super::emit(&format!("{markdown}\nwritten: {}\n", args.out.join("style_transfer.md").display()))
}

/// Quarter notes per bar of an item's meter ("4/4", "3/4").
fn beats(item: &Item) -> u32 {
    item.meter.split('/').next().and_then(|n| n.parse().ok()).unwrap_or(4)
}

/// (lead sheet's item, reference item) for the first `count` test lead sheets: every style the
/// lead sheet's meter allows, the reference taken from the next other lead sheet that has it
/// (`cover`: from the lead sheet itself).
fn plan<'a>(test: &[&'a Item], count: usize, cover: bool) -> Vec<(&'a Item, &'a Item)> {
    let mut by_sheet: BTreeMap<&str, Vec<&Item>> = BTreeMap::new();
    for item in test {
        by_sheet.entry(item.lead_sheet.as_str()).or_default().push(item);
    }
    let sheets: Vec<&str> = by_sheet.keys().copied().collect();
    // The lead sheets searched for a reference start with the case's own (cover) or the next one.
    let first = if cover { 0 } else { 1 };
    let mut cases = Vec::new();
    for (k, sheet) in sheets.iter().take(count).enumerate() {
        let lead = by_sheet[sheet][0];
        for style in Style::ALL.into_iter().filter(|s| s.fits(beats(lead))) {
            let reference = (first..sheets.len()).map(|d| sheets[(k + d) % sheets.len()]).find_map(|other| by_sheet[other].iter().find(|i| i.style == style));
            if let Some(reference) = reference {
                cases.push((lead, *reference));
            }
        }
    }
    cases
}

/// The lead sheet as `prepare` builds it (melody track + chord file).
fn lead_sheet(corpus_dir: &Path, item: &Item) -> Result<Score> {
    let score = midi::read(&corpus_dir.join(&item.midi))?;
    let chords = read_chord_file(&corpus_dir.join(&item.chord_file))?;
    Ok(LeadSheet::from_score(&score, MELODY_TRACK, &chords)?.to_score())
}

fn melody_of(score: &Score) -> Vec<Note> {
    score.instruments.iter().filter(|i| i.name == MELODY_TRACK).flat_map(|i| i.notes.iter().copied()).collect()
}

/// An item's arrangement as the corpus wrote it (tune and accompaniment, the stage-2 target) and
/// its melody.
fn ground_truth(corpus_dir: &Path, item: &Item) -> Result<(Score, Vec<Note>)> {
    let mut score = midi::read(&corpus_dir.join(&item.midi))?;
    score.instruments.retain(|i| i.name == MELODY_TRACK || i.name == corpus::PIANO_TRACK);
    let melody = melody_of(&score);
    Ok((score, melody))
}
