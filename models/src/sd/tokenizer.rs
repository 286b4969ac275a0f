//! Prompt tokenizers of the SD pipelines, on the `tokenizers` crate:
//! - a `tokenizer/` directory with `tokenizer.json` (fast tokenizers; XLM-R for AltDiffusion, also
//!   CLIP when present) is loaded as is;
//! - a CLIP directory with only `vocab.json` + `merges.txt` (what the slow `CLIPTokenizer` saves, and
//!   what SD exports usually carry) is assembled the way transformers builds CLIP's fast tokenizer:
//!   NFC, whitespace runs → one space, lowercase; CLIP's word regex; byte-level symbols; BPE with a
//!   `</w>` end-of-word suffix; `<|startoftext|> … <|endoftext|>` around the ids.
//!
//! Every prompt is truncated and padded to `model_max_length` (77) with the pad token the
//! tokenizer config names, as the diffusers pipelines call the tokenizer.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, SplitDelimiterBehavior, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{ModelsError, Result};

/// CLIP's word pattern (OpenAI's `SimpleTokenizer`), applied after lowercasing.
const CLIP_WORD_PATTERN: &str = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
const CLIP_BOS: &str = "<|startoftext|>";
const CLIP_EOS: &str = "<|endoftext|>";
/// What the SD pipelines use when a config gives no usable length.
pub const DEFAULT_MAX_LENGTH: usize = 77;

/// One prompt as the text encoder takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedPrompt {
    pub input_ids: Vec<i64>,
    /// 1 for tokens, 0 for padding (XLM-R's encoder takes it; CLIP's does not).
    pub attention_mask: Vec<i64>,
}

pub struct PromptTokenizer {
    inner: Tokenizer,
    pub max_length: usize,
    pub pad_id: u32,
    pub dir: PathBuf,
}

impl PromptTokenizer {
    /// Loads `dir` (a pipeline's `tokenizer/`).
    pub fn load(dir: &Path) -> Result<PromptTokenizer> {
        let err = |path: &Path, message: String| ModelsError::Tokenizer { path: path.to_path_buf(), message };
        let config = read_json_opt(&dir.join("tokenizer_config.json"))?;
        let special_map = read_json_opt(&dir.join("special_tokens_map.json"))?;
        let token_setting = |key: &str| -> Option<String> {
            [config.as_ref(), special_map.as_ref()].into_iter().flatten().find_map(|doc| match doc.get(key) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_string),
                _ => None,
            })
        };

        let json = dir.join("tokenizer.json");
        let (mut inner, default_pad) = if json.is_file() {
            let t = Tokenizer::from_file(&json).map_err(|e| err(&json, e.to_string()))?;
            let pad = t.get_padding().map(|p| p.pad_token.clone());
            (t, pad)
        } else {
            let vocab = dir.join("vocab.json");
            let merges = dir.join("merges.txt");
            for f in [&vocab, &merges] {
                if !f.is_file() {
                    return Err(err(dir, format!("no tokenizer.json and no {} (expected a fast tokenizer or CLIP's vocab.json + merges.txt)", f.file_name().unwrap().to_string_lossy())));
                }
            }
            (build_clip(&vocab, &merges, token_setting("bos_token"), token_setting("eos_token"), token_setting("unk_token"))?, Some(CLIP_EOS.to_string()))
        };

        let max_length = config
            .as_ref()
            .and_then(|c| c.get("model_max_length"))
            .and_then(Value::as_f64)
            // transformers writes a huge sentinel when the length is unknown.
            .filter(|n| (2.0..=4096.0).contains(n))
            .map(|n| n as usize)
            .unwrap_or(DEFAULT_MAX_LENGTH);
        let pad_token = token_setting("pad_token").or(default_pad).ok_or_else(|| {
            err(dir, "no pad token: tokenizer_config.json / special_tokens_map.json name none".into())
        })?;
        let pad_id = inner.token_to_id(&pad_token).ok_or_else(|| err(dir, format!("pad token `{pad_token}` is not in the vocabulary")))?;
        inner
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| err(dir, e.to_string()))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        Ok(PromptTokenizer { inner, max_length, pad_id, dir: dir.to_path_buf() })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// `prompt` with special tokens, truncated and padded to `max_length`.
    pub fn encode(&self, prompt: &str) -> Result<TokenizedPrompt> {
        let enc = self.inner.encode(prompt, true).map_err(|e| ModelsError::Tokenizer {
            path: self.dir.clone(),
            message: format!("encoding {prompt:?}: {e}"),
        })?;
        Ok(TokenizedPrompt {
            input_ids: enc.get_ids().iter().map(|&i| i64::from(i)).collect(),
            attention_mask: enc.get_attention_mask().iter().map(|&m| i64::from(m)).collect(),
        })
    }
}

fn read_json_opt(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| ModelsError::Tokenizer { path: path.to_path_buf(), message: e.to_string() })?;
    serde_json::from_str(&text).map(Some).map_err(|e| ModelsError::Tokenizer { path: path.to_path_buf(), message: format!("not JSON: {e}") })
}

/// CLIP's BPE tokenizer from the slow tokenizer's files.
fn build_clip(vocab: &Path, merges: &Path, bos: Option<String>, eos: Option<String>, unk: Option<String>) -> Result<Tokenizer> {
    let err = |path: &Path, message: String| ModelsError::Tokenizer { path: path.to_path_buf(), message };
    let bos = bos.unwrap_or_else(|| CLIP_BOS.to_string());
    let eos = eos.unwrap_or_else(|| CLIP_EOS.to_string());
    let unk = unk.unwrap_or_else(|| CLIP_EOS.to_string());
    let model = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".to_string())
        .unk_token(unk.clone())
        .fuse_unk(false)
        .build()
        .map_err(|e| err(vocab, format!("building CLIP's BPE from {} and {}: {e}", vocab.display(), merges.display())))?;
    let mut t = Tokenizer::new(model);
    let bad = |what: &str, e: tokenizers::Error| err(vocab, format!("{what}: {e}"));
    let whitespace = Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()), " ").map_err(|e| bad("whitespace rule", e))?;
    t.with_normalizer(Some(NormalizerSequence::new(vec![NFC.into(), whitespace.into(), Lowercase.into()])));
    let words = Split::new(SplitPattern::Regex(CLIP_WORD_PATTERN.into()), SplitDelimiterBehavior::Removed, true).map_err(|e| bad("word regex", e))?;
    t.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![words.into(), ByteLevel::new(false, true, true).into()])));
    t.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    let id = |tok: &str| t.token_to_id(tok).ok_or_else(|| err(vocab, format!("special token `{tok}` is not in the vocabulary")));
    let (bos_id, eos_id) = (id(&bos)?, id(&eos)?);
    t.with_post_processor(Some(RobertaProcessing::new((eos.clone(), eos_id), (bos.clone(), bos_id)).trim_offsets(false).add_prefix_space(false)));
    let mut specials: Vec<AddedToken> = vec![AddedToken::from(bos, true), AddedToken::from(eos, true)];
    if !specials.iter().any(|s| s.content == unk) {
        specials.push(AddedToken::from(unk, true));
    }
    t.add_special_tokens(&specials);
    Ok(t)
}
