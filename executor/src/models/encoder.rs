//! The BERT encoder layers over *packed* sequences: the tokens of every text in a batch
//! laid end to end as the rows of one `[tokens, hidden]` matrix, with no padding.
//!
//! Why not candle-transformers' `BertEncoder` (measured on all-MiniLM-L6-v2, a 2-core CPU,
//! 2026-12-03): it pads every text to the batch's longest and runs the linear layers as a
//! batched matmul of `[batch, seq, hidden]` with the weight broadcast per batch item, so a
//! batch of 32 costs about 32 times one text (0.2x sentence-transformers at batch 32). Here:
//!
//! - every linear layer is one `[tokens, in] x [in, out]` matmul over all texts' real tokens
//!   (query, key and value fused into one), so batching amortizes the weights and padding
//!   costs nothing;
//! - attention runs per text over its own rows only (no mask needed); on CPU in f32 with a
//!   kernel of our own, parallel over rows, elsewhere with candle's ops per text;
//! - GELU (erf) on CPU in f32 is our own parallel kernel too (candle's is a scalar `erf` per
//!   element), other activations and devices use candle's;
//! - LayerNorm is candle's fused `layer_norm`.
//!
//! Weights are read under the usual Hugging Face names (`layer.{i}.attention.self.query`,
//! ..., `output.LayerNorm`), the same as `BertEncoder` reads. In f32 the output matches
//! `BertModel::forward` on each text alone (tested in `tests/bert_tiny.rs`).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{Config, HiddenAct};

/// A linear layer with its bias. The weight is kept transposed, `[in, out]` row-major: gemm
/// then reads the right operand along its rows and does not repack a strided `Wᵀ` on
/// every call (which at batch 1 took longer than the arithmetic).
struct Linear {
    weight_t: Tensor,
    bias: Tensor,
}

impl Linear {
    fn load(vb: &VarBuilder, names: &[&str], inp: usize, out: usize) -> candle_core::Result<Linear> {
        let mut weights = Vec::with_capacity(names.len());
        let mut biases = Vec::with_capacity(names.len());
        for name in names {
            weights.push(vb.pp(*name).get((out, inp), "weight")?);
            biases.push(vb.pp(*name).get(out, "bias")?);
        }
        let weight_t = Tensor::cat(&weights, 0)?.t()?.contiguous()?;
        Ok(Linear { weight_t, bias: Tensor::cat(&biases, 0)? })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.matmul(&self.weight_t)?.broadcast_add(&self.bias)
    }
}

struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl Norm {
    fn load(vb: VarBuilder, size: usize, eps: f64) -> candle_core::Result<Norm> {
        Ok(Norm { weight: vb.get(size, "weight")?, bias: vb.get(size, "bias")?, eps: eps as f32 })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

struct Layer {
    qkv: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    intermediate: Linear,
    out: Linear,
    out_norm: Norm,
}

/// The encoder's layers.
pub struct PackedEncoder {
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
    act: HiddenAct,
}

/// Where each text's rows are in the packed matrix: `(first row, rows)`, in order, covering
/// every row once.
pub type Spans = [(usize, usize)];

impl PackedEncoder {
    /// Loads `layer.{i}` for every layer from `vb` (the `encoder` prefix).
    pub fn load(vb: VarBuilder, config: &Config) -> candle_core::Result<PackedEncoder> {
        let (h, inter) = (config.hidden_size, config.intermediate_size);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let vb = vb.pp(format!("layer.{i}"));
                let attn = vb.pp("attention");
                Ok(Layer {
                    qkv: Linear::load(&attn.pp("self"), &["query", "key", "value"], h, h)?,
                    attn_out: Linear::load(&attn.pp("output"), &["dense"], h, h)?,
                    attn_norm: Norm::load(attn.pp("output").pp("LayerNorm"), h, config.layer_norm_eps)?,
                    intermediate: Linear::load(&vb.pp("intermediate"), &["dense"], h, inter)?,
                    out: Linear::load(&vb.pp("output"), &["dense"], inter, h)?,
                    out_norm: Norm::load(vb.pp("output").pp("LayerNorm"), h, config.layer_norm_eps)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let heads = config.num_attention_heads;
        Ok(PackedEncoder { layers, heads, head_dim: h / heads, act: config.hidden_act })
    }

    /// `x` `[tokens, hidden]` (the embeddings of the texts in `spans`) through every layer.
    pub fn forward(&self, x: &Tensor, spans: &Spans) -> candle_core::Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            return self.cpu_forward(x, spans);
        }
        let mut x = x.clone();
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            let attn = self.attention(&qkv, spans)?;
            let h = layer.attn_norm.forward(&(layer.attn_out.forward(&attn)? + &x)?)?;
            let inter = activate(self.act, &layer.intermediate.forward(&h)?)?;
            x = layer.out_norm.forward(&(layer.out.forward(&inter)? + &h)?)?;
        }
        Ok(x)
    }

    /// [`PackedEncoder::forward`] on the CPU in f32: the same computation on plain buffers,
    /// each linear layer one gemm call that adds into a buffer holding its bias (and the
    /// residual), each norm and activation one pass in place: a few large parallel
    /// operations per layer instead of a dozen small ones (at batch 1 the thread hand-offs
    /// of small operations cost as much as the arithmetic).
    fn cpu_forward(&self, x: &Tensor, spans: &Spans) -> candle_core::Result<Tensor> {
        let (rows, hidden) = x.dims2()?;
        let mut x = cpu_slice(x)?;
        for layer in &self.layers {
            let qkv = cpu_linear(&x, rows, &layer.qkv, None)?;
            let attn = cpu_packed_attention(&qkv, rows, spans, self.heads, self.head_dim)?;
            let mut h = cpu_linear(&attn, rows, &layer.attn_out, Some(&x))?;
            cpu_layer_norm(&mut h, hidden, &layer.attn_norm)?;
            let mut inter = cpu_linear(&h, rows, &layer.intermediate, None)?;
            match self.act {
                HiddenAct::Gelu => gelu_erf_in_place(&mut inter),
                _ => {
                    let t = activate(self.act, &Tensor::from_vec(inter, (rows, inter_width(layer)), &Device::Cpu)?)?;
                    inter = cpu_slice(&t)?;
                }
            }
            x = cpu_linear(&inter, rows, &layer.out, Some(&h))?;
            cpu_layer_norm(&mut x, hidden, &layer.out_norm)?;
        }
        Tensor::from_vec(x, (rows, hidden), &Device::Cpu)
    }

    /// Self-attention of each text over its own rows: `qkv` `[tokens, 3 * hidden]` to
    /// `[tokens, hidden]` (candle's operations, text by text: other devices and dtypes).
    fn attention(&self, qkv: &Tensor, spans: &Spans) -> candle_core::Result<Tensor> {
        let (heads, d) = (self.heads, self.head_dim);
        let hidden = heads * d;
        let scale = 1.0 / (d as f64).sqrt();
        let mut outs = Vec::with_capacity(spans.len());
        for &(start, n) in spans {
            let rows = qkv.narrow(0, start, n)?;
            let split = |i: usize| rows.narrow(1, i * hidden, hidden)?.reshape((n, heads, d))?.transpose(0, 1);
            let (q, k, v) = (split(0)?.contiguous()?, split(1)?.contiguous()?, split(2)?.contiguous()?);
            let scores = (q.matmul(&k.t()?)? * scale)?;
            let p = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(v.dtype())?;
            outs.push(p.matmul(&v)?.transpose(0, 1)?.reshape((n, hidden))?);
        }
        Tensor::cat(&outs, 0)
    }
}

fn inter_width(layer: &Layer) -> usize {
    layer.intermediate.bias.dims1().unwrap_or(0)
}

fn activate(act: HiddenAct, x: &Tensor) -> candle_core::Result<Tensor> {
    match act {
        HiddenAct::Gelu => x.gelu_erf(),
        HiddenAct::GeluApproximate => x.gelu(),
        HiddenAct::Relu => x.relu(),
    }
}

fn cpu_slice(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    // A contiguous f32 CPU tensor's values (one copy; the kernels write a new tensor).
    t.flatten_all()?.to_vec1::<f32>()
}

/// `x` `[rows, in]` through `lin`: `[rows, out]`, plus `residual` `[rows, out]` when given,
/// in one gemm call (the buffer starts as bias + residual and the product is added to it).
fn cpu_linear(x: &[f32], rows: usize, lin: &Linear, residual: Option<&[f32]>) -> candle_core::Result<Vec<f32>> {
    let (inp, out) = lin.weight_t.dims2()?;
    if x.len() != rows * inp || residual.is_some_and(|r| r.len() != rows * out) {
        candle_core::bail!("linear layer {out}x{inp}: input of {} values for {rows} rows", x.len());
    }
    let bias = cpu_slice(&lin.bias)?;
    let mut dst = Vec::with_capacity(rows * out);
    match residual {
        Some(res) => {
            for row in res.chunks_exact(out) {
                dst.extend(row.iter().zip(&bias).map(|(r, b)| r + b));
            }
        }
        None => (0..rows).for_each(|_| dst.extend_from_slice(&bias)),
    }
    let (storage, layout) = lin.weight_t.storage_and_layout();
    let w = super::batch::cpu_f32(&storage, layout)?;
    let threads = rayon::current_num_threads();
    if threads > 1 && rows < 128 && out >= 64 * threads {
        // Few rows: one single-threaded gemm per block of output columns, the blocks in
        // parallel (one hand-off per layer instead of gemm's own synchronisation inside).
        let block = out.div_ceil(threads).next_multiple_of(16);
        let dst_ptr = SendPtr(dst.as_mut_ptr());
        let dst_ptr = &dst_ptr;
        rayon::scope(|scope| {
            for start in (0..out).step_by(block) {
                let n = block.min(out - start);
                scope.spawn(move |_| {
                    // SAFETY: as below, for columns start..start + n of dst and Wᵀ; the blocks
                    // are disjoint, so no two calls write the same element.
                    unsafe { gemm_into(rows, n, inp, dst_ptr.0.add(start), out, x, w.as_ptr().add(start), out, None) }
                });
            }
        });
        return Ok(dst);
    }
    let parallelism = if rows * out * inp >= 1 << 20 && threads > 1 { Some(threads) } else { None };
    // SAFETY: dst is rows x out (dst_rs = out), x is rows x inp (lhs_rs = inp), and the right
    // operand Wᵀ is inp x out row-major (rhs_rs = out); every slice has exactly those lengths
    // (checked above, and Wᵀ's by its dims).
    unsafe { gemm_into(rows, out, inp, dst.as_mut_ptr(), out, x, w.as_ptr(), out, parallelism) };
    Ok(dst)
}

struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint column blocks of one buffer to scoped threads.
unsafe impl Sync for SendPtr {}

/// dst[rows x n] (row stride `dst_rs`) += x[rows x inp] · wt[inp x n] (row stride `wt_rs`).
///
/// # Safety
/// `dst` and `wt` must be valid for those shapes and strides, `x` must hold rows·inp values,
/// and nothing else may access dst's elements during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    rows: usize,
    n: usize,
    inp: usize,
    dst: *mut f32,
    dst_rs: usize,
    x: &[f32],
    wt: *const f32,
    wt_rs: usize,
    threads: Option<usize>,
) {
    let parallelism = threads.map_or(gemm::Parallelism::None, gemm::Parallelism::Rayon);
    // SAFETY: the caller's contract; dst = 1·dst + 1·x·wt.
    unsafe {
        gemm::gemm(
            rows,
            n,
            inp,
            dst,
            1,
            dst_rs as isize,
            true,
            x.as_ptr(),
            1,
            inp as isize,
            wt,
            1,
            wt_rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// LayerNorm of every row of `x` (rows of `width`) in place, as `torch.nn.LayerNorm`
/// (biased variance).
fn cpu_layer_norm(x: &mut [f32], width: usize, norm: &Norm) -> candle_core::Result<()> {
    use rayon::prelude::*;
    let (w, b) = (cpu_slice(&norm.weight)?, cpu_slice(&norm.bias)?);
    // Rows in parallel only when there are enough of them to pay for the hand-off.
    x.par_chunks_mut(width).with_min_len(64).for_each(|row| {
        let mean = row.iter().sum::<f32>() / width as f32;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
        let inv = 1.0 / (var + norm.eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&w).zip(&b) {
            *v = (*v - mean) * inv * w + b;
        }
    });
    Ok(())
}

/// Attention over packed rows on the CPU, parallel over output rows: row `i` of text `s`
/// attends to the rows of `s` only, every head at once. `qkv` is `[rows, 3 * heads * d]`.
fn cpu_packed_attention(
    qkv: &[f32],
    rows: usize,
    spans: &Spans,
    heads: usize,
    d: usize,
) -> candle_core::Result<Vec<f32>> {
    use rayon::prelude::*;
    let hidden = heads * d;
    let width = 3 * hidden;
    if qkv.len() != rows * width || spans.iter().map(|s| s.1).sum::<usize>() != rows {
        candle_core::bail!("packed attention: {} values do not match {rows} rows of the spans", qkv.len());
    }
    let scale = 1.0 / (d as f32).sqrt();
    let mut owner = vec![0usize; rows];
    for (s, &(start, n)) in spans.iter().enumerate() {
        owner[start..start + n].fill(s);
    }
    let mut out = vec![0f32; rows * hidden];
    out.par_chunks_mut(hidden).with_min_len(16).enumerate().for_each(|(row, o)| {
        let (start, n) = spans[owner[row]];
        let mut scores = vec![0f32; n];
        for h in 0..heads {
            let q = &qkv[row * width + h * d..][..d];
            for (j, s) in scores.iter_mut().enumerate() {
                let k = &qkv[(start + j) * width + hidden + h * d..][..d];
                *s = super::batch::dot(q, k) * scale;
            }
            super::batch::softmax_in_place(&mut scores);
            let o = &mut o[h * d..(h + 1) * d];
            for (j, &p) in scores.iter().enumerate() {
                let v = &qkv[(start + j) * width + 2 * hidden + h * d..][..d];
                for (x, &y) in o.iter_mut().zip(v) {
                    *x += p * y;
                }
            }
        }
    });
    Ok(out)
}

/// `x · Φ(x)` (GELU with the exact erf, as PyTorch's default `gelu`) in place, in parallel.
fn gelu_erf_in_place(data: &mut [f32]) {
    use rayon::prelude::*;
    data.par_chunks_mut(1 << 15).for_each(|chunk| {
        for v in chunk {
            *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
        }
    });
}

/// erf in f32 as a rational function of x² on [-4, 4] (±1 beyond, where erf is 1 to f32
/// precision): no `exp`, no branches, so the loop above vectorizes. The coefficients are the
/// minimax fit Eigen and XLA use for `erf` on floats (error within a few ulp).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 + -2.101_024e-6;
    p = p * x2 + -5.692_506_4e-5;
    p = p * x2 + -7.349_906_3e-4;
    p = p * x2 + -2.954_6e-3;
    p = p * x2 + -1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 + -2.133_740_6e-4;
    q = q * x2 + -1.682_827e-3;
    q = q * x2 + -7.373_329e-3;
    q = q * x2 + -1.426_474e-2;
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_is_close_to_the_reference_values() {
        // erf at a few points, to 1e-7 (values of the mathematical function).
        for (x, want) in [
            (0.0, 0.0),
            (0.1, 0.112_462_916_018_284_9),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (-1.5, -0.966_105_146_475_310_7),
            (4.0, 0.999_999_984_582_742_1),
        ] {
            let got = erf(x as f32) as f64;
            assert!((got - want).abs() < 3e-7, "erf({x}) = {got} want {want}");
        }
    }

    #[test]
    fn gelu_matches_candle_gelu_erf() {
        let x = Tensor::arange(-600i64, 600, &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
        let x = (x / 100.0).unwrap();
        let mut ours = x.to_vec1::<f32>().unwrap();
        gelu_erf_in_place(&mut ours);
        let candle = x.gelu_erf().unwrap().to_vec1::<f32>().unwrap();
        let worst = ours.iter().zip(&candle).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-6, "{worst}");
    }

    #[test]
    fn packed_attention_matches_candle_per_text() {
        let (heads, d) = (3, 8);
        let spans = [(0usize, 5usize), (5, 1), (6, 9)];
        let qkv = Tensor::randn(0f32, 1.0, (15, 3 * heads * d), &Device::Cpu).unwrap();
        let enc = PackedEncoder { layers: vec![], heads, head_dim: d, act: HiddenAct::Gelu };
        let flat = qkv.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let ours = cpu_packed_attention(&flat, 15, &spans, heads, d).unwrap();
        let ours = Tensor::from_vec(ours, (15, heads * d), &Device::Cpu).unwrap();
        // The generic path, forced by going through bf16-free F64.
        let generic = enc.attention(&qkv.to_dtype(DType::F64).unwrap(), &spans).unwrap();
        let diff = (ours - generic.to_dtype(DType::F32).unwrap()).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }
}
