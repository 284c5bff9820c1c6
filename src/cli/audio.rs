//! `stylebridge audio codes|features`: EnCodec codes and MusicGen stage-1 features of an audio file,
//! from HF `facebook/encodec_32khz` / `facebook/musicgen-large` folders used as they are.
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

use crate::data::audio::load_mono;
use crate::models::encodec::Encodec;
use crate::models::musicgen::{apply_delay_pattern, MusicgenDecoder};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: AudioCommand,
}

#[derive(clap::Subcommand)]
enum AudioCommand {
    /// Write the EnCodec codes [n_q, frames] (int64, key `codes`) of an audio file (decoded,
    /// mono, resampled to the model's rate).
    Codes(CodesArgs),
    /// Write the MusicGen decoder features stage 1 uses (key `features`, [frames + n_q, hidden],
    /// float32): codes in the delay pattern through the first N decoder layers, then the final
    /// layer norm, as BOSSA does. The codes are written too (key `codes`).
    Features(FeaturesArgs),
}

#[derive(clap::Args)]
struct Common {
    /// HF EnCodec folder (config.json + model.safetensors or sharded safetensors), e.g. encodec_32khz.
    #[arg(long, value_name = "DIR")]
    encodec: PathBuf,
    /// Audio file (WAV, FLAC, MP3, Ogg Vorbis).
    input: PathBuf,
    /// Output .safetensors file (written atomically).
    #[arg(short, long, value_name = "OUT.safetensors")]
    output: PathBuf,
    /// Run on the GPU (CUDA) instead of the CPU.
    #[arg(long)]
    cuda: bool,
}

#[derive(clap::Args)]
struct CodesArgs {
    #[command(flatten)]
    common: Common,
}

#[derive(clap::Args)]
struct FeaturesArgs {
    #[command(flatten)]
    common: Common,
    /// HF MusicGen folder (config.json with a `decoder` section + safetensors), e.g. musicgen-large.
    #[arg(long, value_name = "DIR")]
    musicgen: PathBuf,
    /// Decoder layers to run before the final layer norm [default: half the layers + 1, 25 of 48].
    #[arg(long, value_name = "N")]
    layer: Option<usize>,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        AudioCommand::Codes(a) => codes(a),
        AudioCommand::Features(a) => features(a),
    }
}

impl Common {
    fn device(&self) -> Result<Device> {
        anyhow::ensure!(!self.cuda || tch::Cuda::is_available(), "--cuda given but no CUDA device is available");
        Ok(if self.cuda { Device::Cuda(0) } else { Device::Cpu })
    }

    fn load_encodec(&self, device: Device) -> Result<Encodec> {
        Encodec::load(&self.encodec, device).with_context(|| format!("cannot load EnCodec from {}", self.encodec.display()))
    }

    /// Decode the input and encode it: codes `[1, n_q, frames]`, and a line describing them.
    fn encode(&self, encodec: &Encodec) -> Result<(Tensor, String)> {
        let rate = encodec.config().sampling_rate;
        let samples = load_mono(&self.input, rate)?;
        anyhow::ensure!(!samples.is_empty(), "{}: no audio samples", self.input.display());
        let audio = Tensor::from_slice(&samples).view([1, 1, -1]);
        let codes = encodec.encode(&audio).with_context(|| format!("cannot encode {}", self.input.display()))?;
        let summary = format!(
            "{:.2} s at {rate} Hz -> {} frames at {} Hz",
            samples.len() as f64 / rate as f64,
            codes.size()[2],
            encodec.config().frame_rate()
        );
        Ok((codes, summary))
    }
}

fn codes(args: CodesArgs) -> Result<()> {
    let common = &args.common;
    let encodec = common.load_encodec(common.device()?)?;
    let (codes, summary) = common.encode(&encodec)?;
    let codes = codes.squeeze_dim(0).to_device(Device::Cpu);
    write_safetensors(&common.output, &[("codes", &codes)])?;
    super::emit(&format!("{}: codes {:?} ({summary})\n", common.output.display(), codes.size()))
}

fn features(args: FeaturesArgs) -> Result<()> {
    let common = &args.common;
    let device = common.device()?;
    // Load both models first: a bad --layer or checkpoint fails before the audio is decoded.
    let decoder = MusicgenDecoder::load(&args.musicgen, args.layer, device, Kind::Float)
        .with_context(|| format!("cannot load the MusicGen decoder from {}", args.musicgen.display()))?;
    let encodec = common.load_encodec(device)?;
    let (made, read) = (encodec.config().num_quantizers_used(), decoder.config().num_codebooks);
    anyhow::ensure!(
        made == read && encodec.config().codebook_size <= decoder.config().vocab_size,
        "EnCodec in {} makes {made} codebooks of {} codes but the MusicGen decoder in {} reads {read} of {}",
        common.encodec.display(),
        encodec.config().codebook_size,
        args.musicgen.display(),
        decoder.config().vocab_size
    );
    let (codes, summary) = common.encode(&encodec)?;
    let input_ids = apply_delay_pattern(&codes, decoder.config().pad_token())?;
    let features = tch::no_grad(|| decoder.features(&input_ids))?.squeeze_dim(0).to_device(Device::Cpu);
    let codes = codes.squeeze_dim(0).to_device(Device::Cpu);
    write_safetensors(&common.output, &[("features", &features), ("codes", &codes)])?;
    super::emit(&format!(
        "{}: features {:?} from layer {} of {} ({summary})\n",
        common.output.display(),
        features.size(),
        decoder.num_layers(),
        decoder.config().num_hidden_layers
    ))
}

/// Write named tensors as one safetensors file, atomically.
fn write_safetensors(path: &Path, tensors: &[(&str, &Tensor)]) -> Result<()> {
    let scratch = tempfile::tempdir().context("cannot create a temporary folder")?;
    let staged = scratch.path().join("out.safetensors");
    Tensor::write_safetensors(tensors, &staged).with_context(|| format!("cannot serialise tensors for {}", path.display()))?;
    let bytes = std::fs::read(&staged).with_context(|| format!("cannot read back {}", staged.display()))?;
    crate::atomic::write(path, &bytes)
}
