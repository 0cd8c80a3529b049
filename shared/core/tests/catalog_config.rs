//! The model catalog (files, Hugging Face directories) and environment configuration.

use ferry_core::catalog::{Catalog, CatalogError};
use ferry_core::config::Config;
use ferry_core::job::Task;

fn model_dir(config: &str) -> tempdir::Dir {
    let dir = tempdir::Dir::new();
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    dir
}

mod tempdir {
    /// A throwaway directory (no dependency needed for this).
    pub struct Dir(std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            let p = std::env::temp_dir().join(format!("ferry-test-{}", ulid_like()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn path(&self) -> &std::path::Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn ulid_like() -> String {
        format!(
            "{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        )
    }
}

#[test]
fn task_comes_from_config_architectures() {
    let llama = model_dir(r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}"#);
    let spec = Catalog::spec_from_arg(&format!("my-llama={}", llama.path().display())).unwrap();
    assert_eq!((spec.task, spec.architecture.as_deref()), (Task::TextGeneration, Some("LlamaForCausalLM")));
    assert_eq!(spec.path.as_deref(), Some(llama.path()));

    let bert = model_dir(r#"{"architectures": ["BertModel"], "model_type": "bert"}"#);
    assert_eq!(Catalog::spec_from_dir("minilm", bert.path()).unwrap().task, Task::Embeddings);

    let bare = model_dir(r#"{"model_type": "bert"}"#);
    assert_eq!(Catalog::spec_from_dir("b", bare.path()).unwrap().task, Task::Embeddings);

    let vision = model_dir(r#"{"architectures": ["ViTModel"], "model_type": "vit"}"#);
    assert!(matches!(Catalog::spec_from_dir("v", vision.path()), Err(CatalogError::UnknownArchitecture(..))));
    assert!(matches!(Catalog::spec_from_arg("no-equals-sign"), Err(CatalogError::BadSpec(_))));
    assert!(matches!(Catalog::spec_from_dir("x", std::path::Path::new("/nonexistent")), Err(CatalogError::Io { .. })));
}

/// Families the executor does not implement are refused when the catalog loads, never
/// served by another family's code (Mistral, Qwen and Gemma directories once ran through
/// the Llama code and gave wrong tokens; Gemma 1, Mixtral, a multimodal Gemma 3 would now).
#[test]
fn unsupported_architectures_are_refused_with_the_list() {
    let unsupported = [
        "GemmaForCausalLM",
        "MixtralForCausalLM",
        "Gemma3ForConditionalGeneration",
        "Qwen2MoeForCausalLM",
        "FalconForCausalLM",
    ];
    for arch in unsupported {
        let dir = model_dir(&format!(r#"{{"architectures": ["{arch}"], "model_type": "x"}}"#));
        let err = Catalog::spec_from_dir("m", dir.path()).unwrap_err();
        assert!(matches!(err, CatalogError::UnknownArchitecture(..)), "{arch}: {err}");
        for supported in
            ["LlamaForCausalLM (text-generation)", "Qwen3ForCausalLM (text-generation)", "Gemma3ForCausalLM"]
        {
            assert!(err.to_string().contains(supported), "names what is supported: {err}");
        }
        let json = format!(r#"{{"models": [{{"id": "m", "task": "text-generation", "architecture": "{arch}"}}]}}"#);
        let err = Catalog::from_json(&json).unwrap_err();
        assert!(matches!(err, CatalogError::UnsupportedArchitecture { .. }), "{arch}: {err}");
        assert!(err.to_string().contains(arch) && err.to_string().contains("BertModel (embeddings)"), "{err}");
    }
    for model_type in ["gemma", "mixtral", "gemma3", "falcon", "roberta"] {
        let dir = model_dir(&format!(r#"{{"model_type": "{model_type}"}}"#));
        assert!(Catalog::spec_from_dir("m", dir.path()).is_err(), "{model_type} is not served by another family");
    }
    let wrong_task = r#"{"models": [{"id": "m", "task": "text-generation", "architecture": "BertModel"}]}"#;
    assert!(matches!(Catalog::from_json(wrong_task), Err(CatalogError::WrongTask { .. })));
    let ok = r#"{"models": [{"id": "m", "task": "embeddings", "architecture": "BertForMaskedLM"}, {"id": "n", "task": "text-generation"}]}"#;
    assert!(Catalog::from_json(ok).is_ok(), "supported (or unnamed) architectures load");
    for (arch, task) in ferry_core::catalog::ARCHITECTURES {
        assert_eq!(ferry_core::catalog::task_for_architecture(arch), Some(*task));
    }
}

/// A directory whose config names no architecture, only its `model_type`, is served by
/// that type's family.
#[test]
fn model_types_name_their_families() {
    for (model_type, arch) in [
        ("llama", "LlamaForCausalLM"),
        ("mistral", "MistralForCausalLM"),
        ("qwen2", "Qwen2ForCausalLM"),
        ("qwen3", "Qwen3ForCausalLM"),
        ("phi3", "Phi3ForCausalLM"),
        ("gemma2", "Gemma2ForCausalLM"),
        ("gemma3_text", "Gemma3ForCausalLM"),
    ] {
        let dir = model_dir(&format!(r#"{{"model_type": "{model_type}"}}"#));
        let spec = Catalog::spec_from_dir("m", dir.path()).unwrap();
        assert_eq!(spec.architecture.as_deref(), Some(arch));
        assert_eq!(spec.task, Task::TextGeneration);
    }
}

#[test]
fn catalog_files_are_checked() {
    let ok = Catalog::from_json(r#"{"models": [{"id": "a", "task": "embeddings"}, {"id": "org/b-1.5", "task": "text-generation", "pool": "gpu"}]}"#).unwrap();
    assert_eq!(ok.get("a").unwrap().pool, "cpu");
    assert_eq!(ok.get("org/b-1.5").unwrap().pool, "gpu");
    assert!(matches!(
        Catalog::from_json(r#"{"models": [{"id": "a", "task": "embeddings"}, {"id": "a", "task": "embeddings"}]}"#),
        Err(CatalogError::Duplicate(_))
    ));
    assert!(matches!(
        Catalog::from_json(r#"{"models": [{"id": "a b", "task": "embeddings"}]}"#),
        Err(CatalogError::BadId(_))
    ));
    assert!(
        Catalog::from_json(r#"{"models": [{"id": "a", "task": "embeddings", "colour": 1}]}"#).is_err(),
        "unknown fields refused"
    );
    assert!(Catalog::from_json(r#"{"models": [{"id": "a", "task": "painting"}]}"#).is_err());
}

#[test]
fn config_reads_env_and_refuses_nonsense() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    };
    let c = Config::from_lookup(env(&[
        ("FERRY_MAX_BODY_BYTES", "4096"),
        ("FERRY_MAX_ATTEMPTS", "5"),
        ("FERRY_RATE_LIMIT_PER_S", "0"),
    ]))
    .unwrap();
    assert_eq!((c.max_body_bytes, c.max_attempts, c.rate_limit_per_s), (4096, 5, 0.0));
    assert_eq!(c.default_timeout_s, 600);
    for bad in [
        &[("FERRY_MAX_ATTEMPTS", "0")][..],
        &[("FERRY_MAX_WAIT_S", "60")],
        &[("FERRY_MAX_BODY_BYTES", "lots")],
        &[("FERRY_DEFAULT_TIMEOUT_S", "100"), ("FERRY_MAX_TIMEOUT_S", "10")],
    ] {
        let err = Config::from_lookup(env(bad)).unwrap_err();
        assert!(err.to_string().contains("FERRY_"), "{err}");
    }
}

/// Handler entries (issue 16): their own fields only, each checked when the catalog loads.
#[test]
fn handler_entries_are_checked_when_the_catalog_loads() {
    let load = |entry: serde_json::Value| Catalog::from_json(&serde_json::json!({"models": [entry]}).to_string());
    let ok = load(serde_json::json!({
        "id": "research-agent", "task": "handler", "command": ["python3", "/app/agent.py"], "mode": "worker",
        "pool": "agents", "input_schema": {"type": "object", "required": ["question"]},
        "env": {"OPENAI_BASE_URL": "http://x"}, "timeout_s": 900, "concurrency": 2,
    }))
    .unwrap();
    let spec = ok.get("research-agent").unwrap();
    assert_eq!((spec.task, spec.pool.as_str(), spec.timeout_s), (Task::Handler, "agents", Some(900)));
    assert!(spec.schema().unwrap().unwrap().validate(&serde_json::json!({"question": "q"})).is_ok());

    let refused = |entry: serde_json::Value, needle: &str| {
        let e = load(entry.clone()).expect_err(&entry.to_string()).to_string();
        assert!(e.contains(needle), "{entry}: {e}");
    };
    let handler = |extra: serde_json::Value| {
        let mut e = serde_json::json!({"id": "h", "task": "handler", "command": ["run"]});
        e.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        e
    };
    refused(serde_json::json!({"id": "h", "task": "handler"}), "needs a command");
    refused(handler(serde_json::json!({"command": []})), "needs a command");
    refused(handler(serde_json::json!({"command": ["python3", ""]})), "non-empty");
    refused(handler(serde_json::json!({"mode": "daemon"})), "unknown variant");
    refused(handler(serde_json::json!({"architecture": "BertModel"})), "architecture is for models");
    refused(handler(serde_json::json!({"path": "/models/x"})), "path is for models");
    refused(handler(serde_json::json!({"env": {"FERRY_JOB_ID": "x"}})), "set by Ferry");
    refused(handler(serde_json::json!({"env": {"NOT-A-NAME": "x"}})), "not a variable name");
    refused(handler(serde_json::json!({"timeout_s": 0})), "timeout_s");
    refused(handler(serde_json::json!({"concurrency": 0})), "concurrency");
    refused(
        handler(serde_json::json!({"input_schema": {"type": "object", "unevaluatedProperties": false}})),
        "input_schema",
    );
    refused(handler(serde_json::json!({"input_schema": {"pattern": "("}})), "input_schema");
    refused(
        serde_json::json!({"id": "m", "task": "embeddings", "command": ["run"]}),
        "command is for handlers (task \"handler\"), not embeddings",
    );
    refused(
        serde_json::json!({"id": "m", "task": "text-generation", "input_schema": {}}),
        "input_schema is for handlers",
    );
}

/// `ferry dev --handler ID=COMMAND`: the command split as a POSIX shell splits words.
#[test]
fn handler_args_are_split_like_a_shell() {
    let spec = Catalog::handler_from_arg(r#"agent=python3 "/my apps/agent.py" --depth 'two words' a\ b"#).unwrap();
    assert_eq!(spec.id, "agent");
    assert_eq!(
        spec.command.unwrap(),
        ["python3", "/my apps/agent.py", "--depth", "two words", "a b"].map(String::from)
    );
    assert!(matches!(Catalog::handler_from_arg("no-command"), Err(CatalogError::BadHandlerSpec(_))));
    assert!(matches!(Catalog::handler_from_arg("x="), Err(CatalogError::BadHandlerSpec(_))));
    assert!(matches!(Catalog::handler_from_arg("x=python3 'unclosed"), Err(CatalogError::BadHandlerSpec(_))));
    assert!(matches!(Catalog::handler_from_arg("bad id=run"), Err(CatalogError::BadId(_))));
}
