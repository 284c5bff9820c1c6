//! Audio in and out.
//!
//! `load` decodes WAV, FLAC, MP3 and Ogg/Vorbis (symphonia), averages the channels and
//! resamples with rubato's synchronous FFT resampler (band-limited: the spectrum is cut with a
//! Blackman-Harris windowed sinc below the lower Nyquist frequency). BOSSA resamples each channel
//! with torchaudio and then averages them; both steps are linear, so averaging first gives the
//! same signal at a fraction of the cost.
//!
//! Every size a file or a caller supplies is checked before anything is allocated for it: sample
//! rates within [`SAMPLE_RATES`], at most [`MAX_CHANNELS`] channels, at most [`MAX_SECONDS`] of
//! audio (as declared, and as decoded). A stream that ends early (a truncated file) still gives
//! the audio before the cut, with a warning that says what was lost.
//!
//! `write_wav` writes 16-bit PCM mono WAV atomically.
use anyhow::{Context, Result};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};
use std::fs::File;
use std::ops::RangeInclusive;
use std::path::Path;
use symphonia::core::codecs::audio::well_known::{CODEC_ID_MP1, CODEC_ID_MP2, CODEC_ID_MP3};
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

use crate::data::warned::Warned;

/// Sample rates accepted from files, flags and checkpoints: 1 kHz (below it nothing musical is
/// left) to 768 kHz (the highest rate audio interfaces record).
pub const SAMPLE_RATES: RangeInclusive<u32> = 1_000..=768_000;
/// Channels accepted in a file (a 22.2 surround mix has 24).
pub const MAX_CHANNELS: usize = 32;
/// The largest sample magnitude accepted: float audio is full scale at 1, and far beyond that a
/// file holds no audio but damage (which would also overflow the resampler's FFT).
pub const MAX_AMPLITUDE: f32 = 1000.0;
/// The longest audio decoded, resampled or rendered: 2 hours (a POP909 song lasts about 4 minutes).
/// At 32 kHz that is 230 M samples, 0.9 GB of `f32`.
pub const MAX_SECONDS: f64 = 2.0 * 3600.0;

/// Why an audio file could not be loaded. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("cannot open audio file {path}: {reason}")]
    Open { path: String, reason: std::io::Error },
    #[error("{path} is empty (0 bytes)")]
    EmptyFile { path: String },
    #[error("{path} is truncated ({bytes} bytes): it ends before any audio could be read, inside its header or first packet")]
    Truncated { path: String, bytes: u64 },
    #[error("{path} is not a supported audio file ({detail}); supported: WAV, FLAC, MP3, Ogg/Vorbis")]
    Unsupported { path: String, detail: String },
    #[error("{path} is corrupt: {detail}")]
    Corrupt { path: String, detail: String },
    #[error("{path} holds no decodable audio samples (an empty or corrupt stream)")]
    NoSamples { path: String },
    #[error("{path} declares an invalid sample rate or channel layout ({detail})")]
    BadFormat { path: String, detail: String },
    #[error("{path}: sample rate {rate} Hz is outside the supported {} ..= {} Hz", SAMPLE_RATES.start(), SAMPLE_RATES.end())]
    SampleRate { path: String, rate: u64 },
    #[error("{path}: {channels} channels, outside the supported 1 ..= {MAX_CHANNELS}")]
    Channels { path: String, channels: usize },
    #[error("{path}: {what} {seconds:.0} s of audio, longer than the supported {MAX_SECONDS} s")]
    TooLong { path: String, what: &'static str, seconds: f64 },
}

/// Check a sample rate against [`SAMPLE_RATES`]; `source` names where it came from.
pub fn check_sample_rate(rate: u64, source: &str) -> Result<(), AudioError> {
    match u32::try_from(rate) {
        Ok(r) if SAMPLE_RATES.contains(&r) => Ok(()),
        _ => Err(AudioError::SampleRate { path: source.to_string(), rate }),
    }
}

/// Check that a stream has at most [`MAX_CHANNELS`] channels.
fn check_channels(channels: usize, source: &str) -> Result<(), AudioError> {
    if channels > MAX_CHANNELS {
        return Err(AudioError::Channels { path: source.to_string(), channels });
    }
    Ok(())
}

/// Check that `samples` at `rate` Hz stay within [`MAX_SECONDS`]; `what` says whose length it is.
pub fn check_length(samples: u64, rate: u32, source: &str, what: &'static str) -> Result<(), AudioError> {
    let seconds = samples as f64 / f64::from(rate.max(1));
    if seconds > MAX_SECONDS {
        return Err(AudioError::TooLong { path: source.to_string(), what, seconds });
    }
    Ok(())
}

/// Decoded audio before resampling: mono samples at the file's own rate.
struct Decoded {
    samples: Vec<f32>,
    sample_rate: u32,
}

/// Decode any supported audio file to mono `f32` at `sample_rate` Hz (channels averaged), with a
/// warning for each loss (a stream cut short).
pub fn load(path: &Path, sample_rate: u32) -> Result<Warned<Vec<f32>>> {
    let name = path.display().to_string();
    check_sample_rate(u64::from(sample_rate), &format!("the target rate for {name}"))?;
    let decoded = decode_guarded(path)?;
    decoded.try_map(|d| resample(&d.samples, d.sample_rate, sample_rate).with_context(|| format!("while resampling {name}")))
}

/// [`load`] for commands: the warnings go to stderr.
pub fn load_mono(path: &Path, sample_rate: u32) -> Result<Vec<f32>> {
    Ok(load(path, sample_rate)?.print_warnings())
}

/// [`decode_mono`], with a panic inside the third-party decoders turned into an error naming the
/// file: their arithmetic on header fields is unchecked (tests/fuzz_readers.rs found an overflow
/// in symphonia's WAV reader, which [`check_wav_header`] now keeps from it).
fn decode_guarded(path: &Path) -> Result<Warned<Decoded>, AudioError> {
    std::panic::catch_unwind(|| decode_mono(path)).unwrap_or_else(|_| {
        Err(AudioError::Corrupt { path: path.display().to_string(), detail: "the decoder failed on it (a malformed stream)".into() })
    })
}

fn decode_mono(path: &Path) -> Result<Warned<Decoded>, AudioError> {
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|reason| AudioError::Open {
        path: name.clone(),
        reason,
    })?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    if bytes == 0 {
        return Err(AudioError::EmptyFile { path: name });
    }
    check_wav_header(&mut file, &name)?;
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    let probe_error = |err: SymphoniaError| match err {
        SymphoniaError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => AudioError::Truncated {
            path: name.clone(),
            bytes,
        },
        SymphoniaError::Unsupported(what) => AudioError::Unsupported {
            path: name.clone(),
            detail: what.to_string(),
        },
        other => AudioError::Corrupt {
            path: name.clone(),
            detail: other.to_string(),
        },
    };
    let mut format = symphonia::default::get_probe()
        .probe(&hint, mss, FormatOptions::default(), MetadataOptions::default())
        .map_err(probe_error)?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or_else(|| AudioError::Unsupported {
            path: name.clone(),
            detail: "no audio track".into(),
        })?;
    let (track_id, declared_frames) = (track.id, track.num_frames);
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| AudioError::Unsupported {
            path: name.clone(),
            detail: "no audio codec parameters".into(),
        })?
        .clone();
    // The decoder sizes its buffers from these: check them first.
    if let Some(rate) = params.sample_rate {
        check_sample_rate(u64::from(rate), &name)?;
        if let Some(frames) = declared_frames {
            check_length(frames, rate, &name, "declares")?;
        }
    }
    if let Some(channels) = params.channels.as_ref().map(|c| c.count()) {
        check_channels(channels, &name)?;
    }
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| AudioError::Unsupported {
            path: name.clone(),
            detail: e.to_string(),
        })?;

    let mut mono = Vec::new();
    let mut rate = params.sample_rate;
    let mut interleaved: Vec<f32> = Vec::new();
    // Where the stream was cut, if it was.
    let mut cut: Option<String> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            // The stream ends inside a packet: the file was cut. What came before is the audio.
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                cut = Some("the stream ends inside a packet".into());
                break;
            }
            Err(e) => {
                return Err(AudioError::Corrupt {
                    path: name,
                    detail: e.to_string(),
                })
            }
        };
        if packet.track_id != track_id {
            continue;
        }
        let buf = match decoder.decode(&packet) {
            Ok(buf) => buf,
            Err(e) => {
                return Err(AudioError::Corrupt {
                    path: name,
                    detail: e.to_string(),
                })
            }
        };
        let channels = buf.spec().channels().count();
        let buf_rate = buf.spec().rate();
        if channels == 0 || buf_rate == 0 {
            return Err(AudioError::BadFormat {
                path: name,
                detail: format!("{channels} channels at {buf_rate} Hz"),
            });
        }
        check_channels(channels, &name)?;
        match rate {
            Some(r) if r != buf_rate => {
                return Err(AudioError::Corrupt {
                    path: name,
                    detail: format!("sample rate changes from {r} to {buf_rate} Hz"),
                })
            }
            _ => {
                check_sample_rate(u64::from(buf_rate), &name)?;
                rate = Some(buf_rate);
            }
        }
        check_length((mono.len() + buf.frames()) as u64, buf_rate, &name, "decodes to more than")?;
        buf.copy_to_vec_interleaved(&mut interleaved);
        if let Some(i) = first_unplayable(&interleaved) {
            let at = (mono.len() + i / channels) as f64 / f64::from(buf_rate);
            return Err(AudioError::Corrupt { path: name, detail: format!("a sample at {at:.3} s is {}, not within ±{MAX_AMPLITUDE}", interleaved[i]) });
        }
        let scale = 1.0 / channels as f32;
        mono.extend(
            interleaved
                .chunks_exact(channels)
                .map(|frame| frame.iter().sum::<f32>() * scale),
        );
    }
    let Some(sample_rate) = rate.filter(|_| !mono.is_empty()) else {
        return Err(AudioError::NoSamples { path: name });
    };
    // MPEG audio declares no length, and symphonia ends it quietly at a frame cut short.
    if cut.is_none() && [CODEC_ID_MP1, CODEC_ID_MP2, CODEC_ID_MP3].contains(&params.codec) {
        if let Some((present, size)) = std::fs::read(path).ok().and_then(|bytes| cut_mpeg_frame(&bytes)) {
            cut = Some(format!("its last MPEG frame is cut after {present} of its {size} bytes"));
        }
    }
    let seconds = |frames: u64| frames as f64 / f64::from(sample_rate);
    let decoded = mono.len() as u64;
    let mut warnings = Vec::new();
    match declared_frames {
        Some(declared) if decoded < declared => warnings.push(format!(
            "{name}: its header declares {:.2} s of audio but only {:.2} s decode; the last {:.2} s are lost (a truncated file?)",
            seconds(declared),
            seconds(decoded),
            seconds(declared - decoded)
        )),
        _ => {
            if let Some(cut) = cut {
                warnings.push(format!(
                    "{name}: {cut}, after {:.2} s of audio: the file is truncated, and what followed is lost",
                    seconds(decoded)
                ));
            }
        }
    }
    Ok(Warned { value: Decoded { samples: mono, sample_rate }, warnings })
}

/// A WAV file's channel count and sample rate, checked before the reader sizes anything from
/// them (it multiplies them unchecked). Other files pass through.
fn check_wav_header(file: &mut File, name: &str) -> Result<(), AudioError> {
    use std::io::{Read, Seek};
    let mut head = Vec::new();
    let read = file.by_ref().take(1 << 16).read_to_end(&mut head).and_then(|_| file.rewind());
    read.map_err(|reason| AudioError::Open { path: name.to_string(), reason })?;
    if head.get(..4) != Some(b"RIFF") || head.get(8..12) != Some(b"WAVE") {
        return Ok(());
    }
    let u16_at = |at: usize| head.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| head.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let mut at = 12;
    while let (Some(id), Some(len)) = (head.get(at..at + 4), u32_at(at + 4)) {
        if id == b"fmt " {
            let (Some(channels), Some(rate)) = (u16_at(at + 10), u32_at(at + 12)) else { return Ok(()) };
            if channels == 0 {
                return Err(AudioError::Channels { path: name.to_string(), channels: 0 });
            }
            check_channels(usize::from(channels), name)?;
            return check_sample_rate(u64::from(rate), name);
        }
        // Chunks are padded to an even length.
        at = at.saturating_add(8).saturating_add(len as usize + (len as usize & 1));
    }
    Ok(())
}

/// The last frame of an MPEG audio file if it runs past the end of the file: (bytes present,
/// frame size). Frames are walked from the first (after an ID3v2 tag) by their headers; the walk
/// stops at anything else (a trailing ID3v1 tag, garbage), which is not a cut frame.
fn cut_mpeg_frame(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut at = id3v2_len(bytes);
    while let Some(header) = bytes.get(at..at + 4) {
        let size = mpeg_frame_len(u32::from_be_bytes([header[0], header[1], header[2], header[3]]))?;
        if at + size > bytes.len() {
            return Some((bytes.len() - at, size));
        }
        at += size;
    }
    None
}

/// Length of a leading ID3v2 tag (10-byte header, syncsafe size, optional 10-byte footer).
fn id3v2_len(bytes: &[u8]) -> usize {
    match bytes.get(..10) {
        Some(h) if &h[..3] == b"ID3" => {
            let size = h[6..10].iter().fold(0usize, |acc, &b| (acc << 7) | usize::from(b & 0x7F));
            10 + size + if h[5] & 0x10 != 0 { 10 } else { 0 }
        }
        _ => 0,
    }
}

/// Size in bytes of the MPEG audio frame a 32-bit header starts (ISO 11172-3 / 13818-3), or None
/// if the word is no frame header (or a free-format one, whose size it does not give).
fn mpeg_frame_len(header: u32) -> Option<usize> {
    // kbit/s for bitrate indices 1..=14: MPEG-1 layers I, II, III; MPEG-2/2.5 layer I; II and III.
    const KBPS: [[usize; 14]; 5] = [
        [32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448],
        [32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384],
        [32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320],
        [32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256],
        [8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160],
    ];
    let field = |shift: u32, bits: u32| ((header >> shift) & ((1 << bits) - 1)) as usize;
    let (sync, version, layer, bitrate, rate, padding) = (field(21, 11), field(19, 2), field(17, 2), field(12, 4), field(10, 2), field(9, 1));
    // version: 3 = MPEG-1, 2 = MPEG-2, 0 = MPEG-2.5 (1 reserved); layer: 3 = I, 2 = II, 1 = III.
    if sync != 0x7FF || version == 1 || layer == 0 || bitrate == 0 || bitrate == 15 || rate == 3 {
        return None;
    }
    let mpeg1 = version == 3;
    let table = match (mpeg1, layer) {
        (true, 3) => 0,
        (true, 2) => 1,
        (true, _) => 2,
        (false, 3) => 3,
        (false, _) => 4,
    };
    let bits_per_second = KBPS[table][bitrate - 1] * 1000;
    let sample_rate = [44_100, 48_000, 32_000][rate] >> [2, 0, 1, 0][version];
    Some(match layer {
        3 => (12 * bits_per_second / sample_rate + padding) * 4,
        1 if !mpeg1 => 72 * bits_per_second / sample_rate + padding,
        _ => 144 * bits_per_second / sample_rate + padding,
    })
}

/// Index of the first sample that is not a number or beyond [`MAX_AMPLITUDE`].
fn first_unplayable(samples: &[f32]) -> Option<usize> {
    samples.iter().position(|x| x.is_nan() || x.abs() > MAX_AMPLITUDE)
}

/// Band-limited resampling of a mono signal (rubato `Fft`, output aligned with the input:
/// the filter delay is trimmed, and the length is `ceil(len * to / from)`). Both rates must lie
/// in [`SAMPLE_RATES`] and the signal within [`MAX_SECONDS`], which bounds the resampler's
/// blocks (`rate / gcd(from, to)` frames) and the output, and its samples within
/// [`MAX_AMPLITUDE`].
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
    for rate in [from, to] {
        check_sample_rate(u64::from(rate), &format!("resampling from {from} Hz to {to} Hz"))?;
    }
    check_length(samples.len() as u64, from, &format!("resampling from {from} Hz to {to} Hz"), "the input holds")?;
    if let Some(i) = first_unplayable(samples) {
        anyhow::bail!("resampling from {from} Hz to {to} Hz: sample {i} is {}, not within ±{MAX_AMPLITUDE}", samples[i]);
    }
    if from == to || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let mut resampler = Fft::<f32>::new(from as usize, to as usize, 1024, 1, FixedSync::Both)
        .with_context(|| format!("cannot resample from {from} Hz to {to} Hz"))?;
    let input =
        InterleavedSlice::new(samples, 1, samples.len()).map_err(|e| anyhow::anyhow!("resampler input: {e}"))?;
    let output = resampler
        .process_all(&input, samples.len(), None)
        .with_context(|| format!("resampling from {from} Hz to {to} Hz failed"))?;
    Ok(output.take_data())
}

/// Write mono samples (clipped to [-1, 1]) as 16-bit PCM WAV, atomically.
pub fn write_wav(path: &Path, samples: &[f32], sample_rate: u32) -> Result<()> {
    check_sample_rate(u64::from(sample_rate), &format!("cannot write {}", path.display()))?;
    let data_bytes = u32::try_from(samples.len() * 2)
        .ok()
        .filter(|b| *b <= u32::MAX - 36)
        .with_context(|| {
            format!(
                "cannot write {}: {} samples do not fit a WAV file",
                path.display(),
                samples.len()
            )
        })?;
    crate::atomic::write_with(path, |w| {
        let (channels, bits) = (1u16, 16u16);
        let block_align = channels * bits / 8;
        w.write_all(b"RIFF")?;
        w.write_all(&(36 + data_bytes).to_le_bytes())?;
        w.write_all(b"WAVEfmt ")?;
        w.write_all(&16u32.to_le_bytes())?;
        w.write_all(&1u16.to_le_bytes())?; // PCM
        w.write_all(&channels.to_le_bytes())?;
        w.write_all(&sample_rate.to_le_bytes())?;
        w.write_all(&(sample_rate * block_align as u32).to_le_bytes())?;
        w.write_all(&block_align.to_le_bytes())?;
        w.write_all(&bits.to_le_bytes())?;
        w.write_all(b"data")?;
        w.write_all(&data_bytes.to_le_bytes())?;
        let mut pcm = Vec::with_capacity(samples.len() * 2);
        for &s in samples {
            let s = if s.is_finite() { s.clamp(-1.0, 1.0) } else { 0.0 };
            pcm.extend_from_slice(&((s * 32767.0).round() as i16).to_le_bytes());
        }
        w.write_all(&pcm)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_wav_header_and_clipping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip.wav");
        write_wav(&path, &[0.5, 2.0, -3.0, f32::NAN], 32_000).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 44 + 4 * 2);
        assert_eq!(&bytes[0..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 36 + 8);
        assert_eq!(u32::from_le_bytes(bytes[24..28].try_into().unwrap()), 32_000);
        let pcm: Vec<i16> = bytes[44..]
            .chunks(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(pcm, vec![16384, 32767, -32767, 0]);
    }

    #[test]
    fn mpeg_frame_sizes_follow_the_standard() {
        // MPEG-1 layer III, 128 kbit/s, 44.1 kHz: 417 bytes, 418 padded; 48 kHz: 384.
        assert_eq!(mpeg_frame_len(0xFFFB_9000), Some(417));
        assert_eq!(mpeg_frame_len(0xFFFB_9200), Some(418));
        assert_eq!(mpeg_frame_len(0xFFFB_9400), Some(384));
        // MPEG-2 layer III, 64 kbit/s, 22.05 kHz: 72 * 64000 / 22050 = 208.
        assert_eq!(mpeg_frame_len(0xFFF3_8000), Some(208));
        // MPEG-1 layer I, 32 kbit/s, 32 kHz: (12 * 32000 / 32000) * 4 = 48.
        assert_eq!(mpeg_frame_len(0xFFFF_1800), Some(48));
        // Not headers: no sync, free format, a reserved rate.
        assert_eq!(mpeg_frame_len(0x4944_3304), None);
        assert_eq!(mpeg_frame_len(0xFFFB_0000), None);
        assert_eq!(mpeg_frame_len(0xFFFB_9C00), None);
        // Two whole frames after an ID3v2 tag, then a cut one; an ID3v1 tag after whole frames is no cut.
        let frame = |size: usize| [0xFFFB_9400u32.to_be_bytes().to_vec(), vec![0; size - 4]].concat();
        let tag = [b"ID3\x04\x00\x00\x00\x00\x01\x00".to_vec(), vec![0; 128]].concat();
        let file = [tag.clone(), frame(384), frame(384), frame(384)[..100].to_vec()].concat();
        assert_eq!(cut_mpeg_frame(&file), Some((100, 384)));
        let whole = [tag, frame(384), b"TAG".to_vec(), vec![0; 125]].concat();
        assert_eq!(cut_mpeg_frame(&whole), None);
    }

    #[test]
    fn same_rate_is_a_copy() {
        let x = vec![0.1f32, -0.2, 0.3];
        assert_eq!(resample(&x, 32_000, 32_000).unwrap(), x);
    }
}
