//! A dense layer `y = x · Wᵀ + b`. Weights are packed once at load time for the GEMM kernel
//! (see `kernels::packed`); bias, residual and activation are fused into the GEMM's epilogue.
//! This is the seam where a precision plan swaps the float GEMM for the INT8 one: the float
//! weights stay (the float variant and the quantization search need them), the INT8 weights are
//! made on first use and kept, and [`Linear::set_int8`] switches between them. A calibration
//! observer, when switched on, records what flows into this layer.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::Result;
use crate::kernels::bf16::{self, Bf16Acts, Bf16Weights};
use crate::kernels::int8::{self, ActScale, QActs, QWeights};
use crate::kernels::onednn::{self, Kind, Output};
use crate::kernels::packed::{self, Epilogue, PackedWeights};
use crate::kernels::Activation;
use crate::model::weights::Weights;
use crate::quant::observer::Observer;

pub struct Linear {
    /// samp's packed float weights; `None` where oneDNN's f32 matmul holds the only float copy
    /// (see [`Linear::from_rows`]).
    weights: Option<PackedWeights>,
    inputs: usize,
    outputs: usize,
    pub bias: Vec<f32>,
    qweights: OnceLock<Arc<QWeights>>,
    /// Width of the INT8 weights made from the float ones (the plan's `weight_bits`).
    weight_bits: u32,
    /// `Some` when this layer runs in INT8.
    int8: Option<ActScale>,
    /// The bf16 weights, made on first use; `bf16` says whether this layer runs on them.
    bweights: OnceLock<Arc<Bf16Weights>>,
    bf16: bool,
    /// oneDNN's f32 matmul over the bf16 weights, which serves the bf16 products on CPUs
    /// without a bf16 instruction ([`bf16::widened`]); made on first use, `None` where it
    /// could not be made.
    bwide: Box<OnceLock<Option<onednn::Gemm>>>,
    /// oneDNN's matmul per precision ([`onednn::Kind`]), made on first use where the library
    /// loaded and passed its self-check; `None` where it could not be made.
    onednn: Box<[OnceLock<Option<onednn::Gemm>>; 3]>,
    observer: Mutex<Option<Observer>>,
}

thread_local! {
    /// Quantized activations, reused across calls on the compute thread.
    static QACTS: RefCell<QActs> = RefCell::new(QActs::new());
    /// Activations rounded to bf16, likewise.
    static BACTS: RefCell<Bf16Acts> = RefCell::new(Bf16Acts::new());
}

impl Linear {
    /// Load `{name}.weight` (`[out, in]`, PyTorch layout) and `{name}.bias`.
    pub fn load(w: &Weights, name: &str, inputs: usize, outputs: usize) -> Result<Self> {
        Self::concat(w, &[name], inputs, outputs)
    }

    /// Several layers with the same input side by side (`outputs` each), as one wider layer:
    /// the Q, K and V projections become one GEMM.
    pub fn concat(w: &Weights, names: &[&str], inputs: usize, outputs: usize) -> Result<Self> {
        let mut rows = Vec::with_capacity(inputs * outputs * names.len());
        let mut bias = Vec::with_capacity(outputs * names.len());
        for name in names {
            rows.extend(w.get(&format!("{name}.weight"), &[outputs, inputs])?);
            bias.extend(w.get(&format!("{name}.bias"), &[outputs])?);
        }
        Ok(Self::from_rows(&rows, bias, outputs * names.len(), inputs))
    }

    /// A layer from its weights in PyTorch layout (`[outputs, inputs]`) and bias.
    ///
    /// Where every float product of the layer will run on oneDNN (the library loaded and the
    /// layer is large enough: [`onednn::prefer`] for one row), oneDNN's matmul is made now and
    /// its reordered weights are the only float copy kept — checked to give back `rows`
    /// exactly, which is how the INT8 and bf16 weights are made from them later. Elsewhere
    /// samp packs them for its own kernels.
    pub fn from_rows(rows: &[f32], bias: Vec<f32>, outputs: usize, inputs: usize) -> Self {
        assert_eq!(bias.len(), outputs, "Linear: bias length");
        let onednn: Box<[OnceLock<Option<onednn::Gemm>>; 3]> = Default::default();
        let only_onednn = onednn::prefer(Kind::F32, inputs, outputs, 1, 0)
            .then(|| onednn_only(rows, outputs, inputs))
            .flatten();
        let weights = match only_onednn {
            Some(g) => {
                _ = onednn[Kind::F32.index()].set(Some(g));
                None
            }
            None => Some(PackedWeights::from_rows(rows, outputs, inputs)),
        };
        Linear {
            weights,
            inputs,
            outputs,
            bias,
            qweights: OnceLock::new(),
            weight_bits: crate::quant::plan::preferred_weight_bits(),
            int8: None,
            bweights: OnceLock::new(),
            bf16: false,
            bwide: Box::default(),
            onednn,
            observer: Mutex::new(None),
        }
    }

    /// The float weights in PyTorch layout `[out, in]` (unpacked; for another device, and to
    /// make the INT8 and bf16 weights).
    pub fn float_rows(&self) -> Vec<f32> {
        match &self.weights {
            Some(w) => w.to_rows(),
            // Checked at construction to give back the rows exactly.
            None => self
                .only_onednn()
                .f32_rows()
                .unwrap_or_else(|e| panic!("oneDNN gave back its weights before: {e}")),
        }
    }

    /// oneDNN's f32 matmul of a layer whose only float copy it holds.
    fn only_onednn(&self) -> &onednn::Gemm {
        self.onednn[Kind::F32.index()]
            .get()
            .and_then(Option::as_ref)
            .expect("a layer without packed weights has oneDNN's matmul")
    }

    /// The INT8 weights (quantized from the float ones on first use).
    pub fn qweights(&self) -> Arc<QWeights> {
        self.qweights
            .get_or_init(|| {
                Arc::new(QWeights::quantize(
                    &self.float_rows(),
                    self.outputs,
                    self.inputs,
                    self.weight_bits,
                ))
            })
            .clone()
    }

    /// Use these INT8 weights (from a saved artifact) instead of quantizing the float ones.
    pub fn set_qweights(&mut self, q: QWeights) -> std::result::Result<(), String> {
        if q.n != self.outputs() || q.k != self.inputs() {
            return Err(format!(
                "int8 weights are [{}, {}], the layer is [{}, {}]",
                q.n,
                q.k,
                self.outputs(),
                self.inputs()
            ));
        }
        self.weight_bits = q.bits;
        self.qweights = OnceLock::from(Arc::new(q));
        self.onednn[Kind::Int8.index()] = OnceLock::new();
        Ok(())
    }

    /// Make INT8 weights of this width from now on; weights of another width are dropped
    /// (and re-made from the float ones on next use).
    pub fn set_weight_bits(&mut self, bits: u32) {
        if self.weight_bits != bits {
            self.weight_bits = bits;
            self.qweights = OnceLock::new();
            self.onednn[Kind::Int8.index()] = OnceLock::new();
        }
    }

    pub fn weight_bits(&self) -> u32 {
        self.weight_bits
    }

    /// Run in INT8 with this activation scaling, or in float (`None`).
    pub fn set_int8(&mut self, act: Option<ActScale>) {
        if act.is_some() {
            self.qweights();
        }
        self.int8 = act;
    }

    pub fn int8(&self) -> Option<ActScale> {
        self.int8
    }

    /// Run in bf16 (`true`) or not; INT8, when also set, takes precedence. What the products
    /// will run on is made now (for one row: what a whole batch uses, unless only the bf16
    /// kernels take a single row).
    pub fn set_bf16(&mut self, on: bool) {
        if on && self.widened(1).is_none() {
            self.bweights();
        }
        self.bf16 = on;
    }

    pub fn bf16(&self) -> bool {
        self.bf16 && self.int8.is_none()
    }

    /// The weights rounded to bf16 (made from the float ones on first use).
    pub fn bweights(&self) -> Arc<Bf16Weights> {
        self.bweights
            .get_or_init(|| {
                Arc::new(Bf16Weights::from_rows(
                    &self.float_rows(),
                    self.outputs,
                    self.inputs,
                ))
            })
            .clone()
    }

    /// Start (or stop) recording the inputs of this layer.
    pub fn observe(&self, on: bool) {
        let mut o = self.observer.lock().unwrap_or_else(|e| e.into_inner());
        *o = on.then(Observer::new);
    }

    /// What the observer recorded so far.
    pub fn observed(&self) -> Option<Observer> {
        self.observer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// `out = act(x · Wᵀ + b [+ out])` for `rows` rows; `residual` adds onto what `out` holds.
    pub fn forward(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        residual: bool,
        act: Option<Activation>,
    ) {
        self.run(x, rows, out, self.epilogue(residual, act));
    }

    /// As [`forward`](Self::forward) without a residual, the outputs going to a next layer that
    /// runs in INT8 with input scales `scale` ([`fused_input`](Self::fused_input)): they are
    /// quantized into `q` by the GEMM, and `out` (`rows × outputs`) is only scratch. The bytes
    /// and scales are those that quantizing `out` afterwards would give. A static scale is
    /// applied in the epilogue itself ([`Epilogue::to_int8`]); dynamic (per-row) scales block
    /// by block where an INT8 layer runs on oneDNN ([`int8::matmul_onednn_dynamic`]) or on
    /// samp's fused kernel with enough rows
    /// ([`int8::matmul_dynamic`]). Elsewhere (rows that would need padding, other kernels, an
    /// observed layer) the outputs are written to `out` and quantized from there.
    pub fn forward_quantized(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        act: Option<Activation>,
        scale: ActScale,
        q: &mut QActs,
    ) {
        let n = self.outputs();
        match scale {
            ActScale::Static(s) => {
                if let Some(to) = q.fused_output(out, rows, n, s) {
                    let ep = Epilogue {
                        to_int8: Some(to),
                        ..self.epilogue(false, act)
                    };
                    return self.run(x, rows, out, ep);
                }
            }
            ActScale::Dynamic => {
                if let (Some(own), false) = (self.int8, self.observing()) {
                    return QACTS.with_borrow_mut(|qa| {
                        qa.quantize(x, rows, self.inputs(), own);
                        let (w, ep) = (&self.qweights(), self.epilogue(false, act));
                        let done = match self.onednn_for(Kind::Int8, rows, Output::DynamicInt8) {
                            Some(g) => int8::matmul_onednn_dynamic(qa, w, g, ep, q),
                            None => int8::matmul_dynamic(qa, w, ep, q),
                        };
                        if !done {
                            self.int8_matmul(qa, out, ep);
                            q.quantize(out, rows, n, scale);
                        }
                    });
                }
            }
        }
        self.forward(x, rows, out, false, act);
        q.quantize(out, rows, n, scale);
    }

    /// The scales of this layer's input where the previous layer may quantize its outputs for
    /// it ([`forward_quantized`](Self::forward_quantized)), then
    /// [`forward_int8`](Self::forward_int8) runs it: INT8, and no observer recording its float
    /// inputs.
    pub fn fused_input(&self) -> Option<ActScale> {
        self.int8.filter(|_| !self.observing())
    }

    /// As [`forward`](Self::forward), from the input already quantized for this layer (by
    /// [`forward_quantized`](Self::forward_quantized) with this layer's scale).
    pub fn forward_int8(
        &self,
        x: &QActs,
        rows: usize,
        out: &mut [f32],
        residual: bool,
        act: Option<Activation>,
    ) {
        assert!(
            self.int8.is_some() && x.shape() == (rows, self.inputs().next_multiple_of(4)),
            "forward_int8: the input was not quantized for this layer"
        );
        self.int8_matmul(x, out, self.epilogue(residual, act));
    }

    fn epilogue(&self, residual: bool, act: Option<Activation>) -> Epilogue<'_> {
        Epilogue {
            bias: Some(&self.bias),
            accumulate: residual,
            act,
            to_int8: None,
        }
    }

    fn observing(&self) -> bool {
        self.observer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn run(&self, x: &[f32], rows: usize, out: &mut [f32], ep: Epilogue<'_>) {
        {
            let mut o = self.observer.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(o) = o.as_mut() {
                o.record(&x[..rows * self.inputs()]);
            }
        }
        match self.int8 {
            Some(scale) => QACTS.with_borrow_mut(|qa| {
                qa.quantize(x, rows, self.inputs(), scale);
                self.int8_matmul(qa, out, ep)
            }),
            None if self.bf16 => match self.widened(rows) {
                Some(g) => bf16::widened::matmul(x, rows, g, out, ep),
                None => BACTS.with_borrow_mut(|b| {
                    b.round(x, rows, self.inputs());
                    match self.onednn(Kind::Bf16, rows) {
                        Some(g) => bf16::matmul_onednn(b, g, out, ep),
                        None => bf16::matmul(b, &self.bweights(), out, ep),
                    }
                }),
            },
            None => match &self.weights {
                None => packed::matmul_onednn(x, rows, self.only_onednn(), out, ep),
                Some(w) => match self.onednn(Kind::F32, rows) {
                    Some(g) => packed::matmul_onednn(x, rows, g, out, ep),
                    None => packed::matmul(x, rows, w, out, ep),
                },
            },
        }
    }

    fn int8_matmul(&self, x: &QActs, out: &mut [f32], ep: Epilogue<'_>) {
        let q = self.qweights();
        match self.onednn(Kind::Int8, x.shape().0) {
            Some(g) => int8::matmul_onednn(x, &q, g, out, ep),
            None => int8::matmul(x, &q, out, ep),
        }
    }

    /// Make now what this layer would otherwise make on first use at up to `max_rows` rows —
    /// its INT8 races against oneDNN for outputs going where `out` says
    /// ([`onednn::prefer_for`]; for a dynamic next layer also the floats' race, which runs
    /// where samp's row blocks decline few rows) and oneDNN's INT8 matmul where it won — so
    /// that a server's first requests of each size do not wait for them.
    pub fn prepare(&self, max_rows: usize, out: Output) {
        if self.int8.is_some() {
            for rows in onednn::row_buckets(max_rows) {
                _ = self.onednn_for(Kind::Int8, rows, out);
                _ = self.onednn(Kind::Int8, rows);
            }
        }
    }

    /// oneDNN's f32 matmul over the bf16 weights, where it serves bf16 products of `rows` rows
    /// ([`bf16::widened::serves`]) and could be made.
    fn widened(&self, rows: usize) -> Option<&onednn::Gemm> {
        let (k, n) = (self.inputs(), self.outputs());
        if !bf16::widened::serves(k, n, rows) {
            return None;
        }
        self.bwide
            .get_or_init(|| {
                bf16::widened::gemm(&self.float_rows(), n, k)
                    .map_err(|e| tracing::warn!("bf16 [{n}, {k}] stays on samp's kernels: {e}"))
                    .ok()
            })
            .as_ref()
    }

    /// oneDNN's matmul for this precision, where it runs and beat samp's kernel at this shape
    /// (see [`onednn::prefer`]), the outputs going to floats.
    fn onednn(&self, kind: Kind, rows: usize) -> Option<&onednn::Gemm> {
        self.onednn_for(kind, rows, Output::Floats)
    }

    /// As [`onednn`](Self::onednn), the outputs going where `out` says.
    fn onednn_for(&self, kind: Kind, rows: usize, out: Output) -> Option<&onednn::Gemm> {
        let (k, n, bits) = (self.inputs(), self.outputs(), self.weight_bits);
        if !onednn::prefer_for(kind, k, n, rows, bits, out) {
            return None;
        }
        self.onednn[kind.index()]
            .get_or_init(|| {
                let (n, k) = (self.outputs(), self.inputs());
                let made = match kind {
                    Kind::F32 => onednn::Gemm::f32(&self.float_rows(), n, k),
                    Kind::Bf16 => bf16::onednn_gemm(&self.float_rows(), n, k),
                    Kind::Int8 => int8::onednn_gemm(&self.qweights()),
                };
                made.map_err(|e| tracing::warn!("[{n}, {k}] stays on samp's kernels: {e}"))
                    .ok()
            })
            .as_ref()
    }

    /// `x · Wᵀ + b` for a single vector (heads).
    pub fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0.0; self.outputs()];
        self.forward(x, 1, &mut out, false, None);
        out
    }
}

/// oneDNN's f32 matmul over `rows` (`[n, k]`), where it gives them back exactly (so it can
/// be the layer's only float copy); logged and `None` otherwise.
fn onednn_only(rows: &[f32], n: usize, k: usize) -> Option<onednn::Gemm> {
    let made = onednn::Gemm::f32(rows, n, k).and_then(|g| match g.f32_rows() {
        Ok(back) if back == rows => Ok(g),
        Ok(_) => Err("its weights came back different".into()),
        Err(e) => Err(e),
    });
    made.map_err(|e| tracing::warn!("[{n}, {k}] keeps samp's packed f32 weights: {e}"))
        .ok()
}

#[cfg(test)]
mod tests;
