//! Evaluation data and metrics: what `samp quantize` optimises and `samp eval` prints.
//!
//! Data is JSON Lines: a string, or `{"text": .., "text_pair": .., "label": .., "score": ..}`.
//! With labels the classify metrics are accuracy and macro-F1; with scored pairs the embed
//! metric is the Spearman correlation of the pair's cosine with the score. Without either, the
//! metric is fidelity to the float model: label agreement (classify), entity F1 against the
//! float model's entities (tag), mean and worst cosine of embeddings (embed).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Serialize;

use crate::error::{Result, SampError};
use crate::model::config::Task;
use crate::model::heads::tag::{Aggregation, Entity};
use crate::model::{EmbedOptions, Model};
use crate::tokenize::{Input, Truncation};

#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub input: Input,
    pub label: Option<serde_json::Value>,
    pub score: Option<f64>,
}

/// Read a JSON Lines file; a malformed line is an error naming its number.
pub fn read_examples(path: &Path) -> Result<Vec<Example>> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|source| SampError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(|source| SampError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |reason: String| SampError::malformed(path, format!("line {}: {reason}", n + 1));
        let line = std::str::from_utf8(&line).map_err(|e| bad(format!("invalid UTF-8 ({e})")))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let ex = match &v {
            serde_json::Value::String(s) => Example {
                input: Input::Single(s.clone()),
                label: None,
                score: None,
            },
            serde_json::Value::Object(o) => {
                let text = o
                    .get("text")
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| bad("object without a \"text\" string".into()))?;
                let input = match o.get("text_pair") {
                    None | Some(serde_json::Value::Null) => Input::Single(text.into()),
                    Some(serde_json::Value::String(b)) => Input::Pair(text.into(), b.clone()),
                    Some(_) => return Err(bad("\"text_pair\" must be a string".into())),
                };
                let score = match o.get("score") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(s) => Some(
                        s.as_f64()
                            .filter(|s| s.is_finite())
                            .ok_or_else(|| bad("\"score\" must be a number".into()))?,
                    ),
                };
                let label = o.get("label").filter(|l| !l.is_null()).cloned();
                Example {
                    input,
                    label,
                    score,
                }
            }
            _ => return Err(bad("expected a JSON string or object".into())),
        };
        out.push(ex);
    }
    Ok(out)
}

/// What one plan scored: the primary metric (the one the search optimises) and all others.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scores {
    pub metric: String,
    pub value: f64,
    pub all: BTreeMap<String, f64>,
    /// Bootstrap standard error of the drop from the float model on `metric` (0 for float).
    pub drop_se: f64,
}

/// The float model's outputs, the reference for fidelity metrics.
enum Reference {
    Labels(Vec<usize>),
    Entities(Vec<Vec<Entity>>),
    Embeddings(Vec<Vec<f32>>),
}

/// A fixed evaluation: data, task, metric and (for fidelity) the float model's outputs.
pub struct Evaluator {
    task: Task,
    examples: Vec<Example>,
    gold: Option<Vec<usize>>,
    /// Unique texts of scored pairs, and each pair's indices into them.
    pair_texts: Vec<String>,
    pairs: Vec<(usize, usize, f64)>,
    reference: Option<Reference>,
    metric: String,
}

fn resolve_label(v: &serde_json::Value, labels: &[String]) -> std::result::Result<usize, String> {
    match v {
        serde_json::Value::String(s) => labels
            .iter()
            .position(|l| l == s)
            .ok_or_else(|| format!("label {s:?} is not one of the model's labels {labels:?}")),
        serde_json::Value::Number(n) => n
            .as_u64()
            .map(|n| n as usize)
            .filter(|&n| n < labels.len())
            .ok_or_else(|| format!("label {n} is not in 0..{}", labels.len())),
        _ => Err(format!("label {v} must be a string or an index")),
    }
}

pub const METRICS: &[&str] = &[
    "accuracy",
    "macro_f1",
    "spearman",
    "agreement",
    "entity_f1",
    "mean_cosine",
    "worst_cosine",
];

impl Evaluator {
    /// Build the evaluation for `model` (which must run the float plan: its outputs become the
    /// fidelity reference). `metric` picks the primary metric; by default the labelled one
    /// when the data has labels or scores, else fidelity.
    pub fn new(model: &Model, examples: Vec<Example>, metric: Option<&str>) -> Result<Self> {
        if examples.is_empty() {
            return Err(SampError::invalid("evaluation data", "no examples"));
        }
        let task = model.task;
        let labelled = examples.iter().filter(|e| e.label.is_some()).count();
        let gold = if task == Task::Classify && labelled > 0 {
            if labelled != examples.len() {
                return Err(SampError::invalid(
                    "evaluation data",
                    format!(
                        "{labelled} of {} examples have a label; all or none must",
                        examples.len()
                    ),
                ));
            }
            let g = examples
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    resolve_label(e.label.as_ref().expect("counted"), &model.labels)
                        .map_err(|r| SampError::invalid(format!("example {}", i + 1), r))
                })
                .collect::<Result<Vec<_>>>()?;
            Some(g)
        } else {
            None
        };
        let mut pair_texts = Vec::new();
        let mut pairs = Vec::new();
        if task == Task::Embed {
            let mut index: HashMap<String, usize> = HashMap::new();
            let mut id = |t: &str| {
                *index.entry(t.to_string()).or_insert_with(|| {
                    pair_texts.push(t.to_string());
                    pair_texts.len() - 1
                })
            };
            for e in &examples {
                if let (Input::Pair(a, b), Some(s)) = (&e.input, e.score) {
                    pairs.push((id(a), id(b), s));
                }
            }
        }
        let default = match task {
            Task::Classify if gold.is_some() => "accuracy",
            Task::Classify => "agreement",
            Task::Tag => "entity_f1",
            Task::Embed if !pairs.is_empty() => "spearman",
            Task::Embed => "mean_cosine",
        };
        let metric = metric.unwrap_or(default).to_string();
        let mut ev = Evaluator {
            task,
            examples,
            gold,
            pair_texts,
            pairs,
            reference: None,
            metric,
        };
        let float = ev.run(model)?;
        ev.reference = Some(float);
        let scores = ev.evaluate(model)?;
        if !scores.all.contains_key(&ev.metric) {
            return Err(SampError::invalid(
                "metric",
                format!(
                    "{:?} is not available for this model and data (available: {})",
                    ev.metric,
                    scores.all.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        Ok(ev)
    }

    pub fn metric(&self) -> &str {
        &self.metric
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    fn inputs(&self) -> Vec<Input> {
        self.examples.iter().map(|e| e.input.clone()).collect()
    }

    fn texts(&self) -> Vec<String> {
        self.examples
            .iter()
            .map(|e| match &e.input {
                Input::Single(t) => t.clone(),
                Input::Pair(a, b) => format!("{a} {b}"),
            })
            .collect()
    }

    fn run(&self, model: &Model) -> Result<Reference> {
        let trunc = Truncation::Truncate;
        Ok(match self.task {
            Task::Classify => Reference::Labels(
                model
                    .classify(&self.inputs(), trunc)?
                    .iter()
                    .map(|c| model.labels.iter().position(|l| *l == c.label).unwrap_or(0))
                    .collect(),
            ),
            Task::Tag => Reference::Entities(
                model
                    .tag(&self.texts(), Aggregation::Simple, trunc)?
                    .into_iter()
                    .map(|t| t.entities)
                    .collect(),
            ),
            Task::Embed => {
                let inputs: Vec<Input> = if self.pairs.is_empty() {
                    self.inputs()
                } else {
                    self.pair_texts.iter().cloned().map(Input::Single).collect()
                };
                let opts = EmbedOptions {
                    normalize: Some(true),
                    truncation: trunc,
                    ..Default::default()
                };
                Reference::Embeddings(
                    model
                        .embed(&inputs, &opts)?
                        .into_iter()
                        .map(|e| e.embedding)
                        .collect(),
                )
            }
        })
    }

    /// Score the plan `model` currently runs, with the bootstrap standard error of its drop
    /// from the float model on the primary metric.
    pub fn evaluate(&self, model: &Model) -> Result<Scores> {
        let out = self.run(model)?;
        let labels = model.labels.len();
        let all = self.metrics(&out, None, labels);
        let value = all.get(&self.metric).copied().unwrap_or(f64::NAN);
        let drop_se = match &self.reference {
            Some(reference) => self.drop_se(&out, reference, labels),
            None => 0.0,
        };
        Ok(Scores {
            metric: self.metric.clone(),
            value,
            all,
            drop_se,
        })
    }

    /// How many units the primary metric is computed over (examples, texts or pairs): what the
    /// bootstrap resamples.
    fn units(&self, out: &Reference) -> usize {
        match out {
            Reference::Labels(v) => v.len(),
            Reference::Entities(v) => v.len(),
            Reference::Embeddings(v) if self.metric == "spearman" => {
                let _ = v;
                self.pairs.len()
            }
            Reference::Embeddings(v) => v.len(),
        }
    }

    /// Standard error of (float score − plan score) over 200 paired bootstrap resamples of the
    /// units, so that a plan is only trusted to meet a requirement by more than the noise of
    /// a finite evaluation set. Deterministic (fixed-seed generator).
    fn drop_se(&self, out: &Reference, reference: &Reference, labels: usize) -> f64 {
        let n = self.units(out);
        if n < 2 {
            return 0.0;
        }
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let rounds = 200;
        let mut drops = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let idx: Vec<usize> = (0..n).map(|_| next()).collect();
            let f = self.metrics(reference, Some(&idx), labels);
            let p = self.metrics(out, Some(&idx), labels);
            if let (Some(f), Some(p)) = (f.get(&self.metric), p.get(&self.metric)) {
                drops.push(f - p);
            }
        }
        let k = drops.len().max(1) as f64;
        let mean = drops.iter().sum::<f64>() / k;
        (drops.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (k - 1.0).max(1.0)).sqrt()
    }

    /// Every available metric of `out`, over all units or the resample `idx`.
    fn metrics(
        &self,
        out: &Reference,
        idx: Option<&[usize]>,
        labels: usize,
    ) -> BTreeMap<String, f64> {
        fn pick<T: Clone>(v: &[T], idx: Option<&[usize]>) -> Vec<T> {
            match idx {
                Some(i) => i.iter().map(|&k| v[k].clone()).collect(),
                None => v.to_vec(),
            }
        }
        let mut all = BTreeMap::new();
        match (out, self.reference.as_ref()) {
            (Reference::Labels(pred), reference) => {
                let p = pick(pred, idx);
                if let Some(gold) = &self.gold {
                    let g = pick(gold, idx);
                    all.insert("accuracy".into(), accuracy(&p, &g));
                    all.insert("macro_f1".into(), macro_f1(&p, &g, labels));
                }
                if let Some(Reference::Labels(r)) = reference {
                    all.insert("agreement".into(), accuracy(&p, &pick(r, idx)));
                }
            }
            (Reference::Entities(ents), reference) => {
                if let Some(Reference::Entities(r)) = reference {
                    all.insert(
                        "entity_f1".into(),
                        entity_f1(&pick(ents, idx), &pick(r, idx)),
                    );
                }
            }
            (Reference::Embeddings(emb), reference) => {
                if !self.pairs.is_empty() {
                    let pairs = pick(
                        &self.pairs,
                        if self.metric == "spearman" { idx } else { None },
                    );
                    let (x, y): (Vec<f64>, Vec<f64>) = pairs
                        .iter()
                        .map(|&(a, b, s)| (cosine(&emb[a], &emb[b]), s))
                        .unzip();
                    all.insert("spearman".into(), spearman(&x, &y));
                }
                if let Some(Reference::Embeddings(r)) = reference {
                    let units: Vec<usize> = match idx {
                        Some(i) if self.metric != "spearman" => i.to_vec(),
                        _ => (0..emb.len()).collect(),
                    };
                    let cos: Vec<f64> = units.iter().map(|&k| cosine(&emb[k], &r[k])).collect();
                    all.insert(
                        "mean_cosine".into(),
                        cos.iter().sum::<f64>() / cos.len().max(1) as f64,
                    );
                    all.insert(
                        "worst_cosine".into(),
                        cos.iter().cloned().fold(1.0, f64::min),
                    );
                }
            }
        }
        all
    }
}

pub fn accuracy(pred: &[usize], gold: &[usize]) -> f64 {
    let hit = pred.iter().zip(gold).filter(|(p, g)| p == g).count();
    hit as f64 / gold.len().max(1) as f64
}

/// Mean over classes that occur (in gold or predictions) of the per-class F1.
pub fn macro_f1(pred: &[usize], gold: &[usize], classes: usize) -> f64 {
    let mut f1s = Vec::new();
    for c in 0..classes {
        let tp = pred
            .iter()
            .zip(gold)
            .filter(|(p, g)| **p == c && **g == c)
            .count() as f64;
        let np = pred.iter().filter(|p| **p == c).count() as f64;
        let ng = gold.iter().filter(|g| **g == c).count() as f64;
        if np + ng == 0.0 {
            continue;
        }
        f1s.push(2.0 * tp / (np + ng));
    }
    f1s.iter().sum::<f64>() / f1s.len().max(1) as f64
}

/// Micro F1 of exact (label, start, end) matches against the reference entities; 1 when both
/// sides found nothing.
pub fn entity_f1(pred: &[Vec<Entity>], reference: &[Vec<Entity>]) -> f64 {
    let (mut tp, mut np, mut nr) = (0usize, 0usize, 0usize);
    for (p, r) in pred.iter().zip(reference) {
        let key = |e: &Entity| (e.label.clone(), e.start, e.end);
        let rs: std::collections::HashSet<_> = r.iter().map(key).collect();
        tp += p.iter().filter(|e| rs.contains(&key(e))).count();
        np += p.len();
        nr += r.len();
    }
    if np + nr == 0 {
        1.0
    } else {
        2.0 * tp as f64 / (np + nr) as f64
    }
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

/// Ranks with ties sharing their mean rank.
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let mean = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = mean;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rank correlation (Pearson on tie-averaged ranks).
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let (rx, ry) = (ranks(x), ranks(y));
    let n = rx.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mx) * (b - my)).sum();
    let vx: f64 = rx.iter().map(|a| (a - mx).powi(2)).sum();
    let vy: f64 = ry.iter().map(|b| (b - my).powi(2)).sum();
    if vx == 0.0 || vy == 0.0 {
        0.0
    } else {
        cov / (vx * vy).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_on_known_values() {
        assert_eq!(accuracy(&[0, 1, 1, 0], &[0, 1, 0, 0]), 0.75);
        // class 0: tp 2, pred 2, gold 3 → 0.8; class 1: tp 1, pred 2, gold 1 → 2/3.
        let f = macro_f1(&[0, 1, 1, 0], &[0, 1, 0, 0], 2);
        assert!((f - (0.8 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        // Ties: x has a tie, value from scipy.stats.spearmanr([1,2,2,3],[1,2,3,4]) = 0.9486833.
        assert!((spearman(&[1.0, 2.0, 2.0, 3.0], &[1.0, 2.0, 3.0, 4.0]) - 0.9486833).abs() < 1e-6);
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - 0.5f64.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn entity_f1_counts_exact_matches() {
        let e = |l: &str, s, t| Entity {
            label: l.into(),
            score: 1.0,
            start: s,
            end: t,
            text: String::new(),
        };
        let r = vec![vec![e("PER", 0, 4), e("LOC", 10, 15)]];
        let p = vec![vec![e("PER", 0, 4), e("LOC", 10, 14)]];
        assert_eq!(entity_f1(&p, &r), 0.5);
        assert_eq!(entity_f1(&[vec![]], &[vec![]]), 1.0);
    }

    #[test]
    fn malformed_lines_are_numbered() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        std::fs::write(
            &p,
            b"{\"text\":\"a\",\"label\":1}\n\n\"b\"\n{\"text\":\"c\",\"score\":\"x\"}\n",
        )
        .unwrap();
        let e = read_examples(&p).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("score"), "{e}");
        std::fs::write(&p, b"\"ok\"\n\xff\xfe\n").unwrap();
        let e = read_examples(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("UTF-8"), "{e}");
        std::fs::write(
            &p,
            b"{\"text\":\"a\",\"text_pair\":\"b\",\"score\":0.5}\n[1]\n",
        )
        .unwrap();
        assert!(read_examples(&p)
            .unwrap_err()
            .to_string()
            .contains("line 2"));
    }
}
