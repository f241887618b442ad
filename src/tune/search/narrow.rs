//! The search's last step, per-layer weight widths: where this host runs a narrower INT8 weight
//! width faster ([`super::SearchOptions::narrower_bits`]) and the whole plan at that width missed the
//! requirement (`try_narrower_weights`), the chosen plan's INT8 layers are narrowed one at a
//! time, least sensitive first, the whole plan evaluated at every step, for as long as it
//! still meets the requirement. A layer's GEMMs then carry their own `weight_bits` in the plan.

use super::{mode_index, narrower, Search};
use crate::error::Result;
use crate::quant::plan::{LayerMode, Plan};
use crate::tune::timing::time_layers;

impl Search<'_> {
    /// The trial chosen after narrowing what tolerates it (`chosen` itself when nothing does,
    /// or there is nothing to narrow).
    pub(super) fn narrow_layers(&mut self, chosen: usize) -> Result<usize> {
        let Some(bits) = narrower(self.opts).filter(|&b| b != self.weight_bits) else {
            return Ok(chosen);
        };
        let modes = self.trials[chosen].modes.clone();
        let int8: Vec<usize> = (0..self.layers)
            .filter(|&i| !matches!(modes[i], LayerMode::Float | LayerMode::Bf16))
            .collect();
        if int8.is_empty() {
            return Ok(chosen);
        }
        (self.narrow_ms, _, _) = time_layers(self.model, &self.timing_inputs, bits)?;
        // The whole plan at `bits` is known to miss when the width trial ran this very plan.
        let all_missed = self
            .trials
            .iter()
            .any(|t| t.kind == "weights" && t.modes == modes);
        if int8.len() > 1 {
            self.progress.total += int8.len();
        }
        let order = self.least_sensitive_first(&modes, &int8, bits, chosen)?;
        let mut best = chosen;
        let mut narrowed = Vec::new();
        for (i, alone) in order {
            narrowed.push(i);
            if all_missed && narrowed.len() == int8.len() {
                break;
            }
            // The first step is the least sensitive layer alone: already evaluated.
            let t = match alone {
                Some(t) if narrowed.len() == 1 => t,
                _ => self.narrow_trial(&modes, &narrowed, bits, "narrowing")?,
            };
            self.progress.total = self.progress.total.max(self.progress.done + 1);
            let ok = self.meets(&self.trials[t]);
            let line = format!(
                "layers {narrowed:?} at {bits}-bit weights: {} {:.4}: {}",
                self.eval.metric(),
                self.trials[t].score,
                if ok {
                    "meets the requirement"
                } else {
                    "misses; the previous plan stands"
                }
            );
            self.progress.step(&line);
            if !ok {
                break;
            }
            best = t;
        }
        Ok(best)
    }

    /// The INT8 layers ordered by the chosen plan's score with each alone narrowed, best first
    /// (ties: the larger time saved first), each with that trial (none for a single layer).
    fn least_sensitive_first(
        &mut self,
        modes: &[LayerMode],
        int8: &[usize],
        bits: u32,
        chosen: usize,
    ) -> Result<Vec<(usize, Option<usize>)>> {
        if int8.len() < 2 {
            return Ok(int8.iter().map(|&i| (i, None)).collect());
        }
        let mut scored = Vec::new();
        for &i in int8 {
            let t = self.narrow_trial(modes, &[i], bits, "width sensitivity")?;
            let v = self.trials[t].score;
            let drop = self.trials[chosen].score - v;
            let line = format!(
                "layer {i} alone at {bits}-bit weights: {} {v:.4} (drop {drop:+.4})",
                self.eval.metric()
            );
            self.progress.step(&line);
            let m = mode_index(modes[i]);
            scored.push((v, self.layer_ms[i][m] - self.narrow_ms[i][m], i, t));
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.total_cmp(&a.1)));
        Ok(scored
            .into_iter()
            .map(|(_, _, i, t)| (i, Some(t)))
            .collect())
    }

    /// Evaluate the plan of `modes` with the `narrowed` layers' INT8 weights at `bits`, record
    /// the trial (its speed estimated with those layers timed at `bits`); its index.
    fn narrow_trial(
        &mut self,
        modes: &[LayerMode],
        narrowed: &[usize],
        bits: u32,
        kind: &'static str,
    ) -> Result<usize> {
        let plan = self.narrowed_plan("samp", modes, narrowed);
        self.model.apply_plan(&plan)?;
        let layers: Vec<String> = narrowed.iter().map(usize::to_string).collect();
        let name = format!(
            "samp, {bits}-bit weights in layer{} {}",
            if narrowed.len() > 1 { "s" } else { "" },
            layers.join(" ")
        );
        self.trial(&name, kind, modes)?;
        let ms = self.other_ms
            + (0..self.layers)
                .map(|i| {
                    let table = if narrowed.contains(&i) {
                        &self.narrow_ms
                    } else {
                        &self.layer_ms
                    };
                    table[i][mode_index(modes[i])]
                })
                .sum::<f64>();
        let est = self.timing_inputs.len() as f64 / (ms / 1000.0);
        let t = self.trials.last_mut().expect("just recorded");
        t.narrowed = narrowed.to_vec();
        t.est_texts_per_s = est;
        Ok(self.trials.len() - 1)
    }

    /// The plan of `modes` with the `narrowed` layers' INT8 weights at the narrower width.
    pub(super) fn narrowed_plan(
        &self,
        name: &str,
        modes: &[LayerMode],
        narrowed: &[usize],
    ) -> Plan {
        let plan = self.plan_of(name, modes);
        match narrower(self.opts) {
            Some(bits) if !narrowed.is_empty() => plan.with_layer_bits(narrowed, bits),
            _ => plan,
        }
    }
}
