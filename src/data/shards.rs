//! Prepared training pairs on disk: Parquet shards plus a JSON manifest.
//!
//! One row per (audio window, MIDI segment) pair ([`PairRow`]). Shards hold the rows of one split
//! each, are bounded in size, and are written atomically (temporary file + rename), so a reader
//! or a killed `prepare` never sees half a shard. The manifest, written last, is the table of
//! contents: schema version, audio layout, counts per split, the songs of each split, every
//! shard with its row count and sha256, the songs that were skipped and why, what the prepared
//! songs lost (warnings, e.g. a truncated audio file), and the config. A manifest without rows
//! is refused: no prepared folder is empty.
use anyhow::{bail, ensure, Context, Result};
use arrow_array::builder::{ListBuilder, UInt16Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, UInt16Type, UInt32Type};
use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::data::split::Split;

/// Bump when the row layout or its meaning changes (and say why in [`SCHEMA_CHANGES`]); readers
/// refuse other versions.
pub const SCHEMA_VERSION: u32 = 2;
/// What each version changed, so that refusing an older folder can say why it no longer fits.
const SCHEMA_CHANGES: [(u32, &str); 1] = [(
    2,
    "the target (piano_octuple, piano_remi) is the whole piano arrangement, the tracks of \
     `prepare.target_tracks` merged and played on piano, where version 1 held the PIANO track alone",
)];
pub const MANIFEST_NAME: &str = "manifest.json";
const ROW_GROUP_ROWS: usize = 256;

/// One training pair. Token lists hold the segment's notes only (no `<s>`/`</s>` boundary
/// notes); bars count from the segment's first note (lead sheet or target), as BOSSA's collate
/// does, and notes sort by (bar, position, program, pitch high to low). The `piano_*` lists are
/// the target: the whole piano arrangement (`prepare.target_tracks` merged, all program 0).
#[derive(Debug, Clone, PartialEq)]
pub struct PairRow {
    pub song_id: String,
    pub split: Split,
    pub segment_index: u32,
    /// Bars `first_bar..end_bar` of the song's bar grid.
    pub first_bar: u32,
    pub end_bar: u32,
    pub start_seconds: f64,
    pub end_seconds: f64,
    /// Time signature of the segment's first bar.
    pub meter_numerator: u32,
    pub meter_denominator: u32,
    /// Tempo at the segment's start.
    pub tempo_bpm: f64,
    /// Song frame of `codes` column 0 (negative when the window starts before the audio).
    pub codes_start_frame: i64,
    /// EnCodec codes `[n_q, stored_frames]` row-major; frames outside the track hold the pad code.
    pub codes: Vec<u16>,
    /// OctupleMIDI ids, 8 per note.
    pub lead_octuple: Vec<u16>,
    pub piano_octuple: Vec<u16>,
    /// MuseCoco REMI ids (`note2token`, performance tokens kept).
    pub lead_remi: Vec<u16>,
    pub piano_remi: Vec<u16>,
    pub audio_path: String,
    pub midi_path: String,
    pub lead_sheet_path: String,
}

impl PairRow {
    /// Segment `segment` of a synthetic 4/4, 120 bpm song (bars `2s..2s+4`, seconds `4s..4s+8`,
    /// codes from song frame 0, sources `<song>.wav/.mid/.chords.txt`, no REMI ids): the one
    /// shape that tests and benchmarks build their rows on.
    pub fn synthetic(song_id: &str, split: Split, segment: u32, codes: Vec<u16>, lead_octuple: Vec<u16>, piano_octuple: Vec<u16>) -> Self {
        PairRow {
            song_id: song_id.into(),
            split,
            segment_index: segment,
            first_bar: 2 * segment,
            end_bar: 2 * segment + 4,
            start_seconds: 4.0 * f64::from(segment),
            end_seconds: 4.0 * f64::from(segment) + 8.0,
            meter_numerator: 4,
            meter_denominator: 4,
            tempo_bpm: 120.0,
            codes_start_frame: 0,
            codes,
            lead_octuple,
            piano_octuple,
            lead_remi: vec![],
            piano_remi: vec![],
            audio_path: format!("{song_id}.wav"),
            midi_path: format!("{song_id}.mid"),
            lead_sheet_path: format!("{song_id}.chords.txt"),
        }
    }

    /// Approximate in-memory size, used to bound shards.
    pub fn approx_bytes(&self) -> usize {
        let tokens = self.codes.len() + self.lead_octuple.len() + self.piano_octuple.len() + self.lead_remi.len() + self.piano_remi.len();
        2 * tokens + self.song_id.len() + self.audio_path.len() + self.midi_path.len() + self.lead_sheet_path.len() + 64
    }
}

/// The columns, in order.
pub fn schema() -> SchemaRef {
    let list = |name: &str| Field::new(name, DataType::List(Arc::new(Field::new("item", DataType::UInt16, false))), false);
    Arc::new(Schema::new(vec![
        Field::new("song_id", DataType::Utf8, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("segment_index", DataType::UInt32, false),
        Field::new("first_bar", DataType::UInt32, false),
        Field::new("end_bar", DataType::UInt32, false),
        Field::new("start_seconds", DataType::Float64, false),
        Field::new("end_seconds", DataType::Float64, false),
        Field::new("meter_numerator", DataType::UInt32, false),
        Field::new("meter_denominator", DataType::UInt32, false),
        Field::new("tempo_bpm", DataType::Float64, false),
        Field::new("codes_start_frame", DataType::Int64, false),
        list("codes"),
        list("lead_octuple"),
        list("piano_octuple"),
        list("lead_remi"),
        list("piano_remi"),
        Field::new("audio_path", DataType::Utf8, false),
        Field::new("midi_path", DataType::Utf8, false),
        Field::new("lead_sheet_path", DataType::Utf8, false),
    ]))
}

fn to_batch(rows: &[PairRow]) -> Result<RecordBatch> {
    let strings = |f: fn(&PairRow) -> &str| Arc::new(StringArray::from_iter_values(rows.iter().map(f))) as ArrayRef;
    let u32s = |f: fn(&PairRow) -> u32| Arc::new(UInt32Array::from_iter_values(rows.iter().map(f))) as ArrayRef;
    let f64s = |f: fn(&PairRow) -> f64| Arc::new(Float64Array::from_iter_values(rows.iter().map(f))) as ArrayRef;
    let lists = |f: fn(&PairRow) -> &[u16]| {
        let item = Arc::new(Field::new("item", DataType::UInt16, false));
        let mut builder = ListBuilder::new(UInt16Builder::new()).with_field(item);
        for row in rows {
            builder.values().append_slice(f(row));
            builder.append(true);
        }
        Arc::new(builder.finish()) as ArrayRef
    };
    let columns = vec![
        strings(|r| &r.song_id),
        strings(|r| r.split.name()),
        u32s(|r| r.segment_index),
        u32s(|r| r.first_bar),
        u32s(|r| r.end_bar),
        f64s(|r| r.start_seconds),
        f64s(|r| r.end_seconds),
        u32s(|r| r.meter_numerator),
        u32s(|r| r.meter_denominator),
        f64s(|r| r.tempo_bpm),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.codes_start_frame))) as ArrayRef,
        lists(|r| &r.codes),
        lists(|r| &r.lead_octuple),
        lists(|r| &r.piano_octuple),
        lists(|r| &r.lead_remi),
        lists(|r| &r.piano_remi),
        strings(|r| &r.audio_path),
        strings(|r| &r.midi_path),
        strings(|r| &r.lead_sheet_path),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}

/// Rows as the bytes of a Parquet file (snappy, fixed `created_by`, so equal rows give equal bytes).
pub fn encode_rows(rows: &[PairRow]) -> Result<Vec<u8>> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!("stylebridge pairs v{SCHEMA_VERSION}"))
        .build();
    let mut writer = ArrowWriter::try_new(Vec::new(), schema(), Some(props))?;
    for chunk in rows.chunks(ROW_GROUP_ROWS) {
        writer.write(&to_batch(chunk)?)?;
    }
    Ok(writer.into_inner()?)
}

/// Rows of a Parquet file's bytes; `name` is used in errors.
pub fn decode_rows(bytes: Vec<u8>, name: &str) -> Result<Vec<PairRow>> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
        .with_context(|| format!("{name} is not a readable Parquet file"))?;
    let found = reader.schema().fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>();
    let expected = schema().fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>();
    ensure!(found == expected, "{name} has columns {found:?}, expected {expected:?} (schema v{SCHEMA_VERSION})");
    let mut rows = Vec::new();
    for batch in reader.build()? {
        let batch = batch.with_context(|| format!("cannot decode a row group of {name}"))?;
        rows.extend(from_batch(&batch).with_context(|| format!("in {name}"))?);
    }
    Ok(rows)
}

fn from_batch(batch: &RecordBatch) -> Result<Vec<PairRow>> {
    let column = |i: usize| batch.column(i);
    let string = |i: usize| column(i).as_string::<i32>();
    let u32s = |i: usize| column(i).as_primitive::<UInt32Type>();
    let f64s = |i: usize| column(i).as_primitive::<Float64Type>();
    let list = |i: usize, row: usize| -> Vec<u16> {
        let values = column(i).as_list::<i32>().value(row);
        values.as_primitive::<UInt16Type>().values().to_vec()
    };
    let starts = column(10).as_primitive::<Int64Type>();
    (0..batch.num_rows())
        .map(|r| {
            let split = string(1).value(r);
            let split = Split::parse(split).with_context(|| format!("row {r}: unknown split '{split}'"))?;
            Ok(PairRow {
                song_id: string(0).value(r).to_string(),
                split,
                segment_index: u32s(2).value(r),
                first_bar: u32s(3).value(r),
                end_bar: u32s(4).value(r),
                start_seconds: f64s(5).value(r),
                end_seconds: f64s(6).value(r),
                meter_numerator: u32s(7).value(r),
                meter_denominator: u32s(8).value(r),
                tempo_bpm: f64s(9).value(r),
                codes_start_frame: starts.value(r),
                codes: list(11, r),
                lead_octuple: list(12, r),
                piano_octuple: list(13, r),
                lead_remi: list(14, r),
                piano_remi: list(15, r),
                audio_path: string(16).value(r).to_string(),
                midi_path: string(17).value(r).to_string(),
                lead_sheet_path: string(18).value(r).to_string(),
            })
        })
        .collect()
}

/// How audio codes are laid out in every row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioLayout {
    pub sample_rate: u32,
    pub frame_rate: f64,
    /// Codebooks per frame.
    pub n_q: usize,
    /// Code of frames outside the track (the codebook size, MusicGen's pad/BOS id).
    pub pad_code: u16,
    /// Frames the model sees (10.16 s = 508 at 50 Hz).
    pub window_frames: usize,
    /// Extra frames stored on each side for the random shift (1 s = 50 at 50 Hz).
    pub margin_frames: usize,
    /// The EnCodec checkpoint the codes came from.
    pub encodec: String,
}

impl AudioLayout {
    pub fn stored_frames(&self) -> usize {
        self.window_frames + 2 * self.margin_frames
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardInfo {
    pub file: String,
    pub split: Split,
    pub rows: usize,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitCount {
    pub songs: usize,
    pub rows: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkippedSong {
    pub song: String,
    pub reason: String,
}

/// Something a prepared song lost on the way (its rows are kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SongWarning {
    pub song: String,
    pub warning: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema_version: u32,
    pub audio: AudioLayout,
    pub counts: BTreeMap<Split, SplitCount>,
    /// Song ids of each split, sorted.
    pub songs: BTreeMap<Split, Vec<String>>,
    pub shards: Vec<ShardInfo>,
    pub skipped: Vec<SkippedSong>,
    pub warnings: Vec<SongWarning>,
    /// The resolved `prepare` settings that produced the shards.
    pub config: serde_json::Value,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_NAME);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} (is {} a prepared shard folder?)", path.display(), dir.display()))?;
        let value: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{} is not a valid manifest", path.display()))?;
        // The version first: an older manifest may not even parse as this one.
        let version = value.get("schema_version").and_then(|v| v.as_u64()).with_context(|| format!("{} is not a valid manifest (no schema_version)", path.display()))?;
        check_version(dir, version)?;
        let manifest: Self = serde_json::from_value(value).with_context(|| format!("{} is not a valid manifest", path.display()))?;
        ensure!(
            manifest.shards.iter().any(|s| s.rows > 0),
            "{} lists no rows: no song of {} was prepared, so there is nothing to train or evaluate on; \
             run `stylebridge prepare` again (its report lists why songs were skipped)",
            path.display(),
            dir.display()
        );
        Ok(manifest)
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        crate::atomic::write(&dir.join(MANIFEST_NAME), text.as_bytes())
    }

    pub fn shards_of(&self, split: Split) -> impl Iterator<Item = &ShardInfo> {
        self.shards.iter().filter(move |s| s.split == split)
    }
}

/// Refuse shards of another schema version, saying what changed since.
fn check_version(dir: &Path, version: u64) -> Result<()> {
    let current = u64::from(SCHEMA_VERSION);
    if version > current {
        bail!(
            "{} holds shards of schema version {version}, written by a newer stylebridge; this build reads version {current}. \
             Use that build, or run `stylebridge prepare` again with this one",
            dir.display()
        );
    }
    if version < current {
        let changes: Vec<&str> = SCHEMA_CHANGES.iter().filter(|(v, _)| u64::from(*v) > version).map(|(_, why)| *why).collect();
        bail!(
            "{} holds shards of schema version {version}; this build reads version {current}, and since then {}. \
             Run `stylebridge prepare` again to rebuild them (into a new folder, or into this one after deleting it)",
            dir.display(),
            changes.join("; ")
        );
    }
    Ok(())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Write `rows` (all of one split, in order) as shards `SPLIT-00000.parquet`, ... of at most
/// `max_bytes` (estimated, before compression; at least one row each), atomically.
pub fn write_split(dir: &Path, split: Split, rows: &[PairRow], max_bytes: usize) -> Result<Vec<ShardInfo>> {
    let mut infos = Vec::new();
    let mut start = 0;
    while start < rows.len() {
        let mut end = start;
        let mut size = 0;
        while end < rows.len() && (end == start || size + rows[end].approx_bytes() <= max_bytes) {
            size += rows[end].approx_bytes();
            end += 1;
        }
        let file = format!("{}-{:05}.parquet", split.name(), infos.len());
        let bytes = encode_rows(&rows[start..end])?;
        crate::atomic::write(&dir.join(&file), &bytes)?;
        infos.push(ShardInfo { file, split, rows: end - start, bytes: bytes.len() as u64, sha256: sha256_hex(&bytes) });
        start = end;
    }
    Ok(infos)
}

/// Read one shard, checking its size and sha256 against the manifest.
pub fn read_shard(dir: &Path, info: &ShardInfo) -> Result<Vec<PairRow>> {
    let path = dir.join(&info.file);
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read shard {}", path.display()))?;
    let digest = sha256_hex(&bytes);
    if digest != info.sha256 {
        bail!("shard {} is corrupt or was replaced: sha256 {digest}, manifest says {}", path.display(), info.sha256);
    }
    let rows = decode_rows(bytes, &path.display().to_string())?;
    ensure!(rows.len() == info.rows, "shard {} has {} rows, manifest says {}", path.display(), rows.len(), info.rows);
    Ok(rows)
}

/// Delete `*.parquet` files in `dir` that the manifest does not list (left by an earlier run
/// that wrote more shards). Only called after the new manifest is in place.
pub fn remove_unlisted(dir: &Path, keep: &[ShardInfo]) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(".parquet") && !keep.iter().any(|s| s.file == name) {
            std::fs::remove_file(&path).with_context(|| format!("cannot remove stale shard {}", path.display()))?;
            removed.push(path);
        }
    }
    Ok(removed)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn row(song: &str, segment: u32, split: Split) -> PairRow {
        let seed = segment as u16;
        let codes = (0..4 * 20).map(|i| (i as u16 * 7 + seed) % 33).collect();
        let lead = vec![4, 260, 388, 577, 780, 920, 940, 1200];
        let piano = (0..16).map(|i| 4 + i as u16 + seed).collect();
        PairRow {
            meter_numerator: 3,
            codes_start_frame: -7 + i64::from(segment),
            lead_remi: vec![679, 933, 6, 134, 323, 530, 670, 5],
            piano_remi: vec![seed; segment as usize],
            ..PairRow::synthetic(song, split, segment, codes, lead, piano)
        }
    }

    #[test]
    fn rows_round_trip_through_parquet_deterministically() {
        let rows: Vec<PairRow> = (0..600).map(|i| row(&format!("s{}", i / 7), i % 7, Split::Valid)).collect();
        let bytes = encode_rows(&rows).unwrap();
        assert_eq!(encode_rows(&rows).unwrap(), bytes, "equal rows must give equal bytes");
        assert_eq!(decode_rows(bytes, "mem").unwrap(), rows);
        assert_eq!(decode_rows(encode_rows(&[]).unwrap(), "mem").unwrap(), vec![]);
    }

    #[test]
    fn shards_are_bounded_checked_and_stale_ones_removed() {
        let dir = tempfile::tempdir().unwrap();
        let rows: Vec<PairRow> = (0..10).map(|i| row(&format!("s{i}"), 3, Split::Train)).collect();
        let per_row = rows[0].approx_bytes();
        let infos = write_split(dir.path(), Split::Train, &rows, 3 * per_row + 10).unwrap();
        assert_eq!(infos.iter().map(|s| s.rows).collect::<Vec<_>>(), [3, 3, 3, 1]);
        let back: Vec<PairRow> = infos.iter().flat_map(|s| read_shard(dir.path(), s).unwrap()).collect();
        assert_eq!(back, rows);

        // A tampered shard is refused with its name.
        let path = dir.path().join(&infos[1].file);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 20;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let err = format!("{:#}", read_shard(dir.path(), &infos[1]).unwrap_err());
        assert!(err.contains("train-00001.parquet") && err.contains("sha256"), "{err}");

        let removed = remove_unlisted(dir.path(), &infos[..2]).unwrap();
        assert_eq!(removed.len(), 2);
        assert!(dir.path().join("train-00001.parquet").exists() && !dir.path().join("train-00002.parquet").exists());
    }

    #[test]
    fn manifest_round_trips_and_rejects_other_versions() {
        let dir = tempfile::tempdir().unwrap();
        let layout = AudioLayout {
            sample_rate: 32000,
            frame_rate: 50.0,
            n_q: 4,
            pad_code: 2048,
            window_frames: 508,
            margin_frames: 50,
            encodec: "ckpt".into(),
        };
        let mut manifest = Manifest {
            schema_version: SCHEMA_VERSION,
            audio: layout,
            counts: BTreeMap::from([(Split::Train, SplitCount { songs: 1, rows: 2 })]),
            songs: BTreeMap::from([(Split::Train, vec!["a".into()])]),
            shards: vec![ShardInfo { file: "train-00000.parquet".into(), split: Split::Train, rows: 2, bytes: 10, sha256: "00".into() }],
            skipped: vec![SkippedSong { song: "b".into(), reason: "no notes".into() }],
            warnings: vec![SongWarning { song: "a".into(), warning: "a.mp3: truncated".into() }],
            config: serde_json::json!({"seed": 1}),
        };
        manifest.write(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), manifest);
        assert_eq!(manifest.audio.stored_frames(), 608);

        // A manifest without rows (a prepare that prepared nothing) is refused by name.
        let empty = Manifest { shards: vec![], ..manifest.clone() };
        empty.write(dir.path()).unwrap();
        let err = format!("{:#}", Manifest::read(dir.path()).unwrap_err());
        assert!(err.contains("manifest.json lists no rows") && err.contains(&dir.path().display().to_string()), "{err}");
        manifest.schema_version = 99;
        manifest.write(dir.path()).unwrap();
        let err = format!("{:#}", Manifest::read(dir.path()).unwrap_err());
        assert!(err.contains("schema version 99") && err.contains("newer stylebridge"), "{err}");
        // A version-1 manifest (before target_tracks) is refused with the reason and the remedy.
        manifest.schema_version = 1;
        manifest.write(dir.path()).unwrap();
        let err = format!("{:#}", Manifest::read(dir.path()).unwrap_err());
        let folder = dir.path().display().to_string();
        for needle in [folder.as_str(), "schema version 1", "reads version 2", "whole piano arrangement", "prepare.target_tracks", "run `stylebridge prepare` again"] {
            assert!(err.to_lowercase().contains(&needle.to_lowercase()), "{needle:?} missing from: {err}");
        }
    }
}
