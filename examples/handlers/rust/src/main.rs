//! An example Ferry handler in Rust, in worker mode (docs/HANDLERS.md): one long-lived
//! process that "loads a model" once (here a table of word weights built from a small corpus,
//! standing in for weights on a GPU), says it is ready, then serves job after job.
//!
//! Each request is one line on stdin, `{"id", "input": {"text", "top"?}, "deadline"}`; the
//! answer is lines carrying the same `id`: a `percentage` per quarter of the text read, the
//! `output` `{"keywords": [[word, score], ...], "words": n}`, then `done`. An input without
//! text is answered `failed` (not retryable: another attempt would fail the same way).
//!
//! Build it and serve it locally:
//!
//! ```text
//! cargo build --release -p ferry-example-handler
//! ferry dev --models-file catalog.json   # an entry {"task": "handler", "mode": "worker",
//!                                        #   "command": ["target/release/ferry-example-handler"]}
//! ```

use std::collections::HashMap;
use std::io::{BufRead, Write};

use serde_json::{Value, json};

/// The "model": how common each word is in ordinary text (common words score low).
struct Model {
    frequency: HashMap<String, f64>,
}

/// A few sentences of ordinary English: the corpus the word frequencies come from.
const CORPUS: &str = "the a an and or of to in on at for with by from is are was were be been it this that \
    these those as not but if then so than there their they we you he she his her our your its into over \
    about after before more most some any all each other such only also very can will would should could";

impl Model {
    fn load() -> Model {
        let mut frequency = HashMap::new();
        for word in CORPUS.split_whitespace() {
            *frequency.entry(word.to_string()).or_insert(0.0) += 1.0;
        }
        Model { frequency }
    }

    /// Each word's score: how often it appears, discounted by how common it is in general.
    fn keywords(&self, words: &[String], top: usize, mut progress: impl FnMut(usize)) -> Vec<(String, f64)> {
        let mut counts: HashMap<&str, f64> = HashMap::new();
        let quarter = words.len().div_ceil(4).max(1);
        for (i, word) in words.iter().enumerate() {
            *counts.entry(word).or_insert(0.0) += 1.0;
            if (i + 1) % quarter == 0 || i + 1 == words.len() {
                progress(i + 1);
            }
        }
        let mut scored: Vec<(String, f64)> = counts
            .into_iter()
            .map(|(w, n)| (w.to_string(), n / (1.0 + 10.0 * self.frequency.get(w).copied().unwrap_or(0.0))))
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        scored.truncate(top);
        scored
    }
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

fn main() {
    let model = Model::load();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut send = move |line: Value| {
        // A closed stdout means Ferry is gone: nothing left to answer.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            std::process::exit(0);
        }
    };
    send(json!({"type": "ready"}));
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let Ok(request) = serde_json::from_str::<Value>(&line) else {
            eprintln!("not a request: {line}");
            continue;
        };
        let id = request["id"].clone();
        let input = &request["input"];
        let Some(text) = input["text"].as_str().filter(|t| !t.trim().is_empty()) else {
            send(json!({"id": id, "type": "failed", "retryable": false, "message": "input.text: give some text"}));
            continue;
        };
        let top = input["top"].as_u64().unwrap_or(5) as usize;
        let words = words(text);
        let total = words.len();
        let keywords = model.keywords(&words, top, |read| {
            let percent = 100.0 * read as f64 / total as f64;
            send(json!({"id": id, "type": "percentage", "percent": percent, "message": format!("{read} words")}));
        });
        send(json!({"id": id, "type": "output", "output": {"keywords": keywords, "words": total}}));
        send(json!({"id": id, "type": "done"}));
    }
}
