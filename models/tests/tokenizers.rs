//! quilt's prompt tokenizers against transformers (reference ids in `tests/data/tokenizer_refs.json`,
//! written by `models/scripts/make_tokenizer_fixtures.py`; the CLIP ids there are also cross-checked
//! against a pure-Python port of OpenAI's CLIP BPE). Exact equality of every id and mask value.

use std::path::{Path, PathBuf};

use quilt_models::sd::tokenizer::PromptTokenizer;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pipeline").join(name)
}

fn refs() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tokenizer_refs.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

fn check(dir: &str, key: &str, with_mask: bool) {
    let tok = PromptTokenizer::load(&fixture(dir)).unwrap();
    assert_eq!(tok.vocab_size(), 1000, "{dir}: the tiny text encoders have 1000 embeddings");
    assert_eq!(tok.max_length, 77);
    let doc = refs();
    let cases = doc[key].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let got = tok.encode(prompt).unwrap();
        assert_eq!(got.input_ids, ints(&case["input_ids"]), "{dir}: ids of {prompt:?}");
        if with_mask {
            assert_eq!(got.attention_mask, ints(&case["attention_mask"]), "{dir}: mask of {prompt:?}");
        }
    }
}

#[test]
fn clip_from_vocab_and_merges_matches_transformers() {
    check("tokenizer_clip", "clip", false);
}

#[test]
fn xlmr_from_tokenizer_json_matches_transformers() {
    check("tokenizer_xlmr", "xlmr", true);
}

#[test]
fn long_prompts_keep_the_end_token() {
    let tok = PromptTokenizer::load(&fixture("tokenizer_clip")).unwrap();
    let ids = tok.encode(&"horse ".repeat(200)).unwrap().input_ids;
    assert_eq!(ids.len(), 77);
    assert_eq!(ids[0], 998, "<|startoftext|>");
    assert_eq!(ids[76], 999, "<|endoftext|>");
}

#[test]
fn missing_files_are_named() {
    let dir = std::env::temp_dir().join(format!("quilt-tok-missing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("vocab.json"), "{}").unwrap();
    let e = PromptTokenizer::load(&dir).err().unwrap().to_string();
    assert!(e.contains("merges.txt"), "{e}");
    std::fs::write(dir.join("merges.txt"), "#version: 0.2\n").unwrap();
    let e = PromptTokenizer::load(&dir).err().unwrap().to_string();
    assert!(e.contains("<|startoftext|>") || e.contains("vocabulary"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
