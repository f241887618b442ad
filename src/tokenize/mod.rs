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

    pub fn into_first(self) -> String {
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
    /// special tokens included. `lowercase` is the checkpoint's `do_lower_case`, used when the
    /// tokenizer is built from vocab.txt (tokenizer.json carries its own normalizer).
    pub fn load(dir: &Path, max_len: usize, lowercase: bool) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let vocab = dir.join("vocab.txt");
        let (mut inner, path) = if json.exists() {
            let t = tokenizers::Tokenizer::from_file(&json).map_err(|e| SampError::Tokenizer {
                path: json.clone(),
                reason: e.to_string(),
            })?;
            (t, json)
        } else if vocab.exists() {
            (wordpiece_from_vocab(&vocab, lowercase)?, vocab)
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
        match input {
            Input::Single(a) => check(format!("texts[{index}]"), a)?,
            Input::Pair(a, b) => {
                check(format!("texts[{index}].a"), a)?;
                check(format!("texts[{index}].b"), b)?;
            }
        }
        // Tokenize only about as much text as the limit can keep: a prefix of a long text,
        // cut at a space. Its tokens are a prefix of the whole text's tokens except perhaps the
        // last few, so when the prefix still overflows by a margin the kept tokens are exactly
        // the whole text's; otherwise the whole text is tokenized.
        let cut = self.max_len.saturating_mul(CHARS_PER_TOKEN_CUT);
        let encoding = match input {
            Input::Single(a) => match prefix(a, cut) {
                Some(p) => {
                    let e = self.encode_input(p.into())?;
                    if overflow_tokens(&e) >= CUT_MARGIN_TOKENS {
                        e
                    } else {
                        self.encode_input(a.as_str().into())?
                    }
                }
                None => self.encode_input(a.as_str().into())?,
            },
            // Pairs: each side cut the same way. Longest-first truncation then keeps the same
            // tokens, except that when both sides are over the limit the odd token may go to
            // the other side (it goes to the longer, and a cut side's full length is unknown).
            Input::Pair(a, b) => {
                let (pa, pb) = (prefix(a, cut * 2), prefix(b, cut * 2));
                self.encode_input((pa.unwrap_or(a), pb.unwrap_or(b)).into())?
            }
        };
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

    fn encode_input(&self, ei: EncodeInput) -> Result<Encoding> {
        self.inner
            .encode_char_offsets(ei, true)
            .map_err(|e| SampError::Tokenizer {
                path: self.path.clone(),
                reason: e.to_string(),
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

/// A text longer than `max_len × CHARS_PER_TOKEN_CUT` characters is tokenized from a prefix.
const CHARS_PER_TOKEN_CUT: usize = 8;
/// The prefix stands for the whole text only when this many of its tokens are cut off anyway.
const CUT_MARGIN_TOKENS: usize = 16;

/// The start of `text` up to the last whitespace before its `max_chars`-th character, when the
/// text is longer than that (and such a whitespace exists).
fn prefix(text: &str, max_chars: usize) -> Option<&str> {
    let (end, _) = text.char_indices().nth(max_chars)?;
    let head = &text[..end];
    let space = head.rfind(char::is_whitespace)?;
    Some(head[..space].trim_end()).filter(|p| !p.is_empty())
}

/// Tokens (special tokens not counted) that truncation dropped.
fn overflow_tokens(e: &Encoding) -> usize {
    e.get_overflowing()
        .iter()
        .map(|o| {
            o.get_special_tokens_mask()
                .iter()
                .filter(|&&m| m == 0)
                .count()
        })
        .sum()
}

/// A BERT WordPiece tokenizer from `vocab.txt`, lower-casing when `lowercase`.
fn wordpiece_from_vocab(vocab: &Path, lowercase: bool) -> Result<tokenizers::Tokenizer> {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;
    use tokenizers::Model as _;

    let fail = |reason: String| SampError::Tokenizer {
        path: vocab.to_path_buf(),
        reason,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(max_len: usize) -> Tokenizer {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-bert-multilabel");
        Tokenizer::load(&dir, max_len, true).unwrap()
    }

    #[test]
    fn a_long_text_is_tokenized_from_a_prefix_with_the_same_result() {
        let t = tiny(32);
        let words = [
            "the", "cat", "sat", "on", "mat", "dog", "ran", "far", "away", "home",
        ];
        let long: String = (0..5000)
            .map(|i| words[(i * 7) % words.len()])
            .collect::<Vec<_>>()
            .join(" ");
        assert!(prefix(&long, 32 * CHARS_PER_TOKEN_CUT).is_some());
        let got = t
            .encode(&Input::Single(long.clone()), 0, Truncation::Truncate)
            .unwrap();
        let whole = t.encode_input(long.as_str().into()).unwrap();
        assert!(got.truncated);
        assert_eq!(got.ids(), whole.get_ids());
        assert_eq!(got.encoding.get_offsets(), whole.get_offsets());
        // Mostly whitespace: the prefix does not reach the limit, the whole text is used.
        let sparse = format!("{}{}", " ".repeat(10_000), "word ".repeat(40));
        let got = t
            .encode(&Input::Single(sparse.clone()), 0, Truncation::Truncate)
            .unwrap();
        assert_eq!(
            got.ids(),
            t.encode_input(sparse.as_str().into()).unwrap().get_ids()
        );
        assert!(got.truncated);
        // No whitespace at all: no prefix.
        assert_eq!(prefix(&"x".repeat(1000), 10), None);
        assert_eq!(prefix("short text", 100), None);
    }
}
