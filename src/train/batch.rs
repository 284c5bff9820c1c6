//! A loader batch's arrays as tensors on the model's device: the parts every stage shares.
use tch::{Device, Kind, Tensor};

use crate::data::loader::Batch;

/// EnCodec codes [B, n_q, frames] (i64) and their mask [B, frames] (1 = real audio, f32).
pub fn audio(batch: &Batch, device: Device) -> (Tensor, Tensor) {
    let (b, n_q, frames) = (batch.len() as i64, batch.n_q as i64, batch.frames as i64);
    let codes = Tensor::from_slice(&batch.codes).view([b, n_q, frames]).to_device(device);
    (codes, mask(&batch.audio_mask, b, frames, device))
}

/// A 0/1 row-major mask [rows, cols] as f32.
pub fn mask(values: &[u8], rows: i64, cols: i64, device: Device) -> Tensor {
    Tensor::from_slice(values).view([rows, cols]).to_kind(Kind::Float).to_device(device)
}
