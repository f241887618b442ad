//! Token classification → entity spans, with the aggregation strategies of the transformers
//! token-classification pipeline (none, simple, first, average, max) over BIO / IOB2 tags.
//! Pure logic over per-token scores; offsets are character offsets into the original text.

use serde::Serialize;

use super::Tagging;
use crate::model::linear::Linear;
use crate::tokenize::{Encoded, Tokenizer};

/// How sub-word tokens and B/I tags are merged into entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    /// Every non-O token is its own entity, labelled with its raw tag.
    None,
    /// Adjacent tokens with the same entity type merge (B- starts a new one).
    #[default]
    Simple,
    /// Words take the label of their first sub-word, then merge as `simple`.
    First,
    /// Words take the label of the mean of their sub-words' scores.
    Average,
    /// Words take the label of their most confident sub-word.
    Max,
}

impl std::str::FromStr for Aggregation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        use Aggregation::*;
        let names = [
            ("none", None),
            ("simple", Simple),
            ("first", First),
            ("average", Average),
            ("max", Max),
        ];
        crate::model::config::parse_name("aggregation", s, &names)
    }
}

/// One entity span.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entity {
    /// Entity type (`PERSON`) — or the raw tag (`B-PERSON`) with aggregation `none`.
    pub label: String,
    /// Mean probability of the tokens that make it up.
    pub score: f32,
    /// Character offsets `[start, end)` into the original text.
    pub start: usize,
    pub end: usize,
    /// The text of the span.
    pub text: String,
}

/// A non-special token with its class probabilities.
#[derive(Debug, Clone)]
pub struct TokenScores<'a> {
    pub scores: &'a [f32],
    pub start: usize,
    pub end: usize,
    /// Continues the previous token's word (`##ing`).
    pub is_subword: bool,
}

struct Scored {
    label: usize,
    score: f32,
    start: usize,
    end: usize,
}

fn argmax(s: &[f32]) -> usize {
    // First maximum wins, as numpy's argmax.
    let mut best = 0;
    for (i, &v) in s.iter().enumerate() {
        if v > s[best] {
            best = i;
        }
    }
    best
}

/// `B-PER` → ("B", "PER"); `I-PER` → ("I", "PER"); anything else is an inside tag of itself.
fn split_tag(tag: &str) -> (char, &str) {
    if let Some(t) = tag.strip_prefix("B-") {
        ('B', t)
    } else if let Some(t) = tag.strip_prefix("I-") {
        ('I', t)
    } else {
        ('I', tag)
    }
}

/// Entities of one text. `labels` are the model's id2label; `text` the original input.
pub fn entities(
    tokens: &[TokenScores<'_>],
    labels: &[String],
    text: &str,
    aggregation: Aggregation,
) -> Vec<Entity> {
    let slice = |start: usize, end: usize| -> String {
        text.chars()
            .skip(start)
            .take(end.saturating_sub(start))
            .collect()
    };
    let scored: Vec<Scored> = match aggregation {
        Aggregation::None | Aggregation::Simple => tokens
            .iter()
            .map(|t| {
                let label = argmax(t.scores);
                Scored {
                    label,
                    score: t.scores[label],
                    start: t.start,
                    end: t.end,
                }
            })
            .collect(),
        _ => words(tokens)
            .into_iter()
            .map(|w| word_scored(w, aggregation))
            .collect(),
    };
    if aggregation == Aggregation::None {
        return scored
            .into_iter()
            .filter(|s| labels[s.label] != "O")
            .map(|s| Entity {
                label: labels[s.label].clone(),
                score: s.score,
                start: s.start,
                end: s.end,
                text: slice(s.start, s.end),
            })
            .collect();
    }
    let mut out = Vec::new();
    let mut group: Vec<&Scored> = Vec::new();
    let mut flush = |group: &mut Vec<&Scored>| {
        if let (Some(first), Some(last)) = (group.first(), group.last()) {
            let tag = &labels[first.label];
            let ty = tag.split_once('-').map_or(tag.as_str(), |(_, t)| t);
            if ty != "O" {
                let score = group.iter().map(|s| s.score).sum::<f32>() / group.len() as f32;
                out.push(Entity {
                    label: ty.to_string(),
                    score,
                    start: first.start,
                    end: last.end,
                    text: slice(first.start, last.end),
                });
            }
        }
        group.clear();
    };
    for s in &scored {
        if let Some(last) = group.last() {
            let (bi, ty) = split_tag(&labels[s.label]);
            let (_, last_ty) = split_tag(&labels[last.label]);
            if !(ty == last_ty && bi != 'B') {
                flush(&mut group);
            }
        }
        group.push(s);
    }
    flush(&mut group);
    out
}

/// Group tokens into words: a word is a non-subword token followed by its subwords.
fn words<'t, 'a>(tokens: &'t [TokenScores<'a>]) -> Vec<&'t [TokenScores<'a>]> {
    let mut out = Vec::new();
    let mut begin = 0;
    for i in 1..=tokens.len() {
        if i == tokens.len() || !tokens[i].is_subword {
            if i > begin {
                out.push(&tokens[begin..i]);
            }
            begin = i;
        }
    }
    out
}

fn word_scored(word: &[TokenScores<'_>], aggregation: Aggregation) -> Scored {
    let scores: Vec<f32> = match aggregation {
        Aggregation::Max => {
            let best = word
                .iter()
                .max_by(|a, b| {
                    let ma = a.scores[argmax(a.scores)];
                    let mb = b.scores[argmax(b.scores)];
                    // Python's max() keeps the first of equal maxima.
                    ma.partial_cmp(&mb)
                        .unwrap_or(std::cmp::Ordering::Equal)
                        .then(std::cmp::Ordering::Greater)
                })
                .map(|t| t.scores)
                .unwrap_or(word[0].scores);
            best.to_vec()
        }
        Aggregation::Average => {
            let n = word.len() as f32;
            (0..word[0].scores.len())
                .map(|c| word.iter().map(|t| t.scores[c]).sum::<f32>() / n)
                .collect()
        }
        _ => word[0].scores.to_vec(),
    };
    let label = argmax(&scores);
    Scored {
        label,
        score: scores[label],
        start: word[0].start,
        end: word[word.len() - 1].end,
    }
}

/// Raw per-token logits `[len × labels]` of one sequence's states.
pub fn token_logits(classifier: &Linear, states: &[f32], len: usize, n_labels: usize) -> Vec<f32> {
    let mut logits = vec![0.0f32; len * n_labels];
    classifier.forward(states, len, &mut logits, false, None);
    logits
}

/// The tag head: the token classifier, its labels, and the tokenizer whose tokens it labels.
pub struct Tagger<'m> {
    pub classifier: &'m Linear,
    pub labels: &'m [String],
    pub tokenizer: &'m Tokenizer,
}

impl Tagger<'_> {
    /// Entities of one sequence from its states; `text` is the original input.
    pub fn tag_one(
        &self,
        states: &[f32],
        enc: &Encoded,
        text: &str,
        aggregation: Aggregation,
    ) -> Tagging {
        let n_labels = self.labels.len();
        let logits = token_logits(self.classifier, states, enc.len(), n_labels);
        let probs: Vec<f32> = logits
            .chunks_exact(n_labels)
            .flat_map(super::classify::softmax)
            .collect();
        let tokens = token_scores(
            enc,
            &probs,
            n_labels,
            text,
            self.tokenizer,
            self.tokenizer.subword_prefix().is_some(),
            self.tokenizer.unk_id(),
        );
        Tagging {
            entities: entities(&tokens, self.labels, text, aggregation),
            tokens: enc.len(),
            truncated: enc.truncated,
        }
    }
}

/// Per-token scores of the non-special tokens, with the pipeline's sub-word rule: with a
/// sub-word prefix (`##`), a token is a sub-word when its text is longer than the span it
/// covers; otherwise when it does not follow a space.
fn token_scores<'a>(
    enc: &Encoded,
    probs: &'a [f32],
    n_labels: usize,
    text: &str,
    tokenizer: &Tokenizer,
    has_prefix: bool,
    unk: Option<u32>,
) -> Vec<TokenScores<'a>> {
    let e = &enc.encoding;
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::with_capacity(e.len());
    for (t, ((&id, &(start, end)), &special)) in e
        .get_ids()
        .iter()
        .zip(e.get_offsets())
        .zip(e.get_special_tokens_mask())
        .enumerate()
    {
        if special == 1 {
            continue;
        }
        let (start, end) = (start.min(chars.len()), end.min(chars.len()));
        let is_subword = if Some(id) == unk {
            false
        } else if has_prefix {
            let word_len = tokenizer.id_to_token(id).map_or(0, |w| w.chars().count());
            word_len != end.saturating_sub(start)
        } else {
            start > 0 && !chars[start - 1..(start + 1).min(chars.len())].contains(&' ')
        };
        out.push(TokenScores {
            scores: &probs[t * n_labels..(t + 1) * n_labels],
            start,
            end,
            is_subword,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Vec<String> {
        ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn tok(scores: &[f32], start: usize, end: usize, sub: bool) -> TokenScores<'_> {
        TokenScores {
            scores,
            start,
            end,
            is_subword: sub,
        }
    }

    const O: [f32; 5] = [0.9, 0.025, 0.025, 0.025, 0.025];
    const BP: [f32; 5] = [0.1, 0.8, 0.05, 0.025, 0.025];
    const IP: [f32; 5] = [0.1, 0.05, 0.8, 0.025, 0.025];
    const BL: [f32; 5] = [0.1, 0.025, 0.025, 0.8, 0.05];

    #[test]
    fn simple_merges_b_i_and_splits_on_b() {
        // "Ann Lee met Bo in Rome"
        let text = "Ann Lee met Bo in Rome";
        let toks = [
            tok(&BP, 0, 3, false),
            tok(&IP, 4, 7, false),
            tok(&O, 8, 11, false),
            tok(&BP, 12, 14, false),
            tok(&O, 15, 17, false),
            tok(&BL, 18, 22, false),
        ];
        let e = entities(&toks, &labels(), text, Aggregation::Simple);
        let spans: Vec<_> = e
            .iter()
            .map(|e| (e.label.as_str(), e.start, e.end, e.text.as_str()))
            .collect();
        assert_eq!(
            spans,
            vec![
                ("PER", 0, 7, "Ann Lee"),
                ("PER", 12, 14, "Bo"),
                ("LOC", 18, 22, "Rome")
            ]
        );
        assert!((e[0].score - 0.8).abs() < 1e-6);
    }

    #[test]
    fn none_keeps_raw_tags_and_drops_o() {
        let toks = [tok(&BP, 0, 3, false), tok(&O, 4, 5, false)];
        let e = entities(&toks, &labels(), "Ann x", Aggregation::None);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].label, "B-PER");
    }

    #[test]
    fn word_strategies_label_whole_words() {
        // "Romeo" tokenized as "Rom" "##eo"; the subword leans to O.
        let sub_o = [0.6, 0.1, 0.1, 0.1, 0.1];
        let toks = [tok(&BL, 0, 3, false), tok(&sub_o, 3, 5, true)];
        let l = labels();
        let first = entities(&toks, &l, "Romeo", Aggregation::First);
        assert_eq!(
            (first[0].label.as_str(), first[0].start, first[0].end),
            ("LOC", 0, 5)
        );
        let max = entities(&toks, &l, "Romeo", Aggregation::Max);
        assert_eq!(max[0].label, "LOC");
        let avg = entities(&toks, &l, "Romeo", Aggregation::Average);
        // mean: O = 0.35, B-LOC = 0.45 → LOC
        assert_eq!(avg[0].label, "LOC");
        assert!((avg[0].score - 0.45).abs() < 1e-6);
        // simple keeps tokens apart: the O sub-word is dropped
        let simple = entities(&toks, &l, "Romeo", Aggregation::Simple);
        assert_eq!((simple[0].start, simple[0].end), (0, 3));
    }

    #[test]
    fn offsets_are_characters_not_bytes() {
        let text = "Zoë Ünal";
        let toks = [tok(&BP, 0, 3, false), tok(&IP, 4, 8, false)];
        let e = entities(&toks, &labels(), text, Aggregation::Simple);
        assert_eq!(e[0].text, "Zoë Ünal");
        assert_eq!((e[0].start, e[0].end), (0, 8));
    }

    #[test]
    fn plain_tags_without_prefix_group_by_equality() {
        let l: Vec<String> = ["O", "PER"].iter().map(|s| s.to_string()).collect();
        let p = [0.1, 0.9];
        let toks = [tok(&p, 0, 1, false), tok(&p, 2, 3, false)];
        let e = entities(&toks, &l, "a b", Aggregation::Simple);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].label.as_str(), e[0].end), ("PER", 3));
    }
}
