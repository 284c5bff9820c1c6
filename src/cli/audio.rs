//! `stylebridge audio codes|features`: EnCodec codes and MusicGen stage-1 features of an audio file,
//! from HF `facebook/encodec_32khz` / `facebook/musicgen-large` folders used as they are.
use std::path::PathBuf;

use anyhow::{Context, Result};
use tch::{Device, Kind, Tensor};

use crate::models::encodec::Encodec;
use crate::models::frozen_audio::{encode_file, FrozenAudio, MusicgenSource};

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
    /// cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
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
    fn load_encodec(&self, device: Device) -> Result<Encodec> {
        Encodec::load(&self.encodec, device).with_context(|| format!("cannot load EnCodec from {}", self.encodec.display()))
    }

    /// Decode the input and encode it: codes `[1, n_q, frames]`, and a line describing them.
    fn encode(&self, encodec: &Encodec) -> Result<(Tensor, String)> {
        let (codes, seconds) = encode_file(encodec, &self.input)?;
        let c = encodec.config();
        let summary = format!("{seconds:.2} s at {} Hz -> {} frames at {} Hz", c.sampling_rate, codes.size()[2], c.frame_rate());
        Ok((codes, summary))
    }
}

fn codes(args: CodesArgs) -> Result<()> {
    let common = &args.common;
    let encodec = common.load_encodec(crate::device::parse(&common.device)?)?;
    let (codes, summary) = common.encode(&encodec)?;
    let codes = codes.squeeze_dim(0).to_device(Device::Cpu);
    crate::models::weights::write_safetensors(&common.output, &[("codes", &codes)])?;
    super::emit(&format!("{}: codes {:?} ({summary})\n", common.output.display(), codes.size()))
}

fn features(args: FeaturesArgs) -> Result<()> {
    let common = &args.common;
    let device = crate::device::parse(&common.device)?;
    // Load both models first: a bad --layer or checkpoint fails before the audio is decoded.
    let source = MusicgenSource { checkpoint: Some(args.musicgen.clone()), layers: args.layer, tiny: None };
    let mut audio = FrozenAudio::new(&source, Kind::Float, device, 0)?;
    let encodec = common.load_encodec(device)?;
    audio.check_encodec(&encodec, &format!("EnCodec in {} and MusicGen in {}", common.encodec.display(), args.musicgen.display()))?;
    let (codes, summary) = common.encode(&encodec)?;
    let features = audio.states(&codes)?.squeeze_dim(0).to_device(Device::Cpu);
    let codes = codes.squeeze_dim(0).to_device(Device::Cpu);
    crate::models::weights::write_safetensors(&common.output, &[("features", &features), ("codes", &codes)])?;
    super::emit(&format!(
        "{}: features {:?} from layer {} of {} ({summary})\n",
        common.output.display(),
        features.size(),
        audio.decoder().num_layers(),
        audio.config().num_hidden_layers
    ))
}
