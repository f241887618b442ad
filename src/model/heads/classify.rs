//! Sequence classification heads of the three architectures, on the first token's state:
//! BERT (pooler dense + tanh, classifier), RoBERTa (dense + tanh, out_proj), DistilBERT
//! (pre_classifier + ReLU, classifier). Softmax, or sigmoid for multi-label models.

use super::{Classification, LabelScore};
use crate::error::Result;
use crate::model::config::{Arch, ModelConfig};
use crate::model::linear::Linear;
use crate::model::weights::Weights;
use crate::tokenize::Encoded;

pub struct ClassifyHead {
    /// Dense layer before the classifier, and whether it is followed by tanh (else ReLU).
    pre: Linear,
    pre_tanh: bool,
    classifier: Linear,
    multi_label: bool,
}

impl ClassifyHead {
    pub fn load(w: &Weights, cfg: &ModelConfig, labels: usize) -> Result<Self> {
        let h = cfg.hidden;
        let (pre, pre_tanh, cls) = match cfg.arch {
            Arch::Bert => ("pooler.dense", true, "classifier"),
            Arch::Roberta => ("classifier.dense", true, "classifier.out_proj"),
            Arch::DistilBert => ("pre_classifier", false, "classifier"),
        };
        Ok(ClassifyHead {
            pre: Linear::load(w, pre, h, h)?,
            pre_tanh,
            classifier: Linear::load(w, cls, h, labels)?,
            multi_label: cfg.multi_label,
        })
    }

    /// Logits and probabilities from the first token's state.
    pub fn forward(&self, first_token: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let mut p = self.pre.apply(first_token);
        if self.pre_tanh {
            p.iter_mut().for_each(|v| *v = v.tanh());
        } else {
            p.iter_mut().for_each(|v| *v = v.max(0.0));
        }
        let logits = self.classifier.apply(&p);
        let probs = if self.multi_label {
            logits.iter().map(|&z| 1.0 / (1.0 + (-z).exp())).collect()
        } else {
            softmax(&logits)
        };
        (logits, probs)
    }
}

pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let exp: Vec<f32> = logits.iter().map(|&z| (z - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

impl ClassifyHead {
    /// The classification of one sequence from its first token's state (`[hidden]`).
    pub fn classify_one(&self, cls: &[f32], enc: &Encoded, labels: &[String]) -> Classification {
        let (logits, probs) = self.forward(cls);
        let best = (0..probs.len()).fold(0, |b, j| if probs[j] > probs[b] { j } else { b });
        Classification {
            label: labels[best].clone(),
            score: probs[best],
            scores: labels
                .iter()
                .zip(&probs)
                .map(|(l, &s)| LabelScore {
                    label: l.clone(),
                    score: s,
                })
                .collect(),
            logits,
            tokens: enc.len(),
            truncated: enc.truncated,
        }
    }
}
