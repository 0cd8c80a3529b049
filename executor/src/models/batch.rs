//! The batched decode machinery every text-generation family shares: one forward pass
//! serves many sequences at once (issue 13).
//!
//! - [`KvCache`]: the keys and values of every running sequence, one *slot* each, in one
//!   tensor per layer, `[slots, kv_heads, capacity, head_dim]`. The engine keeps its running
//!   sequences in slots `0..n` (an evicted sequence's slot is filled by moving the last one
//!   into it), so a decode step reads the first `n` slots as one strided view, without
//!   copying. The cache grows by doubling (slots and positions, positions up to the context)
//!   and only when a sequence is admitted that needs it, so its size is known at admission;
//!   it never shrinks while the model is loaded.
//! - [`StepSeq`]: what one sequence brings to a pass: one token (a decode step) or several
//!   (its prompt, or a chunk of it), at its own position in its own slot.
//! - [`StepPlan`] and [`Attention`]: the per-pass layout and the attention of every layer
//!   over it. The linear layers run once over the stacked rows of every sequence (a family's
//!   own code); attention for the one-token sequences runs batched over their slots (RoPE at
//!   each one's position, its new key and value scattered into its slot, a mask for each
//!   one's length, grouped-query heads without copying the cache); a multi-token sequence
//!   attends over its own slot with a causal mask.
//! - [`CausalLm`]: what a family implements (one file per family); the engine
//!   ([`super::generate`]) is written against it only.
//!
//! Scores, softmax and the weighted sum are computed in f32 whatever the weights' dtype, as
//! the batch-1 paths of candle and transformers do, so the logits are those of the batch-1
//! path (`tests/batch_llama.rs` checks them to 1e-4 against candle's own Llama).

use candle_core::{DType, Device, Tensor};

use super::ModelError;

/// A text-generation family's forward pass over many sequences at once.
pub trait CausalLm: Send + Sync + 'static {
    /// Prompt and output together, in tokens.
    fn context_length(&self) -> usize;
    fn vocab_size(&self) -> usize;
    /// An empty cache shaped for this model on its device.
    fn new_cache(&self) -> KvCache;
    /// One forward pass: appends each sequence's ids to its slot of `cache` and returns, per
    /// sequence in order, the f32 logits after its last id when it asks for them.
    fn step(&self, cache: &mut KvCache, seqs: &[StepSeq]) -> Result<Vec<Option<Vec<f32>>>, ModelError>;
}

/// One sequence's part of a forward pass.
#[derive(Debug, Clone, Copy)]
pub struct StepSeq<'a> {
    /// Its slot in the [`KvCache`].
    pub slot: usize,
    /// Positions it holds already (its ids go at `pos..pos + ids.len()`).
    pub pos: usize,
    /// At least one id.
    pub ids: &'a [u32],
    /// Whether the logits after its last id are wanted (not for a prompt chunk other than
    /// the last).
    pub logits: bool,
}

/// The keys and values of every running sequence (see the module docs).
pub struct KvCache {
    /// Per layer: keys and values, `[slots, kv_heads, capacity, head_dim]`.
    layers: Vec<(Tensor, Tensor)>,
    slots: usize,
    capacity: usize,
    kv_heads: usize,
    head_dim: usize,
    context: usize,
    dtype: DType,
    device: Device,
}

impl KvCache {
    pub fn new(layers: usize, kv_heads: usize, head_dim: usize, context: usize, dtype: DType, device: &Device) -> Self {
        let empty = Tensor::zeros((0, kv_heads, 0, head_dim), dtype, device).expect("an empty tensor");
        KvCache {
            layers: vec![(empty.clone(), empty); layers],
            slots: 0,
            capacity: 0,
            kv_heads,
            head_dim,
            context,
            dtype,
            device: device.clone(),
        }
    }

    /// Bytes one position of one sequence takes (keys and values of every layer).
    pub fn bytes_per_position(&self) -> usize {
        self.layers.len() * 2 * self.kv_heads * self.head_dim * self.dtype.size_in_bytes()
    }

    /// Bytes the cache would take with room for `slots` sequences of `len` positions (as
    /// [`KvCache::reserve`] would grow it).
    pub fn bytes_for(&self, slots: usize, len: usize) -> usize {
        let (s, c) = self.grown(slots, len);
        s * c * self.bytes_per_position()
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.slots * self.capacity * self.bytes_per_position()
    }

    fn grown(&self, slots: usize, len: usize) -> (usize, usize) {
        let s = if slots <= self.slots { self.slots } else { slots.next_power_of_two().max(self.slots * 2) };
        let c = if len <= self.capacity {
            self.capacity
        } else {
            len.next_power_of_two().max(self.capacity * 2).max(16).min(self.context)
        };
        (s, c.max(len))
    }

    /// Makes room for `slots` sequences of up to `len` positions each, keeping what is held.
    pub fn reserve(&mut self, slots: usize, len: usize) -> Result<(), ModelError> {
        if len > self.context {
            return Err(ModelError::Runtime(format!("{len} positions are past the context of {}", self.context)));
        }
        let (s, c) = self.grown(slots, len);
        if (s, c) == (self.slots, self.capacity) {
            return Ok(());
        }
        let (old_s, old_c, kvh, d) = (self.slots, self.capacity, self.kv_heads, self.head_dim);
        let grow = |t: &Tensor| -> candle_core::Result<Tensor> {
            let mut t = t.clone();
            if c > old_c {
                let pad = Tensor::zeros((old_s, kvh, c - old_c, d), self.dtype, &self.device)?;
                t = Tensor::cat(&[&t, &pad], 2)?;
            }
            if s > old_s {
                let pad = Tensor::zeros((s - old_s, kvh, c, d), self.dtype, &self.device)?;
                t = Tensor::cat(&[&t, &pad], 0)?;
            }
            t.contiguous()
        };
        for (k, v) in self.layers.iter_mut() {
            *k = grow(k)?;
            *v = grow(v)?;
        }
        (self.slots, self.capacity) = (s, c);
        Ok(())
    }

    /// Copies slot `from`'s keys and values (its first `len` positions) into slot `to`.
    pub fn move_slot(&mut self, from: usize, to: usize, len: usize) -> Result<(), ModelError> {
        if from == to || len == 0 {
            return Ok(());
        }
        for (k, v) in &self.layers {
            for t in [k, v] {
                let src = t.narrow(0, from, 1)?.narrow(2, 0, len)?.force_contiguous()?;
                t.narrow(0, to, 1)?.slice_set(&src, 2, 0)?;
            }
        }
        Ok(())
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn slots(&self) -> usize {
        self.slots
    }
}

/// A linear layer without bias over a pass's stacked rows, its weight `[out, in]` (the
/// checkpoint's layout). On the CPU, with more than one row, it computes `W · xᵀ` and
/// transposes back: candle's gemm then walks the weight in its own order instead of packing
/// it per call, 30% faster at 32 rows here (a row at a time it is the same).
pub struct Dense {
    pub weight: Tensor,
}

impl Dense {
    /// Several layers that read the same input as one (QKV, gate and up): their weights
    /// stacked, their outputs side by side in that order.
    pub fn fused(weights: &[Tensor]) -> candle_core::Result<Dense> {
        Ok(Dense { weight: Tensor::cat(weights, 0)?.contiguous()? })
    }

    /// `x` `[rows, in]` to `[rows, out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // On the CPU, a few rows (a decode step) go faster as W·xᵀ (the weight streamed once
        // as the left operand), many rows (a prefill, an embedding batch) as x·Wᵀ directly.
        let rows = x.dim(0)?;
        if rows > 1 && rows <= 64 && x.device().is_cpu() {
            self.forward_t(x)?.t()?.contiguous()
        } else {
            x.matmul(&self.weight.t()?)
        }
    }

    /// `x` `[rows, in]` to `[out, rows]` (the transposed output, contiguous).
    pub fn forward_t(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.weight.matmul(&x.t()?)
    }

    /// `xt` `[in, rows]` (a transposed input) to `[out, rows]`.
    pub fn forward_tt(&self, xt: &Tensor) -> candle_core::Result<Tensor> {
        self.weight.matmul(xt)
    }
}

/// The layout of one forward pass, computed once and used by every layer.
pub struct StepPlan {
    /// Rows (tokens) in the pass.
    pub rows: usize,
    decode: Option<DecodePlan>,
    prefills: Vec<PrefillPlan>,
    /// For each row, its row in `cat(decode output, prefill outputs)`.
    gather: Option<Tensor>,
    /// The rows whose logits are wanted, in sequence order, and which sequence each is.
    pub logit_rows: Tensor,
    pub logit_seqs: Vec<usize>,
}

struct DecodePlan {
    /// Slots `0..slots` take part (some only as padding: those not decoding this pass).
    slots: usize,
    /// For each slot, the row of its token (row 0 for padding).
    q_index: Tensor,
    /// RoPE tables at each slot's position, `[slots, 1, head_dim / 2]`.
    cos: Tensor,
    sin: Tensor,
    /// Each slot's position, as scatter indices `[slots, kv_heads, 1, head_dim]` (u32::MAX:
    /// padding, not written).
    scatter: Tensor,
    /// Positions attended to: the longest decoding sequence's length after this token.
    len: usize,
    /// `[slots, 1, 1, len]`: 0 where a slot may attend, -inf elsewhere.
    mask: Tensor,
    /// Each slot's length after this token (0: padding).
    lens: Vec<usize>,
}

struct PrefillPlan {
    slot: usize,
    pos: usize,
    n: usize,
    row: usize,
    /// `[groups * n, pos + n]` causal mask (none for one token).
    mask: Option<Tensor>,
}

/// The attention of one family's layers: its head layout and RoPE tables.
pub struct Attention {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// `[context, head_dim / 2]`, in the weights' dtype.
    pub cos: Tensor,
    pub sin: Tensor,
    pub dtype: DType,
    pub device: Device,
}

impl Attention {
    /// Checks `seqs` against the cache and lays the pass out.
    pub fn plan(&self, cache: &KvCache, seqs: &[StepSeq]) -> Result<StepPlan, ModelError> {
        let invalid = |m: String| ModelError::Runtime(m);
        let mut rows = 0;
        let (mut decode_slots, mut prefills) = (Vec::new(), Vec::new());
        for s in seqs {
            if s.ids.is_empty() {
                return Err(invalid("a sequence brought no ids to the pass".into()));
            }
            if s.slot >= cache.slots || s.pos + s.ids.len() > cache.capacity {
                return Err(invalid(format!(
                    "slot {} at {} + {} is outside the cache ({} slots of {})",
                    s.slot,
                    s.pos,
                    s.ids.len(),
                    cache.slots,
                    cache.capacity
                )));
            }
            if s.ids.len() == 1 {
                decode_slots.push((s.slot, s.pos, rows));
            } else {
                prefills.push((s.slot, s.pos, s.ids.len(), rows));
            }
            rows += s.ids.len();
        }
        let mut seen = vec![false; cache.slots];
        for s in seqs {
            if std::mem::replace(&mut seen[s.slot], true) {
                return Err(invalid(format!("slot {} appears twice in one pass", s.slot)));
            }
        }
        let slots = decode_slots.iter().map(|d| d.0 + 1).max().unwrap_or(0);
        let decode =
            if decode_slots.is_empty() { None } else { Some(self.decode_plan(cache, slots, &decode_slots)?) };
        // Row r of the pass is row gather[r] of cat(decode output [slots rows], prefills).
        let mut gather = vec![0u32; rows];
        for &(slot, _, row) in &decode_slots {
            gather[row] = slot as u32;
        }
        let mut next = slots;
        let mut prefill_plans = Vec::with_capacity(prefills.len());
        for (slot, pos, n, row) in prefills {
            for i in 0..n {
                gather[row + i] = (next + i) as u32;
            }
            next += n;
            prefill_plans.push(PrefillPlan { slot, pos, n, row, mask: self.causal_mask(pos, n)? });
        }
        // Prefills alone are already in row order.
        let gather = if decode_slots.is_empty() { None } else { Some(Tensor::new(gather, &self.device)?) };
        let mut logit_rows = Vec::new();
        let mut logit_seqs = Vec::new();
        let mut row = 0;
        for (i, s) in seqs.iter().enumerate() {
            row += s.ids.len();
            if s.logits {
                logit_rows.push((row - 1) as u32);
                logit_seqs.push(i);
            }
        }
        Ok(StepPlan {
            rows,
            decode,
            prefills: prefill_plans,
            gather,
            logit_rows: Tensor::new(logit_rows, &self.device)?,
            logit_seqs,
        })
    }

    fn decode_plan(
        &self,
        cache: &KvCache,
        slots: usize,
        decoding: &[(usize, usize, usize)],
    ) -> Result<DecodePlan, ModelError> {
        let (kvh, d) = (self.kv_heads, self.head_dim);
        let mut q_index = vec![0u32; slots];
        let mut positions = vec![0u32; slots];
        let mut lens = vec![0usize; slots];
        let mut scatter = vec![u32::MAX; slots];
        for &(slot, pos, row) in decoding {
            q_index[slot] = row as u32;
            positions[slot] = pos as u32;
            lens[slot] = pos + 1;
            scatter[slot] = pos as u32;
        }
        let len = decoding.iter().map(|&(_, pos, _)| pos + 1).max().unwrap_or(1);
        debug_assert!(len <= cache.capacity);
        // A padding slot attends to its first position only (anything finite: its output is
        // dropped).
        let mask: Vec<f32> = lens
            .iter()
            .flat_map(|&l| (0..len).map(move |j| if j < l.max(1) { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let scatter: Vec<u32> = scatter.iter().flat_map(|&p| std::iter::repeat_n(p, kvh * d)).collect();
        let positions = Tensor::new(positions, &self.device)?;
        let table = |t: &Tensor| -> candle_core::Result<Tensor> {
            t.index_select(&positions, 0)?.reshape((slots, 1, d / 2))?.contiguous()
        };
        Ok(DecodePlan {
            slots,
            q_index: Tensor::new(q_index, &self.device)?,
            cos: table(&self.cos)?,
            sin: table(&self.sin)?,
            scatter: Tensor::from_vec(scatter, (slots, kvh, 1, d), &self.device)?,
            len,
            mask: Tensor::from_vec(mask, (slots, 1, 1, len), &self.device)?,
            lens,
        })
    }

    /// The causal mask of `n` queries at `pos..pos + n`, one row per (query group, query).
    fn causal_mask(&self, pos: usize, n: usize) -> Result<Option<Tensor>, ModelError> {
        if n == 1 {
            return Ok(None);
        }
        let groups = self.heads / self.kv_heads;
        let total = pos + n;
        let mask: Vec<f32> = (0..groups)
            .flat_map(|_| 0..n)
            .flat_map(|i| (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        Ok(Some(Tensor::from_vec(mask, (groups * n, total), &self.device)?))
    }

    /// Attention of one layer: `q`, `k`, `v` are the pass's rows `[rows, heads * head_dim]`
    /// (`kv_heads` for k and v) before RoPE; writes the new keys and values into `cache`'s
    /// layer `layer` and returns `[rows, heads * head_dim]`.
    pub fn forward(
        &self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        plan: &StepPlan,
        cache: &KvCache,
    ) -> candle_core::Result<Tensor> {
        let (h, kvh, d) = (self.heads, self.kv_heads, self.head_dim);
        let groups = h / kvh;
        let scale = 1.0 / (d as f64).sqrt();
        let (ck, cv) = &cache.layers[layer];
        let mut outs = Vec::with_capacity(1 + plan.prefills.len());
        if let Some(p) = &plan.decode {
            let s = p.slots;
            let rope = |t: &Tensor, heads: usize| -> candle_core::Result<Tensor> {
                let t = t.index_select(&p.q_index, 0)?.reshape((s, heads, 1, d))?;
                candle_nn::rotary_emb::rope(&t, &p.cos, &p.sin)
            };
            let (qd, kd) = (rope(q, h)?, rope(k, kvh)?);
            let vd = v.index_select(&p.q_index, 0)?.reshape((s, kvh, 1, d))?;
            ck.narrow(0, 0, s)?.scatter_set(&p.scatter, &kd, 2)?;
            cv.narrow(0, 0, s)?.scatter_set(&p.scatter, &vd, 2)?;
            if self.device.is_cpu() && self.dtype == DType::F32 {
                let qg = qd.reshape((s, kvh, groups, d))?.contiguous()?;
                outs.push(cpu_decode_attention(&qg, ck, cv, &p.lens, scale as f32)?);
            } else {
                let keys = ck.narrow(0, 0, s)?.narrow(2, 0, p.len)?.to_dtype(DType::F32)?;
                let values = cv.narrow(0, 0, s)?.narrow(2, 0, p.len)?.to_dtype(DType::F32)?;
                let qg = qd.reshape((s, kvh, groups, d))?.to_dtype(DType::F32)?;
                let att = (qg.matmul(&keys.t()?)? * scale)?.broadcast_add(&p.mask)?;
                let att = candle_nn::ops::softmax_last_dim(&att)?;
                outs.push(att.matmul(&values)?.to_dtype(self.dtype)?.reshape((s, h * d))?);
            }
        }
        for p in &plan.prefills {
            let (n, total) = (p.n, p.pos + p.n);
            let take = |t: &Tensor, heads: usize| -> candle_core::Result<Tensor> {
                t.narrow(0, p.row, n)?.reshape((1, n, heads, d))?.transpose(1, 2)?.contiguous()
            };
            let (cos, sin) = (self.cos.narrow(0, p.pos, n)?, self.sin.narrow(0, p.pos, n)?);
            let qs = candle_nn::rotary_emb::rope(&take(q, h)?, &cos, &sin)?;
            let ks = candle_nn::rotary_emb::rope(&take(k, kvh)?, &cos, &sin)?;
            let vs = take(v, kvh)?;
            ck.narrow(0, p.slot, 1)?.slice_set(&ks, 2, p.pos)?;
            cv.narrow(0, p.slot, 1)?.slice_set(&vs, 2, p.pos)?;
            let keys = ck.narrow(0, p.slot, 1)?.narrow(2, 0, total)?.to_dtype(DType::F32)?;
            let values = cv.narrow(0, p.slot, 1)?.narrow(2, 0, total)?.to_dtype(DType::F32)?;
            let qg = qs.reshape((1, kvh, groups * n, d))?.to_dtype(DType::F32)?;
            let mut att = (qg.matmul(&keys.t()?)? * scale)?;
            if let Some(mask) = &p.mask {
                att = att.broadcast_add(mask)?;
            }
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let y = att.matmul(&values)?.to_dtype(self.dtype)?; // [1, kvh, groups * n, d]
            outs.push(y.reshape((1, h, n, d))?.transpose(1, 2)?.reshape((n, h * d))?);
        }
        let all = if outs.len() == 1 { outs.pop().expect("one") } else { Tensor::cat(&outs, 0)? };
        match &plan.gather {
            Some(g) => all.index_select(g, 0),
            None => Ok(all),
        }
    }
}

/// Decode attention on the CPU in f32, straight over the cache's memory: for each slot and
/// KV head, the query heads sharing it score the positions the slot holds, take the
/// softmax, and sum the values. `q` is `[slots, kv_heads, groups, head_dim]`; the caches
/// are whole (`[allocated slots, kv_heads, capacity, head_dim]`); `lens[s]` positions of
/// slot `s` count (0: padding, left zero). Returns `[slots, heads * head_dim]`.
///
/// It replaces the four batched candle ops of the general path, whose many small per-head
/// matmuls each paid a round trip through the thread pool: most of a decode step's time at
/// 32 sequences on two cores.
fn cpu_decode_attention(
    q: &Tensor,
    ck: &Tensor,
    cv: &Tensor,
    lens: &[usize],
    scale: f32,
) -> candle_core::Result<Tensor> {
    use rayon::prelude::*;
    let (slots, kvh, groups, d) = q.dims4()?;
    let cap = ck.dim(2)?;
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = ck.storage_and_layout();
    let (vs, vl) = cv.storage_and_layout();
    let (qd, kd, vd) = (cpu_f32(&qs, ql)?, cpu_f32(&ks, kl)?, cpu_f32(&vs, vl)?);
    let mut out = vec![0f32; slots * kvh * groups * d];
    out.par_chunks_mut(groups * d).enumerate().for_each(|(i, o)| {
        let (slot, head) = (i / kvh, i % kvh);
        let len = lens[slot];
        if len == 0 {
            return;
        }
        let base = (slot * kvh + head) * cap * d;
        let (keys, values) = (&kd[base..base + len * d], &vd[base..base + len * d]);
        let mut scores = vec![0f32; len];
        for g in 0..groups {
            let qv = &qd[(i * groups + g) * d..][..d];
            for (j, score) in scores.iter_mut().enumerate() {
                *score = dot(qv, &keys[j * d..(j + 1) * d]) * scale;
            }
            softmax_in_place(&mut scores);
            let og = &mut o[g * d..(g + 1) * d];
            for (j, &w) in scores.iter().enumerate() {
                for (acc, &v) in og.iter_mut().zip(&values[j * d..(j + 1) * d]) {
                    *acc += w * v;
                }
            }
        }
    });
    drop((qs, ks, vs));
    // [slots, kv_heads, groups, d] is [slots, heads * d] with head = kv_head * groups + g.
    Tensor::from_vec(out, (slots, kvh * groups * d), q.device())
}

/// The f32 elements a contiguous CPU tensor's layout covers.
pub(crate) fn cpu_f32<'a>(s: &'a candle_core::Storage, l: &candle_core::Layout) -> candle_core::Result<&'a [f32]> {
    let (start, end) = l.contiguous_offsets().ok_or(candle_core::Error::RequiresContiguous { op: "attention" })?;
    match s {
        candle_core::Storage::Cpu(c) => Ok(&c.as_slice::<f32>()?[start..end]),
        _ => candle_core::bail!("cpu_decode_attention needs CPU tensors"),
    }
}

/// `scores` replaced by their softmax.
pub(crate) fn softmax_in_place(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    for s in scores.iter_mut() {
        *s /= sum;
    }
}

/// A dot product in eight lanes (so the compiler vectorizes it).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// RoPE cos/sin tables `[context, head_dim / 2]` from the inverse frequencies, in `dtype`.
pub fn rope_tables(
    inv_freq: &[f32],
    context: usize,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let n = inv_freq.len();
    let freqs = Tensor::new(inv_freq, device)?.reshape((1, n))?;
    let positions = Tensor::arange(0, context as u32, device)?.to_dtype(DType::F32)?.reshape((context, 1))?;
    let angles = positions.matmul(&freqs)?;
    Ok((angles.cos()?.to_dtype(dtype)?, angles.sin()?.to_dtype(dtype)?))
}
