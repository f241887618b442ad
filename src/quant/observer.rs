//! Calibration observer: what flows into one GEMM, as a histogram of magnitudes, and the
//! activation scale each calibration method derives from it.
//!
//! The histogram is logarithmic and exact to build: a float's bits without the sign, shifted
//! right by 17, keep the exponent and the top 6 mantissa bits, so every bin spans 1/64 of an
//! octave (1.1% relative width) and the whole float range fits in 2^14 bins.

use serde::{Deserialize, Serialize};

use crate::kernels::int8::ACT_MAX;

const SHIFT: u32 = 17;
const BINS: usize = 1 << (31 - SHIFT);
/// Bins from here on hold infinities and NaNs.
const FINITE_BINS: usize = (0xff << 23) >> SHIFT;

/// How an activation scale is chosen from what calibration saw.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum Calibration {
    /// The largest magnitude seen.
    Max,
    /// The magnitude below which this percentage of values lies.
    Percentile { percentile: f64 },
    /// The clipping threshold with the least mean squared quantization error.
    Mse,
}

impl Calibration {
    /// `max`, `mse`, `percentile` (99.99) or `percentile:P`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "max" => Ok(Calibration::Max),
            "mse" => Ok(Calibration::Mse),
            "percentile" => Ok(Calibration::Percentile { percentile: 99.99 }),
            _ => match s.strip_prefix("percentile:").map(str::parse::<f64>) {
                Some(Ok(p)) if p > 0.0 && p <= 100.0 => Ok(Calibration::Percentile { percentile: p }),
                _ => Err(format!(
                    "unknown calibration {s:?}: use max, mse, percentile or percentile:P (0 < P <= 100)"
                )),
            },
        }
    }
}

impl std::fmt::Display for Calibration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Calibration::Max => write!(f, "max"),
            Calibration::Mse => write!(f, "mse"),
            Calibration::Percentile { percentile } => write!(f, "percentile:{percentile}"),
        }
    }
}

#[derive(Clone)]
pub struct Observer {
    bins: Vec<u64>,
    max: f32,
    count: u64,
}

impl Default for Observer {
    fn default() -> Self {
        Self::new()
    }
}

impl Observer {
    pub fn new() -> Self {
        Observer {
            bins: vec![0; BINS],
            max: 0.0,
            count: 0,
        }
    }

    pub fn record(&mut self, xs: &[f32]) {
        let mut max = self.max;
        for &v in xs {
            let bits = v.to_bits() & 0x7fff_ffff;
            let bin = (bits >> SHIFT) as usize;
            if bin < FINITE_BINS {
                self.bins[bin] += 1;
                max = max.max(f32::from_bits(bits));
            }
        }
        self.max = max;
        self.count += xs.len() as u64;
    }

    pub fn max(&self) -> f32 {
        self.max
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    fn lower(bin: usize) -> f64 {
        f32::from_bits((bin as u32) << SHIFT) as f64
    }

    fn upper(bin: usize) -> f64 {
        f32::from_bits(((bin as u32) + 1) << SHIFT) as f64
    }

    /// The magnitude below which `p` percent of the recorded values lie.
    pub fn percentile(&self, p: f64) -> f32 {
        let total: u64 = self.bins[..FINITE_BINS].iter().sum();
        let want = (total as f64 * p / 100.0).ceil() as u64;
        let mut seen = 0;
        for (b, &c) in self.bins[..FINITE_BINS].iter().enumerate() {
            seen += c;
            if c > 0 && seen >= want {
                return (Self::upper(b) as f32).min(self.max);
            }
        }
        self.max
    }

    /// The clipping threshold minimising the expected squared error of symmetric 8-bit
    /// quantization over the recorded distribution: rounding noise (step²/12) inside, the
    /// clipped distance outside.
    pub fn mse_clip(&self) -> f32 {
        let used: Vec<(f64, f64)> = self.bins[..FINITE_BINS]
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(b, &c)| ((Self::lower(b) + Self::upper(b)) / 2.0, c as f64))
            .collect();
        if used.is_empty() || self.max <= 0.0 {
            return self.max;
        }
        // Candidates: bin edges from the 99th percentile to the maximum.
        let start = self.percentile(99.0) as f64;
        let mut best = (f64::INFINITY, self.max as f64);
        let candidates = used
            .iter()
            .map(|&(c, _)| c)
            .filter(|&c| c >= start)
            .chain(std::iter::once(self.max as f64));
        for clip in candidates {
            let step = clip / ACT_MAX as f64;
            let noise = step * step / 12.0;
            let err: f64 = used
                .iter()
                .map(|&(v, n)| {
                    if v <= clip {
                        n * noise
                    } else {
                        n * (v - clip) * (v - clip)
                    }
                })
                .sum();
            if err < best.0 {
                best = (err, clip);
            }
        }
        best.1 as f32
    }

    /// The activation scale (`clip / 127`) for a calibration method.
    pub fn scale(&self, method: Calibration) -> f32 {
        let clip = match method {
            Calibration::Max => self.max,
            Calibration::Percentile { percentile } => self.percentile(percentile),
            Calibration::Mse => self.mse_clip(),
        };
        if clip > 0.0 && clip.is_finite() {
            clip / ACT_MAX as f32
        } else {
            1.0 / ACT_MAX as f32
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_percentile_and_mse_on_a_distribution_with_an_outlier() {
        let mut o = Observer::new();
        // 10,000 values spread over ±1, and one outlier at 50.
        let mut xs: Vec<f32> = (0..10_000).map(|i| (i as f32 / 5000.0) - 1.0).collect();
        xs.push(50.0);
        xs.push(f32::NAN);
        o.record(&xs);
        assert_eq!(o.max(), 50.0);
        assert_eq!(o.scale(Calibration::Max), 50.0 / 127.0);
        let p = o.percentile(99.0);
        assert!((p - 0.98).abs() < 0.02, "{p}");
        // One outlier among 10,000 still dominates the squared error: MSE keeps it.
        assert!(o.mse_clip() > 40.0, "{}", o.mse_clip());
        assert_eq!(
            Calibration::parse("percentile:99.9").unwrap(),
            Calibration::Percentile { percentile: 99.9 }
        );
        assert!(Calibration::parse("kl").is_err());
    }

    /// Mean squared error of symmetric 8-bit quantization with this clip, on the raw data.
    fn quant_mse(xs: &[f32], clip: f32) -> f64 {
        let step = clip / 127.0;
        xs.iter()
            .map(|&x| {
                let q = (x / step).round().clamp(-127.0, 127.0) * step;
                ((x - q) as f64).powi(2)
            })
            .sum::<f64>()
            / xs.len() as f64
    }

    #[test]
    fn mse_clip_is_near_the_brute_force_optimum_on_heavy_tails() {
        // Laplace-distributed values (deterministic): heavy tails, so the best clip is well
        // below the maximum.
        let xs: Vec<f32> = (1..50_000)
            .map(|i| {
                let u = (i as f64 * 0.618_033_988_75).fract().max(1e-9);
                let v = -(u.ln()) as f32;
                if i % 2 == 0 {
                    v
                } else {
                    -v
                }
            })
            .collect();
        let mut o = Observer::new();
        o.record(&xs);
        let clip = o.mse_clip();
        let best = (1..=400)
            .map(|i| o.max() * i as f32 / 400.0)
            .map(|c| quant_mse(&xs, c))
            .fold(f64::INFINITY, f64::min);
        let got = quant_mse(&xs, clip);
        assert!(clip < o.max(), "clip {clip} max {}", o.max());
        assert!(got <= best * 1.05, "mse {got} vs best {best} (clip {clip})");
        assert!(got < quant_mse(&xs, o.max()), "no better than max");
    }

    #[test]
    fn an_empty_or_zero_observer_gives_a_usable_scale() {
        let mut o = Observer::new();
        assert!(o.scale(Calibration::Mse) > 0.0);
        o.record(&[0.0; 16]);
        assert!(o.scale(Calibration::Percentile { percentile: 99.0 }) > 0.0);
    }
}
