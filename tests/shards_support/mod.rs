//! Prepared-data folders for tests and benchmarks: rows of each split as shards, then the
//! manifest, as `stylebridge prepare` leaves them.
#![allow(dead_code)]
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use stylebridge::data::shards::{self, AudioLayout, Manifest, PairRow, SplitCount};
use stylebridge::data::split::Split;

/// Write `splits` (rows already carrying their split) under `dir` with `layout`.
pub fn write(dir: &Path, layout: AudioLayout, splits: &[(Split, Vec<PairRow>)]) {
    std::fs::create_dir_all(dir).unwrap();
    let (mut infos, mut counts, mut songs) = (Vec::new(), BTreeMap::new(), BTreeMap::new());
    for (split, rows) in splits {
        if !rows.is_empty() {
            infos.extend(shards::write_split(dir, *split, rows, 8 * rows[0].approx_bytes()).unwrap());
        }
        let names: Vec<String> = rows.iter().map(|r| r.song_id.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        counts.insert(*split, SplitCount { songs: names.len(), rows: rows.len() });
        songs.insert(*split, names);
    }
    let manifest = Manifest { schema_version: shards::SCHEMA_VERSION, audio: layout, counts, songs, shards: infos, skipped: vec![], warnings: vec![], config: serde_json::json!({}) };
    manifest.write(dir).unwrap();
}
