//! Text to token ids: wraps a Hugging Face `tokenizer.json` (or builds a WordPiece tokenizer
//! from `vocab.txt`), strips any padding/truncation the file carries, and truncates at the
//! model's real limit instead, reporting when it did. Offsets are in characters (Unicode scalar
//! values) of the original text. Never imports tokio or model code.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use tokenizers::{
    EncodeInput, Encoding, TruncationDirection, TruncationParams, TruncationStrategy,
};

use crate::error::{Result, SampError};

/// One input: a text, or a pair of texts (sentence A / sentence B) for matching.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum Input {
    Single(String),
    Pair(String, String),
}

impl Input {
    pub fn first(&self) -> &str {
        match self {
            Input::Single(a) | Input::Pair(a, _) => a,
        }
    }
}

impl From<&str> for Input {
    fn from(s: &str) -> Self {
        Input::Single(s.to_string())
    }
}

/// What to do with an input longer than the model's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Cut to the limit (longest sequence first for pairs) and flag the result.
    #[default]
    Truncate,
    /// Refuse the input.
    Error,
}

/// A tokenized input.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub encoding: Encoding,
    pub truncated: bool,
}

impl Encoded {
    pub fn ids(&self) -> &[u32] {
        self.encoding.get_ids()
    }
    pub fn len(&self) -> usize {
        self.encoding.len()
    }
    pub fn is_empty(&self) -> bool {
        self.encoding.is_empty()
    }
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    max_len: usize,
}

impl Tokenizer {
    /// Load from `dir` (tokenizer.json, else vocab.txt) and truncate at `max_len` tokens,
    /// special tokens included.
    pub fn load(dir: &Path, max_len: usize) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.txt");
        let (mut inner, path) = if json.exists() {
            let t = tokenizers::Tokenizer::from_file(&json).map_err(|e| SampError::Tokenizer {
                path: json.clone(),
                reason: e.to_string(),
            })?;
            (t, json)
        } else if vocab.exists() {
            (wordpiece_from_vocab(dir, &vocab)?, vocab)
        } else {
            return Err(SampError::MissingFile {
                path: json,
                what: "tokenizer (tokenizer.json or vocab.txt)",
            });
        };
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                max_length: max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| SampError::Tokenizer {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        Ok(Tokenizer {
            inner,
            path,
            max_len,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Size of the vocabulary including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Largest token id the tokenizer can produce.
    pub fn max_token_id(&self) -> u32 {
        self.inner
            .get_vocab(true)
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// `continuing_subword_prefix` of the model (`##` for WordPiece), if it has one.
    pub fn subword_prefix(&self) -> Option<String> {
        match self.inner.get_model() {
            tokenizers::ModelWrapper::WordPiece(wp) => Some(wp.continuing_subword_prefix.clone()),
            tokenizers::ModelWrapper::BPE(bpe) => bpe.continuing_subword_prefix.clone(),
            _ => None,
        }
    }

    /// Token id of the unknown token, if the model has one.
    pub fn unk_id(&self) -> Option<u32> {
        let unk = match self.inner.get_model() {
            tokenizers::ModelWrapper::WordPiece(wp) => Some(wp.unk_token.clone()),
            tokenizers::ModelWrapper::BPE(bpe) => bpe.unk_token.clone(),
            _ => None,
        }?;
        self.inner.token_to_id(&unk)
    }

    /// Tokenize one input; `index` names it in errors.
    pub fn encode(&self, input: &Input, index: usize, truncation: Truncation) -> Result<Encoded> {
        let check = |field: String, s: &str| {
            if s.is_empty() {
                Err(SampError::invalid(field, "empty text"))
            } else {
                Ok(())
            }
        };
        let ei: EncodeInput = match input {
            Input::Single(a) => {
                check(format!("texts[{index}]"), a)?;
                a.as_str().into()
            }
            Input::Pair(a, b) => {
                check(format!("texts[{index}].a"), a)?;
                check(format!("texts[{index}].b"), b)?;
                (a.as_str(), b.as_str()).into()
            }
        };
        let encoding =
            self.inner
                .encode_char_offsets(ei, true)
                .map_err(|e| SampError::Tokenizer {
                    path: self.path.clone(),
                    reason: e.to_string(),
                })?;
        let truncated = !encoding.get_overflowing().is_empty();
        if truncated && truncation == Truncation::Error {
            return Err(SampError::invalid(
                format!("texts[{index}]"),
                format!("longer than the model's limit of {} tokens", self.max_len),
            ));
        }
        let mut encoding = encoding;
        // The overflow pieces are not used; drop them rather than carry them through batching.
        encoding.set_overflowing(Vec::new());
        Ok(Encoded {
            encoding,
            truncated,
        })
    }

    /// Tokenize many inputs in parallel, keeping order.
    pub fn encode_all(&self, inputs: &[Input], truncation: Truncation) -> Result<Vec<Encoded>> {
        inputs
            .par_iter()
            .enumerate()
            .map(|(i, input)| self.encode(input, i, truncation))
            .collect()
    }
}

/// A BERT WordPiece tokenizer from `vocab.txt`, lower-casing as `tokenizer_config.json` says.
fn wordpiece_from_vocab(dir: &Path, vocab: &Path) -> Result<tokenizers::Tokenizer> {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;
    use tokenizers::Model as _;

    let fail = |reason: String| SampError::Tokenizer {
        path: vocab.to_path_buf(),
        reason,
    };
    let lowercase = {
        let cfg = dir.join("tokenizer_config.json");
        if cfg.exists() {
            crate::model::config::read_json(&cfg, "tokenizer_config.json")?
                .get("do_lower_case")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(true)
        } else {
            true
        }
    };
    let vocab_str = vocab
        .to_str()
        .ok_or_else(|| fail("path is not valid UTF-8".into()))?;
    let model = WordPiece::from_file(vocab_str)
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let id = |tok: &str| {
        model
            .get_vocab()
            .get(tok)
            .copied()
            .ok_or_else(|| fail(format!("{tok} is not in the vocabulary")))
    };
    let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
    let mut t = tokenizers::Tokenizer::new(model);
    t.with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)));
    t.with_pre_tokenizer(Some(BertPreTokenizer));
    t.with_post_processor(Some(BertProcessing::new(
        ("[SEP]".into(), sep),
        ("[CLS]".into(), cls),
    )));
    Ok(t)
}
