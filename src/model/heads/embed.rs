//! Sentence embedding head: pooling of token states (mean, CLS, max), optional truncation of
//! the output dimensions (Matryoshka-style), optional L2 normalisation.

use super::Embedding;
use crate::model::config::{Pooling, SentenceConfig};
use crate::model::EmbedOptions;
use crate::tokenize::Encoded;

/// Pool the `[len, h]` token states of one sequence.
pub fn pool(states: &[f32], h: usize, pooling: Pooling) -> Vec<f32> {
    let len = states.len() / h;
    match pooling {
        Pooling::Cls => states[..h].to_vec(),
        Pooling::Mean => {
            let mut out = vec![0.0f32; h];
            for row in states.chunks_exact(h) {
                out.iter_mut().zip(row).for_each(|(o, &v)| *o += v);
            }
            let inv = 1.0 / len.max(1) as f32;
            out.iter_mut().for_each(|o| *o *= inv);
            out
        }
        Pooling::Max => {
            let mut out = vec![f32::NEG_INFINITY; h];
            for row in states.chunks_exact(h) {
                out.iter_mut().zip(row).for_each(|(o, &v)| *o = o.max(v));
            }
            out
        }
    }
}

/// Keep the first `dims` values (if given), then L2-normalise (if asked).
pub fn finish(mut v: Vec<f32>, dims: Option<usize>, normalize: bool) -> Vec<f32> {
    if let Some(d) = dims {
        v.truncate(d);
    }
    if normalize {
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

/// The embed head on one sequence's states `[len, hidden]`: pooled as the sentence config
/// says, cut to `opts.dims`, normalised unless the call says otherwise.
pub fn embed_one(
    states: &[f32],
    enc: &Encoded,
    hidden: usize,
    sentence: &SentenceConfig,
    opts: &EmbedOptions,
) -> Embedding {
    let pooled = pool(states, hidden, sentence.pooling);
    let normalize = opts.normalize.unwrap_or(sentence.normalize);
    Embedding {
        embedding: finish(pooled, opts.dims, normalize),
        tokens: enc.len(),
        truncated: enc.truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_modes() {
        let s = [1.0, 2.0, 3.0, -4.0];
        assert_eq!(pool(&s, 2, Pooling::Mean), vec![2.0, -1.0]);
        assert_eq!(pool(&s, 2, Pooling::Cls), vec![1.0, 2.0]);
        assert_eq!(pool(&s, 2, Pooling::Max), vec![3.0, 2.0]);
    }

    #[test]
    fn truncate_then_normalise() {
        let v = finish(vec![3.0, 4.0, 100.0], Some(2), true);
        assert_eq!(v, vec![0.6, 0.8]);
    }
}
