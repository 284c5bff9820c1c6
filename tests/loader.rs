//! The loader on shards written to disk: same seed -> same batches, ranks get disjoint rows,
//! resuming at position k gives the batches from k on, and window shifts stay within the margin.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use stylebridge::data::encodings::Octuple;
use stylebridge::data::loader::{Batch, Loader, LoaderOptions, PairSet, Stage, Symbolic};
use stylebridge::data::pairing::{octuple_ids, remi_ids};
use stylebridge::data::shards::{self, AudioLayout, Manifest, PairRow, SplitCount};
use stylebridge::data::split::Split;

const N_Q: usize = 4;
const PAD: u16 = 2048;

fn layout() -> AudioLayout {
    AudioLayout { sample_rate: 32000, frame_rate: 50.0, n_q: N_Q, pad_code: PAD, window_frames: 40, margin_frames: 10, encodec: "synthetic".into() }
}

/// Row `i`: code of (q, stored frame j) = (i * 61 + q * 7 + j) % 2048, so any window identifies
/// its row and offset; a few frames at the front are padding (the window starts before the audio).
fn row(i: usize) -> PairRow {
    let stored = layout().stored_frames();
    let codes = (0..N_Q)
        .flat_map(|q| (0..stored).map(move |j| if j < 3 { PAD } else { ((i * 61 + q * 7 + j) % 2048) as u16 }))
        .collect();
    let note = |bar: u32, pitch: u32| Octuple { bar, position: 0, program: 0, pitch, duration: 12, velocity: 20, time_signature: 9, tempo: 30 };
    let lead = [note(0, 72), note(1, 74)];
    let piano: Vec<Octuple> = (0..(i % 5 + 1) as u32).map(|k| note(k % 4, 48 + k)).collect();
    PairRow {
        lead_remi: remi_ids(&lead),
        piano_remi: remi_ids(&piano),
        ..PairRow::synthetic(&format!("song{:03}", i / 4), Split::Train, (i % 4) as u32, codes, octuple_ids(&lead), octuple_ids(&piano))
    }
}

/// 103 train rows in shards of ~10 rows, plus a manifest.
fn write_dataset(dir: &Path) -> Vec<PairRow> {
    let rows: Vec<PairRow> = (0..103).map(row).collect();
    let infos = shards::write_split(dir, Split::Train, &rows, 10 * rows[0].approx_bytes()).unwrap();
    assert!(infos.len() > 5);
    let songs: Vec<String> = rows.iter().map(|r| r.song_id.clone()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let manifest = Manifest {
        schema_version: shards::SCHEMA_VERSION,
        audio: layout(),
        counts: BTreeMap::from([(Split::Train, SplitCount { songs: songs.len(), rows: rows.len() })]),
        songs: BTreeMap::from([(Split::Train, songs)]),
        shards: infos,
        skipped: vec![],
        warnings: vec![],
        config: serde_json::json!({}),
    };
    manifest.write(dir).unwrap();
    rows
}

fn open() -> (tempfile::TempDir, Arc<PairSet>, Vec<PairRow>) {
    let dir = tempfile::tempdir().unwrap();
    let rows = write_dataset(dir.path());
    let set = Arc::new(PairSet::open(dir.path(), Split::Train, 3).unwrap());
    (dir, set, rows)
}

fn options(seed: u64) -> LoaderOptions {
    LoaderOptions { workers: 3, prefetch: 2, ..LoaderOptions::training(Stage::Stage1, 8, seed) }
}

fn epoch(loader: &Loader, epoch: u64, start: usize) -> Vec<Batch> {
    loader.batches(epoch, start).collect()
}

fn row_order(batches: Vec<Batch>) -> Vec<Vec<usize>> {
    batches.into_iter().map(|b| b.rows).collect()
}

#[test]
fn shards_load_back_in_order() {
    let (_dir, set, rows) = open();
    assert_eq!(set.rows, rows);
}

#[test]
fn same_seed_same_batches_different_seed_different() {
    let (_dir, set, _) = open();
    let a = Loader::new(Arc::clone(&set), options(5)).unwrap();
    let b = Loader::new(Arc::clone(&set), LoaderOptions { workers: 1, ..options(5) }).unwrap();
    let c = Loader::new(Arc::clone(&set), options(6)).unwrap();
    assert_eq!(a.batches_per_epoch(), 103 / 8);
    for e in 0..2 {
        let batches = epoch(&a, e, 0);
        assert_eq!(batches.len(), 12);
        assert_eq!(batches, epoch(&b, e, 0), "epoch {e}: batches depend on the worker count");
        assert_ne!(row_order(batches), row_order(epoch(&c, e, 0)));
    }
    assert_ne!(row_order(epoch(&a, 0, 0)), row_order(epoch(&a, 1, 0)), "epochs must reshuffle");
}

#[test]
fn ranks_get_disjoint_rows_and_the_same_number_of_batches() {
    let (_dir, set, _) = open();
    let world = 4;
    let mut seen = std::collections::BTreeSet::new();
    let mut counts = Vec::new();
    for rank in 0..world {
        let loader = Loader::new(Arc::clone(&set), LoaderOptions { rank, world_size: world, ..options(5) }).unwrap();
        let batches = epoch(&loader, 3, 0);
        counts.push(batches.len());
        for b in &batches {
            for &r in &b.rows {
                assert!(seen.insert(r), "row {r} reached two ranks");
            }
        }
    }
    assert_eq!(counts, [3, 3, 3, 3]); // 103 rows / 4 ranks = 25 each -> 3 full batches of 8
    assert_eq!(seen.len(), 4 * 3 * 8);
}

#[test]
fn resume_at_position_k_gives_the_batches_from_k_on() {
    let (_dir, set, _) = open();
    let loader = Loader::new(Arc::clone(&set), options(9)).unwrap();
    let full = epoch(&loader, 2, 0);
    for k in [0, 1, 5, 11, 12] {
        // A fresh loader, as after a restart.
        let resumed = Loader::new(Arc::clone(&set), options(9)).unwrap();
        assert_eq!(epoch(&resumed, 2, k), full[k..], "resume at {k}");
    }
}

#[test]
fn shifted_windows_stay_within_the_margin_and_masks_mark_padding() {
    let (_dir, set, rows) = open();
    let loader = Loader::new(Arc::clone(&set), options(1)).unwrap();
    let (w, margin) = (layout().window_frames, layout().margin_frames as i32);
    let mut shifts = std::collections::BTreeSet::new();
    for batch in epoch(&loader, 0, 0) {
        assert_eq!((batch.n_q, batch.frames), (N_Q, w));
        for (b, (&r, draw)) in batch.rows.iter().zip(&batch.draws).enumerate() {
            assert!(draw.shift.abs() <= margin, "shift {} beyond the margin", draw.shift);
            shifts.insert(draw.shift);
            let offset = (margin + draw.shift) as usize;
            for q in 0..N_Q {
                let got = &batch.codes[(b * N_Q + q) * w..(b * N_Q + q + 1) * w];
                let want = &rows[r].codes[q * layout().stored_frames() + offset..][..w];
                assert!(got.iter().zip(want).all(|(&g, &x)| g == i64::from(x)));
            }
            let mask = &batch.audio_mask[b * w..(b + 1) * w];
            let pads = 3usize.saturating_sub(offset);
            assert!(mask[..pads].iter().all(|&m| m == 0) && mask[pads..].iter().all(|&m| m == 1));
        }
        let Symbolic::Stage1 { notes, is_real, .. } = &batch.symbolic else { panic!("stage 1 batch expected") };
        assert_eq!(is_real.len(), batch.len() * notes);
    }
    assert!(shifts.len() > 10, "shifts barely vary: {shifts:?}");
}

#[test]
fn corrupt_shard_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path());
    let manifest = Manifest::read(dir.path()).unwrap();
    let victim = dir.path().join(&manifest.shards[2].file);
    std::fs::write(&victim, b"not parquet").unwrap();
    let err = format!("{:#}", PairSet::open(dir.path(), Split::Train, 2).err().expect("a corrupt shard must be refused"));
    assert!(err.contains(&manifest.shards[2].file), "{err}");
}

/// A 0-row manifest (what a prepare that prepared nothing used to leave) is refused where shards
/// are opened, and so is a folder of the previous schema.
#[test]
fn empty_and_old_manifests_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(dir.path());
    let manifest = Manifest::read(dir.path()).unwrap();
    let empty = Manifest { shards: vec![], counts: BTreeMap::new(), songs: BTreeMap::new(), ..manifest.clone() };
    empty.write(dir.path()).unwrap();
    for split in [Split::Train, Split::Valid] {
        let err = format!("{:#}", PairSet::open(dir.path(), split, 2).err().expect("an empty manifest must be refused"));
        assert!(err.contains("lists no rows") && err.contains(&dir.path().display().to_string()), "{err}");
    }
    Manifest { schema_version: 1, ..manifest }.write(dir.path()).unwrap();
    let err = format!("{:#}", PairSet::open(dir.path(), Split::Train, 2).err().expect("a v1 manifest must be refused"));
    assert!(err.contains("schema version 1") && err.contains("target_tracks") && err.contains("stylebridge prepare"), "{err}");
}
