//! The batched Llama forward pass against candle-transformers' own batch-1 Llama: several
//! sequences of different lengths in one pass (prefills and decodes mixed, sequences
//! joining mid-way, one moved to another slot when a neighbour ends) give each the logits of
//! its own full recomputation (to 1e-4), and a sequence's greedy tokens are the same alone
//! as beside others.

use candle_core::{DType, Device};
use ferry_executor::models::Placement;
use ferry_executor::models::batch::{CausalLm, KvCache, StepSeq};
use ferry_executor::models::decoder::Decoder as Llama;
use ferry_executor::models::llama::{self, CandleReference};
use ferry_executor::testing::ScratchDir;
use ferry_executor::tiny::{TinyConfig, write_llama};

fn cpu() -> Placement {
    Placement { device: Device::Cpu, dtype: DType::F32 }
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::MIN), |best, (i, &x)| if x > best.1 { (i, x) } else { best }).0 as u32
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// One sequence being decoded greedily.
struct Run {
    prompt: Vec<u32>,
    slot: usize,
    pos: usize,
    ids: Vec<u32>,
    logits: Vec<Vec<f32>>,
}

/// Greedy decoding of `prompts` for `steps` tokens, all in one batch per pass; sequence `i`
/// joins at pass `joins_at[i]` (its whole prompt sharing that pass with the others' decode
/// steps). With `evict`: at that pass sequence 0 ends and the last sequence moves into its
/// slot, as the engine compacts them.
fn greedy(lm: &Llama, prompts: &[Vec<u32>], joins_at: &[usize], steps: usize, evict: Option<usize>) -> Vec<Run> {
    let mut cache: KvCache = lm.new_cache();
    let longest = prompts.iter().map(Vec::len).max().unwrap() + steps;
    cache.reserve(prompts.len(), longest).unwrap();
    let mut runs: Vec<Run> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Run { prompt: p.clone(), slot: i, pos: 0, ids: vec![], logits: vec![] })
        .collect();
    let mut ended = vec![false; runs.len()];
    for pass in 0..joins_at.iter().max().unwrap() + steps + 1 {
        if evict == Some(pass) {
            ended[0] = true;
            let last = runs.len() - 1;
            cache.move_slot(runs[last].slot, runs[0].slot, runs[last].pos).unwrap();
            runs[last].slot = runs[0].slot;
        }
        let active: Vec<usize> =
            (0..runs.len()).filter(|&i| !ended[i] && pass >= joins_at[i] && runs[i].ids.len() < steps).collect();
        if active.is_empty() {
            continue;
        }
        let inputs: Vec<Vec<u32>> = active
            .iter()
            .map(|&i| match runs[i].ids.last() {
                Some(&id) => vec![id],
                None => runs[i].prompt.clone(),
            })
            .collect();
        let seqs: Vec<StepSeq> = active
            .iter()
            .zip(&inputs)
            .map(|(&i, ids)| StepSeq { slot: runs[i].slot, pos: runs[i].pos, ids, logits: true })
            .collect();
        let logits = lm.step(&mut cache, &seqs).unwrap();
        for ((&i, ids), l) in active.iter().zip(&inputs).zip(logits) {
            let l = l.expect("logits asked for");
            runs[i].pos += ids.len();
            runs[i].ids.push(argmax(&l));
            runs[i].logits.push(l);
        }
    }
    runs
}

fn check(reference: &CandleReference, runs: &[Run], what: &str) {
    for (i, run) in runs.iter().enumerate() {
        for (step, logits) in run.logits.iter().enumerate() {
            let mut seq = run.prompt.clone();
            seq.extend(&run.ids[..step]);
            let full = reference.next_token_logits(&seq).unwrap();
            let d = max_abs_diff(logits, &full);
            assert!(d <= 1e-4, "{what}: sequence {i}, step {step}: logits differ by {d}");
            assert_eq!(run.ids[step], argmax(&full), "{what}: sequence {i}, step {step}");
        }
    }
}

fn prompts() -> Vec<Vec<u32>> {
    // Ids of the tiny tokenizer's words and characters; three lengths, one a single token.
    vec![vec![1, 120, 130, 140], vec![1, 150, 5, 6, 7, 8, 9, 10, 11, 160, 170], vec![1]]
}

#[test]
fn a_batch_gives_each_sequence_its_batch_one_logits_and_tokens() {
    let dir = ScratchDir::new("ferry-batch").unwrap();
    ferry_executor::tiny::write_tiny_llama(dir.path(), 17).unwrap();
    let reference = CandleReference::load(dir.path(), &cpu()).unwrap();
    let (lm, _) = llama::decoder(dir.path(), &cpu()).unwrap();
    let prompts = prompts();
    let steps = 6;
    for joins_at in [[0, 0, 0], [0, 1, 2], [2, 0, 1]] {
        let runs = greedy(&lm, &prompts, &joins_at, steps, None);
        check(&reference, &runs, &format!("joins {joins_at:?}"));
        for (i, run) in runs.iter().enumerate() {
            let alone = greedy(&lm, &prompts[i..=i], &[0], steps, None);
            assert_eq!(alone[0].ids, run.ids, "sequence {i} alone and in the batch (joins {joins_at:?})");
        }
    }
    // Sequence 0 ends after two passes; the last one, moved into its slot, goes on unchanged.
    let runs = greedy(&lm, &prompts, &[0, 0, 0], steps, Some(2));
    check(&reference, &runs, "after a slot move");
    assert_eq!(runs[2].ids, greedy(&lm, &prompts[2..=2], &[0], steps, None)[0].ids);
}

/// Grouped-query attention with more heads and a head size the vectorized dot product
/// splits unevenly (24 = 3 x 8, then 40 = 5 x 8), over a longer context.
#[test]
fn other_head_layouts_match_too() {
    for (heads, kv_heads, hidden) in [(4, 1, 96), (2, 2, 80)] {
        let dir = ScratchDir::new("ferry-batch-heads").unwrap();
        let cfg = TinyConfig {
            hidden_size: hidden,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            max_position_embeddings: 96,
        };
        write_llama(dir.path(), 5, cfg).unwrap();
        let reference = CandleReference::load(dir.path(), &cpu()).unwrap();
        let (lm, _) = llama::decoder(dir.path(), &cpu()).unwrap();
        let runs = greedy(&lm, &prompts(), &[0, 1, 0], 20, Some(3));
        check(&reference, &runs, &format!("{heads} heads / {kv_heads} kv heads"));
    }
}

#[test]
fn bad_passes_are_refused() {
    let dir = ScratchDir::new("ferry-batch-bad").unwrap();
    ferry_executor::tiny::write_tiny_llama(dir.path(), 3).unwrap();
    let (lm, _) = llama::decoder(dir.path(), &cpu()).unwrap();
    let mut cache = lm.new_cache();
    cache.reserve(2, 16).unwrap();
    let seq = |slot, pos, ids| StepSeq { slot, pos, ids, logits: true };
    assert!(lm.step(&mut cache, &[seq(0, 0, &[])]).is_err(), "no tokens");
    assert!(lm.step(&mut cache, &[seq(2, 0, &[5])]).is_err(), "a slot not reserved");
    assert!(lm.step(&mut cache, &[seq(0, 16, &[5])]).is_err(), "past the reserved length");
    assert!(lm.step(&mut cache, &[seq(0, 0, &[5]), seq(0, 1, &[6])]).is_err(), "one slot twice");
    assert!(lm.step(&mut cache, &[seq(0, 0, &[100_000])]).is_err(), "outside the vocabulary");
    assert!(cache.reserve(1, ferry_executor::tiny::TINY_CONTEXT + 1).is_err(), "past the context");
    // Still usable after the refusals.
    assert!(lm.step(&mut cache, &[seq(0, 0, &[1, 5]), seq(1, 0, &[7])]).unwrap().iter().all(Option::is_some));
}
