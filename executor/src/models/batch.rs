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

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

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

/// A linear layer over a pass's stacked rows, its weight `[out, in]` (the checkpoint's
/// layout), with an optional bias `[out]`: full precision, or quantized (a GGUF model's,
/// through candle's quantized matmuls). On the CPU, with more than one row, a full weight
/// computes `W · xᵀ` and transposes back: candle's gemm then walks the weight in its own
/// order instead of packing it per call, 30% faster at 32 rows here (a row at a time it is
/// the same).
pub struct Dense {
    weight: Weight,
    bias: Option<Tensor>,
}

enum Weight {
    Full(Tensor),
    /// Parts stacked on the output (one matrix, unless its layers are of different types).
    Quantized(Vec<QMatMul>),
}

impl Dense {
    pub fn new(weight: Tensor) -> Dense {
        Dense { weight: Weight::Full(weight), bias: None }
    }

    pub fn with_bias(weight: Tensor, bias: Option<Tensor>) -> Dense {
        Dense { weight: Weight::Full(weight), bias }
    }

    /// Quantized parts, their outputs side by side in that order.
    pub fn quantized(parts: Vec<QMatMul>, bias: Option<Tensor>) -> Dense {
        Dense { weight: Weight::Quantized(parts), bias }
    }

    /// Several layers that read the same input as one (QKV, gate and up): their weights
    /// (and biases, when they have them) stacked, their outputs side by side in that order.
    pub fn fused(weights: &[Tensor], biases: Option<&[Tensor]>) -> candle_core::Result<Dense> {
        let bias = match biases {
            Some(b) => Some(Tensor::cat(b, 0)?.contiguous()?),
            None => None,
        };
        Dense::fused_full(weights, bias)
    }

    /// [`Dense::fused`] with the bias already stacked.
    pub fn fused_full(weights: &[Tensor], bias: Option<Tensor>) -> candle_core::Result<Dense> {
        let weight =
            if weights.len() == 1 { weights[0].contiguous()? } else { Tensor::cat(weights, 0)?.contiguous()? };
        Ok(Dense { weight: Weight::Full(weight), bias })
    }

    /// `x` `[rows, in]` to `[rows, out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = match &self.weight {
            // On the CPU, a few rows (a decode step) go faster as W·xᵀ (the weight streamed
            // once as the left operand), many rows (a prefill, an embedding batch) as x·Wᵀ.
            Weight::Full(w) => {
                let rows = x.dim(0)?;
                if rows > 1 && rows <= 64 && x.device().is_cpu() {
                    w.matmul(&x.t()?)?.t()?.contiguous()?
                } else {
                    x.matmul(&w.t()?)?
                }
            }
            Weight::Quantized(parts) => {
                let x = x.contiguous()?;
                let outs = parts.iter().map(|p| p.forward(&x)).collect::<candle_core::Result<Vec<_>>>()?;
                if outs.len() == 1 { outs.into_iter().next().expect("one") } else { Tensor::cat(&outs, 1)? }
            }
        };
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// `x` `[rows, in]` to `[out, rows]` (the transposed output, contiguous).
    pub fn forward_t(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.weight {
            Weight::Full(_) => self.forward_tt(&x.t()?),
            Weight::Quantized(_) => self.forward(x)?.t()?.contiguous(),
        }
    }

    /// `xt` `[in, rows]` (a transposed input) to `[out, rows]`.
    pub fn forward_tt(&self, xt: &Tensor) -> candle_core::Result<Tensor> {
        let w = match &self.weight {
            Weight::Full(w) => w,
            Weight::Quantized(_) => return self.forward(&xt.t()?)?.t()?.contiguous(),
        };
        let y = w.matmul(xt)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.unsqueeze(1)?),
            None => Ok(y),
        }
    }
}

/// The token embedding table `[vocab, hidden]`: full precision, or quantized (rows
/// dequantized as they are looked up).
pub enum Embed {
    Full(Tensor),
    Quantized(Arc<QTensor>),
}

impl Embed {
    /// The rows of `ids`, `[ids, hidden]`.
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Embed::Full(w) => w.index_select(ids, 0),
            Embed::Quantized(q) => q.embedding(ids),
        }
    }

    /// The table as the LM head of a model with tied embeddings.
    pub fn as_lm_head(&self) -> candle_core::Result<Dense> {
        Ok(match self {
            Embed::Full(w) => Dense::new(w.clone()),
            Embed::Quantized(q) => Dense::quantized(vec![QMatMul::from_arc(q.clone())?], None),
        })
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
    /// Per RoPE kind ([`Attention::ropes`]): cos and sin at each slot's position,
    /// `[slots, 1, rotary_dim / 2]`.
    ropes: Vec<(Tensor, Tensor)>,
    /// Each slot's position, as scatter indices `[slots, kv_heads, 1, head_dim]` (u32::MAX:
    /// padding, not written).
    scatter: Tensor,
    /// Positions attended to: the longest decoding sequence's length after this token.
    len: usize,
    /// Per window of the model's layers: `[slots, 1, 1, len]`, 0 where a slot may attend,
    /// -inf elsewhere (the general path; the CPU kernel reads `lens`).
    masks: Vec<(Option<usize>, Tensor)>,
    /// Each slot's length after this token (0: padding).
    lens: Vec<usize>,
}

struct PrefillPlan {
    slot: usize,
    pos: usize,
    n: usize,
    row: usize,
    /// Per RoPE kind: cos and sin at `pos..pos + n`.
    ropes: Vec<(Tensor, Tensor)>,
    /// Per window of the model's layers: the `[groups * n, pos + n]` causal mask.
    masks: Vec<(Option<usize>, Tensor)>,
}

/// What one layer's attention looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerAttention {
    /// Sliding window: a query attends to itself and the `window - 1` positions before it
    /// (transformers' `kv_idx > q_idx - sliding_window`); `None`: every earlier position.
    pub window: Option<usize>,
    /// Which of [`Attention::ropes`] it rotates with.
    pub rope: usize,
}

/// RoPE's inverse frequencies for one kind of layer, as a family's config gives them.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeFreqs {
    /// `rotary_dim / 2` inverse frequencies.
    pub inv_freq: Vec<f32>,
    /// LongRoPE (Phi-3): the long factors' frequencies, used by a pass of a sequence that
    /// reaches past `original` positions (as transformers switches on the sequence length).
    pub long: Option<(Vec<f32>, usize)>,
    /// Scales cos and sin (LongRoPE's attention factor; 1 otherwise).
    pub attention_factor: f32,
}

/// cos/sin tables of one [`RopeFreqs`]: `[context, rotary_dim / 2]`, followed by the long
/// factors' `context` rows when there are some.
pub struct Rope {
    cos: Tensor,
    sin: Tensor,
    context: usize,
    long_after: Option<usize>,
}

impl Rope {
    pub fn new(freqs: &RopeFreqs, context: usize, dtype: DType, device: &Device) -> candle_core::Result<Rope> {
        let (mut cos, mut sin) = rope_tables(&freqs.inv_freq, context, freqs.attention_factor, dtype, device)?;
        if let Some((long, _)) = &freqs.long {
            let (lc, ls) = rope_tables(long, context, freqs.attention_factor, dtype, device)?;
            (cos, sin) = (Tensor::cat(&[&cos, &lc], 0)?, Tensor::cat(&[&sin, &ls], 0)?);
        }
        Ok(Rope { cos, sin, context, long_after: freqs.long.as_ref().map(|(_, o)| *o) })
    }

    /// The first table row for a pass whose sequence ends at `end` positions.
    fn offset(&self, end: usize) -> usize {
        match self.long_after {
            Some(original) if end > original => self.context,
            _ => 0,
        }
    }
}

/// The attention of one family's layers: head layout, RoPE, scaling, windows.
pub struct Attention {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// The leading dimensions of each head RoPE rotates (partial rotary: fewer than
    /// `head_dim`; the rest pass through).
    pub rotary_dim: usize,
    pub ropes: Vec<Rope>,
    /// Per layer.
    pub layers: Vec<LayerAttention>,
    /// Multiplies the scores (`1 / sqrt(head_dim)` in most families).
    pub scale: f32,
    /// Gemma 2: scores become `cap * tanh(scores / cap)` before the mask.
    pub softcap: Option<f32>,
    pub dtype: DType,
    pub device: Device,
}

impl Attention {
    /// The distinct windows of the layers.
    fn windows(&self) -> Vec<Option<usize>> {
        let mut w: Vec<Option<usize>> = self.layers.iter().map(|l| l.window).collect();
        w.sort_unstable();
        w.dedup();
        w
    }

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
            let ropes = self
                .ropes
                .iter()
                .map(|r| {
                    let at = r.offset(pos + n) + pos;
                    Ok((r.cos.narrow(0, at, n)?, r.sin.narrow(0, at, n)?))
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let masks = self
                .windows()
                .into_iter()
                .map(|w| Ok((w, self.causal_mask(pos, n, w)?)))
                .collect::<candle_core::Result<_>>()?;
            prefill_plans.push(PrefillPlan { slot, pos, n, row, ropes, masks });
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
        let mut lens = vec![0usize; slots];
        let mut scatter = vec![u32::MAX; slots];
        for &(slot, pos, row) in decoding {
            q_index[slot] = row as u32;
            lens[slot] = pos + 1;
            scatter[slot] = pos as u32;
        }
        let len = decoding.iter().map(|&(_, pos, _)| pos + 1).max().unwrap_or(1);
        debug_assert!(len <= cache.capacity);
        // A padding slot attends to its first position only (anything finite: its output is
        // dropped).
        let mask = |window: Option<usize>| -> candle_core::Result<Tensor> {
            let m: Vec<f32> = lens
                .iter()
                .flat_map(|&l| {
                    let l = l.max(1);
                    let start = window.map_or(0, |w| l.saturating_sub(w));
                    (0..len).map(move |j| if j >= start && j < l { 0.0 } else { f32::NEG_INFINITY })
                })
                .collect();
            Tensor::from_vec(m, (slots, 1, 1, len), &self.device)
        };
        let masks = self.windows().into_iter().map(|w| Ok((w, mask(w)?))).collect::<candle_core::Result<_>>()?;
        let scatter: Vec<u32> = scatter.iter().flat_map(|&p| std::iter::repeat_n(p, kvh * d)).collect();
        let half = self.rotary_dim / 2;
        let ropes = self
            .ropes
            .iter()
            .map(|r| {
                let rows: Vec<u32> = lens.iter().map(|&l| (r.offset(l) + l.saturating_sub(1)) as u32).collect();
                let rows = Tensor::new(rows, &self.device)?;
                let table = |t: &Tensor| t.index_select(&rows, 0)?.reshape((slots, 1, half))?.contiguous();
                Ok((table(&r.cos)?, table(&r.sin)?))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(DecodePlan {
            slots,
            q_index: Tensor::new(q_index, &self.device)?,
            ropes,
            scatter: Tensor::from_vec(scatter, (slots, kvh, 1, d), &self.device)?,
            len,
            masks,
            lens,
        })
    }

    /// The causal mask of `n` queries at `pos..pos + n`, one row per (query group, query),
    /// within `window` when there is one.
    fn causal_mask(&self, pos: usize, n: usize, window: Option<usize>) -> candle_core::Result<Tensor> {
        let groups = self.heads / self.kv_heads;
        let total = pos + n;
        let mask: Vec<f32> = (0..groups)
            .flat_map(|_| 0..n)
            .flat_map(|i| {
                let q = pos + i;
                (0..total).map(move |j| {
                    let inside = j <= q && window.is_none_or(|w| j + w > q);
                    if inside { 0.0 } else { f32::NEG_INFINITY }
                })
            })
            .collect();
        Tensor::from_vec(mask, (groups * n, total), &self.device)
    }

    /// RoPE on `t` `[b, heads, n, head_dim]` with tables `[n or b, .., rotary_dim / 2]`: the
    /// first `rotary_dim` dimensions of each head rotated, the rest as they are.
    fn rotate(&self, t: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        if self.rotary_dim == self.head_dim {
            return candle_nn::rotary_emb::rope(&t.contiguous()?, cos, sin);
        }
        let r = self.rotary_dim;
        let rotated = candle_nn::rotary_emb::rope(&t.narrow(3, 0, r)?.contiguous()?, cos, sin)?;
        Tensor::cat(&[&rotated, &t.narrow(3, r, self.head_dim - r)?], 3)?.contiguous()
    }

    /// Scores `[.., queries, keys]` scaled, soft-capped when the family caps them.
    fn scores(&self, q: &Tensor, keys: &Tensor) -> candle_core::Result<Tensor> {
        let att = (q.matmul(&keys.t()?)? * self.scale as f64)?;
        match self.softcap {
            Some(cap) => (att / cap as f64)?.tanh()? * cap as f64,
            None => Ok(att),
        }
    }

    /// Attention of layer `layer`: `q`, `k`, `v` are the pass's rows `[rows, heads *
    /// head_dim]` (`kv_heads` for k and v) before RoPE; writes the new keys and values into
    /// `cache`'s layer and returns `[rows, heads * head_dim]`.
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
        let this = self.layers[layer];
        let pick = |masks: &[(Option<usize>, Tensor)]| -> Tensor {
            masks.iter().find(|(w, _)| *w == this.window).map(|(_, m)| m.clone()).expect("a mask for every window")
        };
        let (ck, cv) = &cache.layers[layer];
        let mut outs = Vec::with_capacity(1 + plan.prefills.len());
        if let Some(p) = &plan.decode {
            let s = p.slots;
            let (cos, sin) = &p.ropes[this.rope];
            let rope = |t: &Tensor, heads: usize| -> candle_core::Result<Tensor> {
                self.rotate(&t.index_select(&p.q_index, 0)?.reshape((s, heads, 1, d))?, cos, sin)
            };
            let (qd, kd) = (rope(q, h)?, rope(k, kvh)?);
            let vd = v.index_select(&p.q_index, 0)?.reshape((s, kvh, 1, d))?;
            ck.narrow(0, 0, s)?.scatter_set(&p.scatter, &kd, 2)?;
            cv.narrow(0, 0, s)?.scatter_set(&p.scatter, &vd, 2)?;
            if self.device.is_cpu() && self.dtype == DType::F32 {
                let qg = qd.reshape((s, kvh, groups, d))?.contiguous()?;
                let shape = DecodeShape { scale: self.scale, softcap: self.softcap, window: this.window };
                outs.push(cpu_decode_attention(&qg, ck, cv, &p.lens, shape)?);
            } else {
                let keys = ck.narrow(0, 0, s)?.narrow(2, 0, p.len)?.to_dtype(DType::F32)?;
                let values = cv.narrow(0, 0, s)?.narrow(2, 0, p.len)?.to_dtype(DType::F32)?;
                let qg = qd.reshape((s, kvh, groups, d))?.to_dtype(DType::F32)?;
                let att = self.scores(&qg, &keys)?.broadcast_add(&pick(&p.masks))?;
                let att = candle_nn::ops::softmax_last_dim(&att)?;
                outs.push(att.matmul(&values)?.to_dtype(self.dtype)?.reshape((s, h * d))?);
            }
        }
        for p in &plan.prefills {
            let (n, total) = (p.n, p.pos + p.n);
            let take = |t: &Tensor, heads: usize| -> candle_core::Result<Tensor> {
                t.narrow(0, p.row, n)?.reshape((1, n, heads, d))?.transpose(1, 2)?.contiguous()
            };
            let (cos, sin) = &p.ropes[this.rope];
            let qs = self.rotate(&take(q, h)?, cos, sin)?;
            let ks = self.rotate(&take(k, kvh)?, cos, sin)?;
            let vs = take(v, kvh)?;
            ck.narrow(0, p.slot, 1)?.slice_set(&ks, 2, p.pos)?;
            cv.narrow(0, p.slot, 1)?.slice_set(&vs, 2, p.pos)?;
            let keys = ck.narrow(0, p.slot, 1)?.narrow(2, 0, total)?.to_dtype(DType::F32)?;
            let values = cv.narrow(0, p.slot, 1)?.narrow(2, 0, total)?.to_dtype(DType::F32)?;
            let qg = qs.reshape((1, kvh, groups * n, d))?.to_dtype(DType::F32)?;
            let att = self.scores(&qg, &keys)?.broadcast_add(&pick(&p.masks))?;
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

/// How the CPU decode kernel scores: the scale, Gemma 2's soft cap, the layer's window.
#[derive(Debug, Clone, Copy)]
struct DecodeShape {
    scale: f32,
    softcap: Option<f32>,
    window: Option<usize>,
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
    shape: DecodeShape,
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
        // The positions the slot attends to: `start..len`.
        let start = shape.window.map_or(0, |w| len.saturating_sub(w));
        let base = (slot * kvh + head) * cap * d;
        let (keys, values) = (&kd[base + start * d..base + len * d], &vd[base + start * d..base + len * d]);
        let mut scores = vec![0f32; len - start];
        for g in 0..groups {
            let qv = &qd[(i * groups + g) * d..][..d];
            for (j, score) in scores.iter_mut().enumerate() {
                let s = dot(qv, &keys[j * d..(j + 1) * d]) * shape.scale;
                *score = match shape.softcap {
                    Some(cap) => cap * (s / cap).tanh(),
                    None => s,
                };
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

/// RoPE cos/sin tables `[context, inv_freq.len()]` from the inverse frequencies, times
/// `factor`, in `dtype`.
pub fn rope_tables(
    inv_freq: &[f32],
    context: usize,
    factor: f32,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let n = inv_freq.len();
    let freqs = Tensor::new(inv_freq, device)?.reshape((1, n))?;
    let positions = Tensor::arange(0, context as u32, device)?.to_dtype(DType::F32)?.reshape((context, 1))?;
    let angles = positions.matmul(&freqs)?;
    let scaled = |t: Tensor| if factor == 1.0 { Ok(t) } else { t * factor as f64 };
    Ok((scaled(angles.cos()?)?.to_dtype(dtype)?, scaled(angles.sin()?)?.to_dtype(dtype)?))
}
