//! Audio in and out.
//!
//! `load_mono` decodes WAV, FLAC, MP3 and Ogg/Vorbis (symphonia), averages the channels and
//! resamples with rubato's synchronous FFT resampler (band-limited: the spectrum is cut with a
//! Blackman-Harris windowed sinc below the lower Nyquist frequency). BOSSA resamples each channel
//! with torchaudio and then averages them; both steps are linear, so averaging first gives the
//! same signal at a fraction of the cost.
//!
//! `write_wav` writes 16-bit PCM mono WAV atomically.
use anyhow::{Context, Result};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};
use std::fs::File;
use std::path::Path;
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

/// Why an audio file could not be loaded. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("cannot open audio file {path}: {reason}")]
    Open { path: String, reason: std::io::Error },
    #[error("{path} is empty (0 bytes)")]
    EmptyFile { path: String },
    #[error("{path} is too short to be an audio file ({bytes} bytes): it ends inside its header")]
    Truncated { path: String, bytes: u64 },
    #[error("{path} is not a supported audio file ({detail}); supported: WAV, FLAC, MP3, Ogg/Vorbis")]
    Unsupported { path: String, detail: String },
    #[error("{path} is corrupt: {detail}")]
    Corrupt { path: String, detail: String },
    #[error("{path} holds no decodable audio samples (an empty or corrupt stream)")]
    NoSamples { path: String },
    #[error("{path} declares an invalid sample rate or channel layout ({detail})")]
    BadFormat { path: String, detail: String },
}

/// Decoded audio before resampling: mono samples at the file's own rate.
struct Decoded {
    samples: Vec<f32>,
    sample_rate: u32,
}

/// Decode any supported audio file to mono `f32` at `sample_rate` Hz (channels averaged).
pub fn load_mono(path: &Path, sample_rate: u32) -> Result<Vec<f32>> {
    anyhow::ensure!(sample_rate > 0, "target sample rate must be positive");
    let decoded = decode_mono(path)?;
    resample(&decoded.samples, decoded.sample_rate, sample_rate)
        .with_context(|| format!("while resampling {}", path.display()))
}

fn decode_mono(path: &Path) -> Result<Decoded, AudioError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|reason| AudioError::Open {
        path: name.clone(),
        reason,
    })?;
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    if bytes == 0 {
        return Err(AudioError::EmptyFile { path: name });
    }
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
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| AudioError::Unsupported {
            path: name.clone(),
            detail: "no audio codec parameters".into(),
        })?
        .clone();
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| AudioError::Unsupported {
            path: name.clone(),
            detail: e.to_string(),
        })?;

    let mut mono = Vec::new();
    let mut rate = params.sample_rate;
    let mut interleaved: Vec<f32> = Vec::new();
    loop {
        let packet = match format.next_packet() {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            // A stream cut short ends decoding; what was decoded so far is the audio.
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
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
        match rate {
            Some(r) if r != buf_rate => {
                return Err(AudioError::Corrupt {
                    path: name,
                    detail: format!("sample rate changes from {r} to {buf_rate} Hz"),
                })
            }
            _ => rate = Some(buf_rate),
        }
        buf.copy_to_vec_interleaved(&mut interleaved);
        let scale = 1.0 / channels as f32;
        mono.extend(
            interleaved
                .chunks_exact(channels)
                .map(|frame| frame.iter().sum::<f32>() * scale),
        );
    }
    match rate {
        Some(sample_rate) if !mono.is_empty() => Ok(Decoded {
            samples: mono,
            sample_rate,
        }),
        _ => Err(AudioError::NoSamples { path: name }),
    }
}

/// Band-limited resampling of a mono signal (rubato `Fft`, output aligned with the input:
/// the filter delay is trimmed, and the length is `ceil(len * to / from)`).
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
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
    anyhow::ensure!(
        sample_rate > 0,
        "cannot write {}: sample rate must be positive",
        path.display()
    );
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
    fn same_rate_is_a_copy() {
        let x = vec![0.1f32, -0.2, 0.3];
        assert_eq!(resample(&x, 32_000, 32_000).unwrap(), x);
    }
}
