//! Audio input/output end to end: every supported format decodes to the right mono signal at
//! 32 kHz, resampling is accurate and band-limited, and bad files fail with the file's name.
use std::f64::consts::PI;
use std::path::{Path, PathBuf};
use stylebridge::data::audio::{load, load_mono, resample, write_wav};

const SR: u32 = 32_000;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/audio")
        .join(name)
}

fn sine(freq: f64, rate: u32, seconds: f64, amp: f64) -> Vec<f64> {
    let n = (rate as f64 * seconds).round() as usize;
    (0..n)
        .map(|i| amp * (2.0 * PI * freq * i as f64 / rate as f64).sin())
        .collect()
}

/// A sinusoid fitted by least squares at a known frequency.
struct Fit {
    amp: f64,
    /// Residual RMS relative to the sinusoid's RMS.
    resid: f64,
    /// Time shift against `amp * sin(w t)`, in samples.
    shift: f64,
}

/// Fit one sinusoid at `freq` over the middle of `x` (edges skipped).
fn fit_sine(x: &[f32], rate: u32, freq: f64) -> Fit {
    let (a, b) = (x.len() / 5, x.len() * 4 / 5);
    let w = 2.0 * PI * freq / rate as f64;
    let (mut c, mut s) = (0.0, 0.0);
    for (i, &v) in x.iter().enumerate().take(b).skip(a) {
        c += v as f64 * (w * i as f64).cos();
        s += v as f64 * (w * i as f64).sin();
    }
    let n = (b - a) as f64;
    let (c, s) = (2.0 * c / n, 2.0 * s / n);
    let amp = (c * c + s * s).sqrt();
    let resid: f64 = (a..b)
        .map(|i| {
            let fitted = c * (w * i as f64).cos() + s * (w * i as f64).sin();
            (x[i] as f64 - fitted).powi(2)
        })
        .sum::<f64>()
        / n;
    Fit {
        amp,
        resid: resid.sqrt() / (amp / 2f64.sqrt()),
        shift: -c.atan2(s) / w,
    }
}

/// The frequency (0.5 Hz grid) whose fitted sinusoid is largest between `lo` and `hi`.
fn peak_frequency(x: &[f32], rate: u32, lo: f64, hi: f64) -> f64 {
    let steps = ((hi - lo) * 2.0) as usize;
    (0..=steps)
        .map(|k| lo + k as f64 * 0.5)
        .map(|f| (f, fit_sine(x, rate, f).amp))
        .fold((lo, -1.0), |best, cur| if cur.1 > best.1 { cur } else { best })
        .0
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

/// A WAV file with `channels` interleaved channels as 32-bit float or 24-bit PCM, so the test
/// covers layouts and sample formats that `write_wav` (mono 16-bit) does not produce.
fn raw_wav(frames: &[Vec<f64>], rate: u32, float: bool) -> Vec<u8> {
    let channels = frames[0].len() as u16;
    let (tag, bits) = if float { (3u16, 32u16) } else { (1u16, 24u16) };
    let block = channels * bits / 8;
    let mut data = Vec::new();
    for frame in frames {
        for &v in frame {
            if float {
                data.extend_from_slice(&(v as f32).to_le_bytes());
            } else {
                let q = (v * 8_388_607.0).round() as i32;
                data.extend_from_slice(&q.to_le_bytes()[..3]);
            }
        }
    }
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&rate.wrapping_mul(u32::from(block)).to_le_bytes());
    out.extend_from_slice(&block.to_le_bytes());
    out.extend_from_slice(&bits.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&data);
    out
}

#[test]
fn wav_written_by_write_wav_reads_back_at_32k_and_other_rates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tone.wav");
    let x: Vec<f32> = sine(440.0, 16_000, 0.5, 0.5).into_iter().map(|v| v as f32).collect();
    write_wav(&path, &x, 16_000).unwrap();
    let same = load_mono(&path, 16_000).unwrap();
    assert_eq!(same.len(), x.len());
    assert!(x.iter().zip(&same).all(|(a, b)| (a - b).abs() <= 1.0 / 32767.0));
    let up = load_mono(&path, SR).unwrap();
    assert_eq!(up.len(), 16_000);
    let fit = fit_sine(&up, SR, 440.0);
    assert!(
        (fit.amp - 0.5).abs() < 1e-3 && fit.resid < 1e-3,
        "amp {}, residual {}",
        fit.amp,
        fit.resid
    );
}

#[test]
fn multichannel_float_and_24bit_wav_are_averaged() {
    let dir = tempfile::tempdir().unwrap();
    // Three float channels at 44.1 kHz: 0.9, 0.3 and -0.3 times a 440 Hz sine -> average 0.3.
    let s = sine(440.0, 44_100, 0.4, 1.0);
    let frames: Vec<Vec<f64>> = s.iter().map(|&v| vec![0.9 * v, 0.3 * v, -0.3 * v]).collect();
    let float_path = dir.path().join("three.wav");
    std::fs::write(&float_path, raw_wav(&frames, 44_100, true)).unwrap();
    // Two 24-bit channels at 48 kHz: 0.5 and 0.1 -> average 0.3.
    let s = sine(440.0, 48_000, 0.4, 1.0);
    let frames: Vec<Vec<f64>> = s.iter().map(|&v| vec![0.5 * v, 0.1 * v]).collect();
    let pcm24_path = dir.path().join("stereo24.wav");
    std::fs::write(&pcm24_path, raw_wav(&frames, 48_000, false)).unwrap();

    for path in [&float_path, &pcm24_path] {
        let y = load_mono(path, SR).unwrap();
        assert_eq!(y.len(), (0.4 * SR as f64) as usize, "{}", path.display());
        let fit = fit_sine(&y, SR, 440.0);
        assert!(
            (fit.amp - 0.3).abs() < 1e-3,
            "{}: amplitude {}",
            path.display(),
            fit.amp
        );
        assert!(fit.resid < 1e-3, "{}: residual {}", path.display(), fit.resid);
    }
}

#[test]
fn flac_mp3_and_ogg_fixtures_decode_to_the_channel_average() {
    // Lossless FLAC must be near exact; the lossy codecs keep the tone within a few percent.
    // The sources hold amplitude 0.4 after averaging. The MP3 encoder lost 5% of it: sox's own
    // decoder (libmad) also measures 0.380. The Ogg/Vorbis stream declares its exact length;
    // sox wrote the MP3 without a LAME tag, so its encoder delay and padding (28 ms) stay in.
    for (name, expected_amp, amp_tol, resid_tol, extra_s) in [
        ("tone_44100_stereo.flac", 0.4, 1e-3, 1e-3, 0.0),
        ("tone_48000_stereo.mp3", 0.380, 0.005, 0.05, 0.05),
        ("tone_22050_mono.ogg", 0.4, 0.01, 0.05, 0.0),
    ] {
        let y = load_mono(&fixture(name), SR).unwrap();
        let seconds = y.len() as f64 / SR as f64;
        assert!(
            seconds >= 0.5 - 1e-3 && seconds <= 0.5 + extra_s + 1e-3,
            "{name}: {seconds} s"
        );
        let fit = fit_sine(&y, SR, 440.0);
        assert!(
            (fit.amp - expected_amp).abs() < amp_tol,
            "{name}: amplitude {}, expected {expected_amp}",
            fit.amp
        );
        assert!(fit.resid < resid_tol, "{name}: residual {}", fit.resid);
        let f = peak_frequency(&y, SR, 420.0, 460.0);
        assert!((f - 440.0).abs() <= 0.5, "{name}: peak at {f} Hz");
    }
}

#[test]
fn resampling_keeps_frequency_and_amplitude_and_removes_aliases() {
    for (from, to) in [
        (44_100u32, 32_000u32),
        (22_050, 32_000),
        (48_000, 32_000),
        (32_000, 16_000),
    ] {
        let x: Vec<f32> = sine(1000.0, from, 1.0, 0.7).into_iter().map(|v| v as f32).collect();
        let y = resample(&x, from, to).unwrap();
        assert_eq!(y.len(), to as usize, "{from} -> {to}");
        let fit = fit_sine(&y, to, 1000.0);
        assert!((fit.amp - 0.7).abs() < 1e-3, "{from} -> {to}: amplitude {}", fit.amp);
        assert!(fit.resid < 1e-3, "{from} -> {to}: residual {}", fit.resid);
        assert!(
            (peak_frequency(&y, to, 980.0, 1020.0) - 1000.0).abs() <= 0.5,
            "{from} -> {to}"
        );
        // rubato trims its filter delay to whole output samples; what is left is a fraction
        // of one sample (under 31 us at 32 kHz).
        assert!(
            fit.shift.abs() < 1.0,
            "{from} -> {to}: shifted by {} samples",
            fit.shift
        );
    }
    // A 20 kHz tone is above the 16 kHz Nyquist limit of 32 kHz: a band-limited resampler
    // removes it instead of folding it down to 12 kHz.
    let x: Vec<f32> = sine(20_000.0, 48_000, 0.5, 0.5).into_iter().map(|v| v as f32).collect();
    let y = resample(&x, 48_000, SR).unwrap();
    let middle = &y[y.len() / 10..y.len() * 9 / 10];
    assert!(rms(middle) < 0.005, "alias energy {}", rms(middle));
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn error_of(path: &Path) -> String {
    let err = load_mono(path, SR).expect_err("load_mono should fail");
    let msg = format!("{err:#}");
    let name = path.file_name().unwrap().to_str().unwrap();
    assert!(msg.contains(name), "error does not name the file: {msg}");
    msg
}

#[test]
fn bad_files_fail_with_a_clear_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| write_file(dir.path(), name, bytes);
    let flac = std::fs::read(fixture("tone_44100_stereo.flac")).unwrap();

    let msg = error_of(&dir.path().join("missing.wav"));
    assert!(msg.contains("cannot open"), "{msg}");

    let msg = error_of(&write("empty.wav", b""));
    assert!(msg.contains("empty"), "{msg}");

    let msg = error_of(&write("short.flac", &flac[..20]));
    assert!(msg.contains("is truncated (20 bytes): it ends before any audio could be read"), "{msg}");

    // An Ogg/Vorbis file whose only audio page is cut: no audio at all, said as such.
    let ogg = std::fs::read(fixture("tone_22050_mono.ogg")).unwrap();
    let msg = error_of(&write("cut.ogg", &ogg[..ogg.len() * 9 / 10]));
    assert!(msg.contains("is truncated") && msg.contains("before any audio could be read"), "{msg}");

    let msg = error_of(&write(
        "notes.mp3",
        b"These are my notes, not an MP3 file at all.\n".repeat(20).as_slice(),
    ));
    assert!(msg.contains("not a supported audio file"), "{msg}");

    // A WAV container holding a codec nobody decodes (format tag 0x1234).
    let mut odd = raw_wav(&vec![vec![0.0; 2]; 100], 8000, false);
    odd[20..22].copy_from_slice(&0x1234u16.to_le_bytes());
    let msg = error_of(&write("odd_codec.wav", &odd));
    assert!(msg.contains("not a supported audio file"), "{msg}");

    // Valid header, garbage frames: the FLAC frame sync/CRC checks fail.
    let mut corrupt = flac.clone();
    for b in corrupt[200..].iter_mut() {
        *b = b.wrapping_mul(31).wrapping_add(7);
    }
    let msg = error_of(&write("corrupt.flac", &corrupt));
    assert!(msg.contains("corrupt"), "{msg}");

    // A WAV header announcing data that is not there.
    let header_only = raw_wav(&[vec![0.0; 1]], 8000, false);
    let msg = error_of(&write("no_samples.wav", &header_only[..44]));
    assert!(msg.contains("no decodable audio"), "{msg}");
}

/// Sizes a header declares are checked before anything is allocated for them; each refusal
/// names the file, the value and the limit.
#[test]
fn absurd_rates_channel_counts_and_lengths_are_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| write_file(dir.path(), name, bytes);
    let tone: Vec<Vec<f64>> = sine(440.0, 8000, 0.1, 0.5).into_iter().map(|v| vec![v]).collect();
    // A header claiming 4 GHz (the rest of the file is an ordinary 0.1 s tone).
    let msg = error_of(&write("4ghz.wav", &raw_wav(&tone, 4_000_000_000, false)));
    assert!(msg.contains("sample rate 4000000000 Hz is outside the supported 1000 ..= 768000 Hz"), "{msg}");
    let msg = error_of(&write("500hz.wav", &raw_wav(&tone, 500, false)));
    assert!(msg.contains("sample rate 500 Hz is outside"), "{msg}");
    // 200 channels of 24-bit samples (the data is 40 frames of them).
    let frames: Vec<Vec<f64>> = (0..40).map(|_| vec![0.1; 200]).collect();
    let msg = error_of(&write("200ch.wav", &raw_wav(&frames, 8000, false)));
    assert!(msg.contains("200 channels, outside the supported 1 ..= 32"), "{msg}");
    // A data chunk declaring 3 hours at 8 kHz (the file holds 0.1 s).
    let mut long = raw_wav(&tone, 8000, false);
    let three_hours = 3 * 3600 * 8000 * 3u32; // bytes of 24-bit mono frames
    long[40..44].copy_from_slice(&three_hours.to_le_bytes());
    long[4..8].copy_from_slice(&(36 + three_hours).to_le_bytes());
    let msg = error_of(&write("3h.wav", &long));
    assert!(msg.contains("declares 10800 s of audio, longer than the supported 7200 s"), "{msg}");
    // A float sample that is not a number, or 10^30 times full scale, is refused, not passed on.
    for (name, value, text) in [("nan.wav", f32::NAN, "a sample at 0.001 s is NaN, not within ±1000"), ("huge.wav", 1e30, "is 1000000000000000000000000000000, not within ±1000")] {
        let mut bad = raw_wav(&tone, 8000, true);
        bad[44 + 4 * 10..44 + 4 * 11].copy_from_slice(&value.to_le_bytes());
        let msg = error_of(&write(name, &bad));
        assert!(msg.contains("corrupt") && msg.contains(text), "{msg}");
    }

    // The same limits hold for callers: a target rate, and resampling.
    let ok = write("ok.wav", &raw_wav(&tone, 8000, false));
    let msg = format!("{:#}", load_mono(&ok, 4_000_000_000).unwrap_err());
    assert!(msg.contains("ok.wav") && msg.contains("sample rate 4000000000 Hz is outside"), "{msg}");
    let msg = format!("{:#}", resample(&[0.0; 16], 44_100, 0).unwrap_err());
    assert!(msg.contains("resampling from 44100 Hz to 0 Hz: sample rate 0 Hz is outside"), "{msg}");
}

/// A file cut short decodes to what comes before the cut, and says what was lost.
#[test]
fn truncated_files_decode_with_a_warning_naming_what_was_lost() {
    let dir = tempfile::tempdir().unwrap();
    let cut = |name: &str, bytes: &[u8], keep: usize| {
        let p = dir.path().join(format!("cut_{name}"));
        std::fs::write(&p, &bytes[..keep]).unwrap();
        p
    };
    // The MP3 declares no length: the last frame is cut inside, which the reader sees.
    let mp3 = std::fs::read(fixture("tone_48000_stereo.mp3")).unwrap();
    let loaded = load(&cut("tone.mp3", &mp3, mp3.len() / 3), SR).unwrap();
    let seconds = loaded.value.len() as f64 / f64::from(SR);
    assert!((0.1..0.25).contains(&seconds), "a third of the 0.53 s file decodes, got {seconds} s");
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    let w = &loaded.warnings[0];
    assert!(w.contains("cut_tone.mp3") && w.contains("truncated"), "{w}");
    // The WAV and FLAC headers declare their length: the warning says how much is missing.
    let dir_wav = dir.path().join("tone.wav");
    let x: Vec<f32> = sine(440.0, 16_000, 0.5, 0.5).into_iter().map(|v| v as f32).collect();
    write_wav(&dir_wav, &x, 16_000).unwrap();
    let wav = std::fs::read(&dir_wav).unwrap();
    let loaded = load(&cut("tone.wav", &wav, 44 + 2 * 4000), 16_000).unwrap();
    assert_eq!(loaded.value.len(), 4000);
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].contains("cut_tone.wav: its header declares 0.50 s of audio but only 0.25 s decode; the last 0.25 s are lost"), "{:?}", loaded.warnings);
    let flac = std::fs::read(fixture("tone_44100_stereo.flac")).unwrap();
    let loaded = load(&cut("tone.flac", &flac, flac.len() / 2), SR).unwrap();
    assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    assert!(loaded.warnings[0].contains("cut_tone.flac: its header declares 0.50 s"), "{:?}", loaded.warnings);
    // Whole files load without warnings.
    for name in ["tone_44100_stereo.flac", "tone_48000_stereo.mp3", "tone_22050_mono.ogg"] {
        assert_eq!(load(&fixture(name), SR).unwrap().warnings, Vec::<String>::new(), "{name}");
    }
}
