//! The batched Llama forward pass against the batch-1 path: several sequences of different
//! lengths in one pass (prefills and decodes mixed) give each the logits of its own
//! full recomputation on candle's `Llama` (to 1e-4), and a sequence's greedy tokens are the
//! same alone as beside others.

use candle_core::{DType, Device};
use ferry_executor::models::Placement;
use ferry_executor::models::batch::BatchedLlama;
use ferry_executor::models::llama::LlamaModel;
use ferry_executor::testing::ScratchDir;

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

/// Greedy decoding of `prompts` for `steps` tokens, all in one batch per pass; a sequence
/// joins at pass `joins_at[i]` (its prefill sharing that pass with the others' decodes).
fn greedy(
    model: &BatchedLlama,
    prompts: &[Vec<u32>],
    joins_at: &[usize],
    steps: usize,
) -> Vec<(Vec<u32>, Vec<Vec<f32>>)> {
    let mut states: Vec<_> = prompts.iter().map(|_| model.new_sequence()).collect();
    let mut out: Vec<(Vec<u32>, Vec<Vec<f32>>)> = prompts.iter().map(|_| (vec![], vec![])).collect();
    let passes = joins_at.iter().max().unwrap() + steps;
    for pass in 0..passes {
        let active: Vec<usize> =
            (0..prompts.len()).filter(|&i| pass >= joins_at[i] && out[i].0.len() < steps).collect();
        let inputs: Vec<Vec<u32>> = active
            .iter()
            .map(|&i| match out[i].0.last() {
                Some(&id) => vec![id],
                None => prompts[i].clone(),
            })
            .collect();
        let mut batch: Vec<_> = Vec::new();
        let mut rest: &mut [_] = &mut states;
        let mut taken = 0;
        for (&i, ids) in active.iter().zip(&inputs) {
            let (_, tail) = rest.split_at_mut(i - taken);
            let (one, tail) = tail.split_first_mut().unwrap();
            batch.push((one, ids.as_slice()));
            rest = tail;
            taken = i + 1;
        }
        if batch.is_empty() {
            continue;
        }
        let logits = model.forward(&mut batch).unwrap();
        for (&i, l) in active.iter().zip(logits) {
            out[i].0.push(argmax(&l));
            out[i].1.push(l);
        }
    }
    out
}

#[test]
fn a_batch_gives_each_sequence_its_batch_one_logits_and_tokens() {
    let dir = ScratchDir::new("ferry-batch").unwrap();
    ferry_executor::tiny::write_tiny_llama(dir.path(), 17).unwrap();
    let reference = LlamaModel::load(dir.path(), &cpu()).unwrap();
    let batched = BatchedLlama::load(dir.path(), &cpu()).unwrap();
    let prompts: Vec<Vec<u32>> = ["the ferry", "once upon a time the river and the boat", "a"]
        .iter()
        .map(|p| reference.encode_prompt(p).unwrap())
        .collect();
    assert!(prompts.iter().map(Vec::len).collect::<std::collections::BTreeSet<_>>().len() == 3, "three lengths");
    let steps = 6;
    // All three together from the start; and the third joining at pass 2, its prefill beside
    // the others' decode steps.
    for joins_at in [[0, 0, 0], [0, 1, 2]] {
        let runs = greedy(&batched, &prompts, &joins_at, steps);
        for (i, (ids, logits)) in runs.iter().enumerate() {
            for step in 0..steps {
                let mut seq = prompts[i].clone();
                seq.extend(&ids[..step]);
                let full = reference.next_token_logits(&seq).unwrap();
                let d = max_abs_diff(&logits[step], &full);
                assert!(d <= 1e-4, "sequence {i}, step {step}, joins {joins_at:?}: logits differ by {d}");
                assert_eq!(ids[step], argmax(&full), "sequence {i}, step {step}");
            }
            // Alone, the same tokens.
            let alone = greedy(&batched, &prompts[i..=i], &[0], steps);
            assert_eq!(&alone[0].0, ids, "sequence {i} alone and in the batch");
        }
    }
    // The model's own batch-1 generation agrees too.
    let (ids, _) = reference.greedy_with_logits(&prompts[1], steps).unwrap();
    assert_eq!(greedy(&batched, &prompts[1..=1], &[0], steps)[0].0, ids);
}

#[test]
fn bad_batches_are_refused() {
    let dir = ScratchDir::new("ferry-batch-bad").unwrap();
    ferry_executor::tiny::write_tiny_llama(dir.path(), 3).unwrap();
    let model = BatchedLlama::load(dir.path(), &cpu()).unwrap();
    let mut seq = model.new_sequence();
    assert!(model.forward(&mut [(&mut seq, &[][..])]).is_err(), "no tokens");
    let long = vec![5u32; ferry_executor::tiny::TINY_CONTEXT + 1];
    assert!(model.forward(&mut [(&mut seq, &long[..])]).is_err(), "past the context");
    assert!(seq.is_empty(), "a refused pass changes nothing");
}
