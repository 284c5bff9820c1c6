//! Training metrics: one JSON object per line (`metrics.jsonl`) and TensorBoard event
//! files (`events.out.tfevents.*`), both append-only and flushed on every write, so a
//! killed run keeps everything logged before it died.
use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

pub struct MetricsLog {
    jsonl: File,
    events: File,
}

impl MetricsLog {
    /// Open (appending) `metrics.jsonl` and a new TensorBoard event file in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let jsonl_path = dir.join("metrics.jsonl");
        let jsonl = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&jsonl_path)
            .with_context(|| format!("cannot open {}", jsonl_path.display()))?;
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        let events_path = dir.join(format!("events.out.tfevents.{}.{host}.{}", unix_seconds() as u64, std::process::id()));
        let mut events =
            File::create(&events_path).with_context(|| format!("cannot create {}", events_path.display()))?;
        write_record(&mut events, &event_bytes(unix_seconds(), 0, EventBody::FileVersion))
            .with_context(|| format!("cannot write {}", events_path.display()))?;
        Ok(Self { jsonl, events })
    }

    /// Record scalars for `step` in both sinks.
    pub fn log(&mut self, step: u64, scalars: &[(&str, f64)]) -> Result<()> {
        let now = unix_seconds();
        let mut line = serde_json::Map::new();
        line.insert("step".into(), step.into());
        line.insert("time".into(), now.into());
        for (name, value) in scalars {
            line.insert((*name).into(), serde_json::Number::from_f64(*value).map_or(serde_json::Value::Null, Into::into));
        }
        writeln!(self.jsonl, "{}", serde_json::Value::Object(line)).context("cannot append to metrics.jsonl")?;
        self.jsonl.flush().context("cannot flush metrics.jsonl")?;
        write_record(&mut self.events, &event_bytes(now, step, EventBody::Scalars(scalars)))
            .context("cannot append to the TensorBoard event file")?;
        Ok(())
    }
}

/// Resident and peak resident memory of this process (Linux `VmRSS`, `VmHWM`), in MiB, as
/// (`memory_rss_mib`, `memory_peak_mib`) where the system reports them.
pub fn memory_mib() -> Vec<(String, f64)> {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return Vec::new() };
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    };
    [("memory_rss_mib", "VmRSS:"), ("memory_peak_mib", "VmHWM:")]
        .into_iter()
        .filter_map(|(key, field_name)| field(field_name).map(|kb| (key.to_string(), kb / 1024.0)))
        .collect()
}

/// The peak resident memory of this process in MiB (NaN where the system does not say).
pub fn peak_memory_mib() -> f64 {
    memory_mib().into_iter().find(|(k, _)| k == "memory_peak_mib").map_or(f64::NAN, |(_, v)| v)
}

fn unix_seconds() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

enum EventBody<'a> {
    FileVersion,
    Scalars(&'a [(&'a str, f64)]),
}

/// `tensorflow.Event` protobuf: wall_time (1, double), step (2, int64), and either
/// file_version (3, string) or summary (5, Summary{ repeated Value{ tag (1), simple_value (2, float) } }).
fn event_bytes(wall_time: f64, step: u64, body: EventBody) -> Vec<u8> {
    let mut out = vec![0x09];
    out.extend_from_slice(&wall_time.to_le_bytes());
    out.push(0x10);
    put_varint(&mut out, step);
    match body {
        EventBody::FileVersion => put_bytes(&mut out, 0x1a, b"brain.Event:2"),
        EventBody::Scalars(scalars) => {
            let mut summary = Vec::new();
            for (tag, value) in scalars {
                let mut v = Vec::new();
                put_bytes(&mut v, 0x0a, tag.as_bytes());
                v.push(0x15);
                v.extend_from_slice(&(*value as f32).to_le_bytes());
                put_bytes(&mut summary, 0x0a, &v);
            }
            put_bytes(&mut out, 0x2a, &summary);
        }
    }
    out
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, key: u8, bytes: &[u8]) {
    out.push(key);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// TFRecord framing: length, masked CRC32C of the length, data, masked CRC32C of the data.
fn write_record(file: &mut File, data: &[u8]) -> std::io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    let mut record = Vec::with_capacity(data.len() + 16);
    record.extend_from_slice(&len);
    record.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    record.extend_from_slice(data);
    record.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    file.write_all(&record)?;
    file.flush()
}

fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    /// Read the TFRecord frames back, verifying both checksums.
    fn read_records(bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut records = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            assert_eq!(u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap()), masked_crc32c(len_bytes));
            let data = &bytes[at + 12..at + 12 + len];
            assert_eq!(u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap()), masked_crc32c(data));
            records.push(data.to_vec());
            at += 16 + len;
        }
        records
    }

    #[test]
    fn writes_jsonl_and_framed_events() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = MetricsLog::open(dir.path()).unwrap();
        log.log(7, &[("loss/contrastive", 1.5), ("lr", 1e-4)]).unwrap();
        log.log(8, &[("loss/contrastive", f64::NAN)]).unwrap();

        let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["step"], 7);
        assert_eq!(lines[0]["loss/contrastive"], 1.5);
        assert!(lines[1]["loss/contrastive"].is_null(), "NaN is logged as null, keeping the line valid JSON");

        let events = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents."))
            .unwrap();
        let records = read_records(&std::fs::read(events).unwrap());
        assert_eq!(records.len(), 3);
        assert!(records[0].windows(13).any(|w| w == b"brain.Event:2"));
        // step 7 as varint after the 0x10 key, and the tag and float value in the summary
        assert_eq!(&records[1][9..11], &[0x10, 7]);
        assert!(records[1].windows(16).any(|w| w == b"loss/contrastive"));
        assert!(records[1].windows(5).any(|w| w[0] == 0x15 && w[1..] == 1.5f32.to_le_bytes()));
    }
}
