//! Low-rank adapters (LoRA) as BOSSA adds them to MuseCoco's q/k/v projections.
//!
//! BOSSA's `LoRALayer` (musecoco/hf_musecoco/modeling_musecoco.py) holds `lora_A` [rank, in]
//! drawn from randn / rank and `lora_B` [out, rank] = 0, so a fresh adapter adds exactly 0;
//! scaling is 1. The adapter sits beside the frozen projection (`self_attn.lora_q` next to
//! `self_attn.q_proj`) and its output is added to the projection's: out = Wx + b + B(Ax).
use tch::{nn, Kind, Tensor};

/// Rank BOSSA uses for q, k and v.
pub const RANK: i64 = 16;

#[derive(Debug)]
pub struct Lora {
    lora_a: Tensor,
    lora_b: Tensor,
}

impl Lora {
    /// Trainable adapter `in_dim -> out_dim` at `p` (variables `p.lora_A`, `p.lora_B`), in the
    /// store's floating kind.
    pub fn new(p: nn::Path, in_dim: i64, out_dim: i64, rank: i64) -> Self {
        let kind = float_kind(&p);
        let a = Tensor::randn([rank, in_dim], (Kind::Float, p.device())) / rank as f64;
        let lora_a = p.add("lora_A", a.to_kind(kind), true);
        let lora_b = p.add("lora_B", Tensor::zeros([out_dim, rank], (kind, p.device())), true);
        Self { lora_a, lora_b }
    }

    /// B(Ax) for x [..., in_dim]. Evaluated right to left so the [out, in] product BA is never
    /// formed (the reference multiplies B @ A first; the sum is the same up to rounding).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.lora_a.tr()).matmul(&self.lora_b.tr())
    }
}

/// The store's kind when it is floating, fp32 otherwise (a fresh store reports fp32).
pub(crate) fn float_kind(p: &nn::Path) -> Kind {
    match p.kind() {
        k @ (Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double) => k,
        _ => Kind::Float,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    #[test]
    fn fresh_adapter_adds_zero_and_is_trainable() {
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let lora = Lora::new(vs.root() / "lora_q", 8, 6, 4);
        let vars = vs.variables();
        assert_eq!(vars["lora_q.lora_A"].size(), vec![4, 8]);
        assert_eq!(vars["lora_q.lora_B"].size(), vec![6, 4]);
        assert_eq!(vs.trainable_variables().len(), 2);
        // A ~ randn / rank: its spread is about 1/4 here.
        let std = vars["lora_q.lora_A"].std(true).double_value(&[]);
        assert!((0.15..0.4).contains(&std), "std {std}");
        let x = Tensor::randn([2, 3, 8], (Kind::Float, Device::Cpu));
        let y = lora.forward(&x);
        assert_eq!(y.size(), vec![2, 3, 6]);
        assert_eq!(y.abs().max().double_value(&[]), 0.0);
    }

    #[test]
    fn computes_b_times_a_x() {
        let vs = VarStore::new(Device::Cpu);
        let lora = Lora::new(vs.root(), 3, 2, 2);
        tch::no_grad(|| {
            lora.lora_a.shallow_clone().copy_(&Tensor::from_slice(&[1.0f32, 0., 2., 0., 1., 0.]).view([2, 3]));
            lora.lora_b.shallow_clone().copy_(&Tensor::from_slice(&[1.0f32, 1., 0., 3.]).view([2, 2]));
        });
        let x = Tensor::from_slice(&[1.0f32, 2., 3.]).view([1, 3]);
        // Ax = [7, 2]; B(Ax) = [9, 6].
        assert_eq!(Vec::<f32>::try_from(lora.forward(&x).view([-1])).unwrap(), vec![9.0, 6.0]);
    }
}
