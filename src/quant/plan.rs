//! The precision plan: for every encoder layer, the precision of each of its four GEMMs and the
//! calibrated input scale of each INT8 one. A JSON file; a model directory plus a plan is what
//! gets served.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::observer::Calibration;
use crate::error::{Result, SampError};

pub const FORMAT: &str = "samp-plan/1";
/// File name of a plan inside a quantized model directory.
pub const PLAN_FILE: &str = "samp-plan.json";

/// The GEMMs of one encoder layer, in execution order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gemm {
    Qkv,
    AttnOut,
    FfnUp,
    FfnDown,
}

impl Gemm {
    pub const ALL: [Gemm; 4] = [Gemm::Qkv, Gemm::AttnOut, Gemm::FfnUp, Gemm::FfnDown];

    pub fn name(self) -> &'static str {
        match self {
            Gemm::Qkv => "qkv",
            Gemm::AttnOut => "attn_out",
            Gemm::FfnUp => "ffn_up",
            Gemm::FfnDown => "ffn_down",
        }
    }

    pub fn is_ffn(self) -> bool {
        matches!(self, Gemm::FfnUp | Gemm::FfnDown)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Float32,
    Bfloat16,
    Float16,
    Int8,
}

impl Precision {
    pub const ALL: [Precision; 4] = [
        Precision::Float32,
        Precision::Bfloat16,
        Precision::Float16,
        Precision::Int8,
    ];

    /// As plans spell it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Float32 => "float32",
            Precision::Bfloat16 => "bfloat16",
            Precision::Float16 => "float16",
            Precision::Int8 => "int8",
        }
    }
}

/// What is wrong with a plan, naming the entry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("format is {0:?}, expected {FORMAT:?}")]
    Format(String),
    #[error("layers has {entries} entries, the model has {layers} layers")]
    Layers { entries: usize, layers: usize },
    #[error("weight_bits is {0}; INT8 weights are 6, 7 or 8 bits")]
    WeightBits(u32),
    #[error("layers[{layer}].{gemm}.weight_bits: {why}")]
    GemmWeightBits {
        layer: usize,
        gemm: &'static str,
        why: String,
    },
    #[error("layers[{layer}].{gemm}.input_scale: {scale} is not a positive number")]
    BadScale {
        layer: usize,
        gemm: &'static str,
        scale: f32,
    },
    #[error("layers[{layer}].{gemm}.input_scale is missing (static activations need one)")]
    MissingScale { layer: usize, gemm: &'static str },
    #[error("layers[{layer}].{gemm}.precision: {precision} is not available on the {backend} backend ({available})")]
    Unsupported {
        layer: usize,
        gemm: &'static str,
        precision: &'static str,
        backend: &'static str,
        available: String,
    },
}

/// How INT8 activations are scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActMode {
    /// One calibrated scale per GEMM input.
    #[default]
    Static,
    /// Each token's own maximum, at run time.
    Dynamic,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GemmPlan {
    pub precision: Precision,
    /// Static activation scale (`clip / 127`) of an INT8 GEMM's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_scale: Option<f32>,
    /// This INT8 GEMM's weight width where it differs from the plan's `weight_bits` (`samp
    /// quantize` narrows the layers that tolerate it: [`narrower_weight_bits`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_bits: Option<u32>,
}

impl GemmPlan {
    pub const FLOAT: GemmPlan = GemmPlan {
        precision: Precision::Float32,
        input_scale: None,
        weight_bits: None,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerPlan {
    pub qkv: GemmPlan,
    pub attn_out: GemmPlan,
    pub ffn_up: GemmPlan,
    pub ffn_down: GemmPlan,
}

impl LayerPlan {
    pub const FLOAT: LayerPlan = LayerPlan {
        qkv: GemmPlan::FLOAT,
        attn_out: GemmPlan::FLOAT,
        ffn_up: GemmPlan::FLOAT,
        ffn_down: GemmPlan::FLOAT,
    };

    pub fn get(&self, g: Gemm) -> &GemmPlan {
        [&self.qkv, &self.attn_out, &self.ffn_up, &self.ffn_down][g as usize]
    }

    pub fn get_mut(&mut self, g: Gemm) -> &mut GemmPlan {
        match g {
            Gemm::Qkv => &mut self.qkv,
            Gemm::AttnOut => &mut self.attn_out,
            Gemm::FfnUp => &mut self.ffn_up,
            Gemm::FfnDown => &mut self.ffn_down,
        }
    }

    /// The layer's mode in the SAMP paper's terms.
    pub fn mode(&self) -> LayerMode {
        use Precision::{Bfloat16 as B, Float32 as F, Int8 as I};
        match Gemm::ALL.map(|g| self.get(g).precision) {
            [F, F, F, F] => LayerMode::Float,
            [B, B, B, B] => LayerMode::Bf16,
            [F, F, I, I] => LayerMode::FfnOnly,
            [B, B, I, I] => LayerMode::FfnOnlyBf16,
            [I, I, I, I] => LayerMode::Full,
            _ => LayerMode::Custom,
        }
    }
}

/// A layer's precision as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerMode {
    Float,
    /// All four GEMMs in bfloat16.
    Bf16,
    /// Quant-FFN-Only: the FFN's two GEMMs in INT8, attention in float.
    FfnOnly,
    /// Quant-FFN-Only with the attention GEMMs in bfloat16 (the SAMP paper's mix of half
    /// precision and INT8).
    FfnOnlyBf16,
    /// Fully-Quant: all four GEMMs in INT8.
    Full,
    Custom,
}

impl LayerMode {
    pub fn label(self) -> &'static str {
        match self {
            LayerMode::Float => "F",
            LayerMode::Bf16 => "b",
            LayerMode::FfnOnly => "q",
            LayerMode::FfnOnlyBf16 => "p",
            LayerMode::Full => "Q",
            LayerMode::Custom => "?",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub format: String,
    /// What the plan is: `float32`, `ffn-only`, `fully-quant`, `samp`, or the user's own.
    pub name: String,
    #[serde(default)]
    pub activations: ActMode,
    /// How the static scales were found (absent for float or dynamic plans).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// Bits of the INT8 weights (6, 7 or 8; see kernels::int8). Every CPU computes the same
    /// integers for them; plans written before this field existed used 7.
    #[serde(default = "default_weight_bits")]
    pub weight_bits: u32,
    pub layers: Vec<LayerPlan>,
}

fn default_weight_bits() -> u32 {
    7
}

/// The weight width new plans get on this host: 8 bits where the fastest INT8 kernel is exact
/// for them at full speed (VNNI), else 7 (AVX2's `vpmaddubsw`; 8-bit weights would run on a
/// slower exact kernel there).
pub fn preferred_weight_bits() -> u32 {
    use crate::kernels::int8::Int8Kernel;
    if Int8Kernel::detect(8) == Int8Kernel::detect(7) {
        8
    } else {
        7
    }
}

/// A narrower weight width than `bits` that this host runs faster, if any: 6 bits where the
/// fastest exact kernel for them is not the one for `bits` (AVX2 without VNNI, whose 6-bit kernel
/// adds two groups' `vpmaddubsw` sums before widening). `samp quantize` tries it against the
/// requirement; it costs accuracy, so it is never used untried.
pub fn narrower_weight_bits(bits: u32) -> Option<u32> {
    use crate::kernels::int8::Int8Kernel;
    (bits > 6 && Int8Kernel::detect(6) != Int8Kernel::detect(bits)).then_some(6)
}

impl Plan {
    pub fn float(layers: usize) -> Self {
        Plan {
            format: FORMAT.into(),
            name: "float32".into(),
            activations: ActMode::Static,
            calibration: None,
            weight_bits: preferred_weight_bits(),
            layers: vec![LayerPlan::FLOAT; layers],
        }
    }

    /// Layers in these modes, with INT8 input scales from `scales[layer][gemm]` (ignored for
    /// dynamic activations).
    pub fn from_modes(
        name: &str,
        modes: &[LayerMode],
        scales: &[[f32; 4]],
        activations: ActMode,
        calibration: Option<Calibration>,
    ) -> Self {
        let layers = modes
            .iter()
            .zip(scales)
            .map(|(&mode, sc)| {
                let mut lp = LayerPlan::FLOAT;
                for (gi, g) in Gemm::ALL.into_iter().enumerate() {
                    let on = match mode {
                        LayerMode::Full => true,
                        LayerMode::FfnOnly | LayerMode::FfnOnlyBf16 => g.is_ffn(),
                        _ => false,
                    };
                    let half = match mode {
                        LayerMode::Bf16 => true,
                        LayerMode::FfnOnlyBf16 => !g.is_ffn(),
                        _ => false,
                    };
                    if half {
                        lp.get_mut(g).precision = Precision::Bfloat16;
                    }
                    if on {
                        *lp.get_mut(g) = GemmPlan {
                            precision: Precision::Int8,
                            input_scale: (activations == ActMode::Static).then_some(sc[gi]),
                            weight_bits: None,
                        };
                    }
                }
                lp
            })
            .collect();
        Plan {
            format: FORMAT.into(),
            name: name.into(),
            activations,
            calibration: if activations == ActMode::Static {
                calibration
            } else {
                None
            },
            weight_bits: preferred_weight_bits(),
            layers,
        }
    }

    /// The same plan with INT8 weights of this width.
    pub fn with_weight_bits(mut self, bits: u32) -> Self {
        self.weight_bits = bits;
        self
    }

    /// The weight width of one GEMM: its own where it has one, else the plan's.
    pub fn bits(&self, layer: usize, g: Gemm) -> u32 {
        self.layers[layer]
            .get(g)
            .weight_bits
            .unwrap_or(self.weight_bits)
    }

    /// The same plan with every INT8 GEMM of the `layers` given at `bits`-bit weights; when
    /// that is every INT8 GEMM, `bits` becomes the plan's width instead.
    pub fn with_layer_bits(mut self, layers: &[usize], bits: u32) -> Self {
        for &i in layers {
            for g in Gemm::ALL {
                let gp = self.layers[i].get_mut(g);
                if gp.precision == Precision::Int8 {
                    gp.weight_bits = (bits != self.weight_bits).then_some(bits);
                }
            }
        }
        let int8 = || {
            self.layers
                .iter()
                .flat_map(|l| Gemm::ALL.map(|g| *l.get(g)))
                .filter(|gp| gp.precision == Precision::Int8)
        };
        if int8().count() > 0 && int8().all(|gp| gp.weight_bits == Some(bits)) {
            for l in &mut self.layers {
                for g in Gemm::ALL {
                    l.get_mut(g).weight_bits = None;
                }
            }
            self.weight_bits = bits;
        }
        self
    }

    /// INT8 GEMMs whose weights are narrower or wider than the plan's `weight_bits`, as
    /// (width, count) pairs.
    pub fn own_widths(&self) -> Vec<(u32, usize)> {
        let mut out: Vec<(u32, usize)> = Vec::new();
        for gp in self
            .layers
            .iter()
            .flat_map(|l| Gemm::ALL.map(|g| *l.get(g)))
        {
            if let Some(b) = gp.weight_bits {
                match out.iter_mut().find(|(w, _)| *w == b) {
                    Some((_, n)) => *n += 1,
                    None => out.push((b, 1)),
                }
            }
        }
        out.sort_unstable();
        out
    }

    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read(path).map_err(|e| SampError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let plan: Plan = serde_json::from_slice(&text).map_err(|e| SampError::Malformed {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(plan)
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("a plan serializes");
        std::fs::write(path, text + "\n").map_err(|e| SampError::Io {
            path: path.to_path_buf(),
            source: e,
        })
    }

    /// Check the plan against a model with `layers` layers: format, shape, weight width and
    /// the input scales of INT8 entries. Which precisions can run is the engine's to say:
    /// [`Plan::check_precisions`]. The error names the offending entry.
    pub fn validate(&self, layers: usize) -> std::result::Result<(), PlanError> {
        if self.format != FORMAT {
            return Err(PlanError::Format(self.format.clone()));
        }
        if self.layers.len() != layers {
            return Err(PlanError::Layers {
                entries: self.layers.len(),
                layers,
            });
        }
        if !crate::kernels::int8::WEIGHT_BITS.contains(&self.weight_bits) {
            return Err(PlanError::WeightBits(self.weight_bits));
        }
        for (layer, l) in self.layers.iter().enumerate() {
            for g in Gemm::ALL {
                let gp = l.get(g);
                if let Some(bits) = gp.weight_bits {
                    let why = if gp.precision != Precision::Int8 {
                        format!(
                            "{bits} on a {} GEMM (only INT8 weights have a width)",
                            gp.precision.name()
                        )
                    } else if !crate::kernels::int8::WEIGHT_BITS.contains(&bits) {
                        format!("{bits}; INT8 weights are 6, 7 or 8 bits")
                    } else {
                        String::new()
                    };
                    if !why.is_empty() {
                        let gemm = g.name();
                        return Err(PlanError::GemmWeightBits { layer, gemm, why });
                    }
                }
                if gp.precision != Precision::Int8 || self.activations != ActMode::Static {
                    continue;
                }
                let gemm = g.name();
                match gp.input_scale {
                    Some(s) if s.is_finite() && s > 0.0 => {}
                    Some(scale) => return Err(PlanError::BadScale { layer, gemm, scale }),
                    None => return Err(PlanError::MissingScale { layer, gemm }),
                }
            }
        }
        Ok(())
    }

    /// The first entry whose precision `supported` lacks, as an error naming the backend.
    pub fn check_precisions(
        &self,
        backend: &'static str,
        supported: &[Precision],
    ) -> std::result::Result<(), PlanError> {
        for (layer, l) in self.layers.iter().enumerate() {
            for g in Gemm::ALL {
                let precision = l.get(g).precision;
                if !supported.contains(&precision) {
                    let names: Vec<&str> = supported.iter().map(|p| p.name()).collect();
                    let available = match names.split_last() {
                        Some((last, [])) => last.to_string(),
                        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                        None => "none".into(),
                    };
                    return Err(PlanError::Unsupported {
                        layer,
                        gemm: g.name(),
                        precision: precision.name(),
                        backend,
                        available,
                    });
                }
            }
        }
        Ok(())
    }

    /// Layer modes at a glance, e.g. `QQqqFF`.
    pub fn summary(&self) -> String {
        self.layers.iter().map(|l| l.mode().label()).collect()
    }

    pub fn bf16_gemms(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| Gemm::ALL.map(|g| l.get(g).precision == Precision::Bfloat16))
            .filter(|&b| b)
            .count()
    }

    pub fn int8_gemms(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| Gemm::ALL.map(|g| l.get(g).precision == Precision::Int8))
            .filter(|&b| b)
            .count()
    }
}

/// The plan a command runs: `arg` names a file, or `float32` for none; without `arg`, the
/// model directory's own `samp-plan.json` when it has one.
pub fn resolve(model_dir: &Path, arg: Option<&str>) -> Option<std::path::PathBuf> {
    match arg {
        Some("float32") | Some("float") => None,
        Some(p) => Some(p.into()),
        None => {
            let own = model_dir.join(PLAN_FILE);
            own.is_file().then_some(own)
        }
    }
}

#[cfg(test)]
mod tests;
