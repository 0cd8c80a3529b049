//! A folder of sample Lambda events with its `expected.json` contract (`events/` for the
//! HTTP API, `events/ws/` for the WebSocket API), shared by the replay tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::{Map, Value};

/// One folder of events, relative to the repository root.
pub struct EventDir {
    rel: &'static str,
}

impl EventDir {
    pub fn new(rel: &'static str) -> Self {
        EventDir { rel }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(self.rel)
    }

    /// Every `*.json` but `expected.json`, by file name.
    pub fn files(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.path())
            .unwrap_or_else(|e| panic!("{}/ exists: {e}", self.rel))
            .map(|e| e.expect("readable dir entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json") && n != "expected.json")
            .collect()
    }

    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path().join(name)).unwrap_or_else(|e| panic!("reading {}/{name}: {e}", self.rel))
    }

    /// `expected.json`: file name -> (status, the entry's object). Each entry must have an
    /// integer `status` and no keys outside `allowed`.
    pub fn expected(&self, allowed: &[&str]) -> BTreeMap<String, (u16, Map<String, Value>)> {
        let text = self.read("expected.json");
        let map: BTreeMap<String, Value> = serde_json::from_str(&text).expect("expected.json is a JSON object");
        map.into_iter()
            .map(|(name, v)| {
                let obj = v.as_object().unwrap_or_else(|| panic!("expected.json: {name} is not an object")).clone();
                for k in obj.keys() {
                    assert!(allowed.contains(&k.as_str()), "expected.json: {name} has unknown key {k}");
                }
                let status = obj
                    .get("status")
                    .and_then(Value::as_u64)
                    .and_then(|s| u16::try_from(s).ok())
                    .unwrap_or_else(|| panic!("expected.json: {name} needs an integer status"));
                (name, (status, obj))
            })
            .collect()
    }

    /// Every event file is in `expected.json` and every entry has a file, so no event can
    /// skip the replay's checks.
    pub fn assert_all_listed(&self, min: usize) {
        let files = self.files();
        let listed: BTreeSet<String> = self.expected(&["status", "field", "headers", "frames"]).into_keys().collect();
        let unlisted: Vec<_> = files.difference(&listed).collect();
        let missing: Vec<_> = listed.difference(&files).collect();
        assert!(
            unlisted.is_empty() && missing.is_empty(),
            "events without an entry in {0}/expected.json: {unlisted:?}; entries in {0}/expected.json without an \
             event file: {missing:?}",
            self.rel
        );
        assert!(files.len() >= min, "only {} events in {}", files.len(), self.rel);
    }
}
