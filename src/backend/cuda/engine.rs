//! The encoder pass on the GPU: weights uploaded once (FP16 for float GEMMs, INT8 + per-channel
//! scales for the plan's INT8 ones), activation buffers kept and grown across batches, one
//! stream. The residual stream and LayerNorm stay in FP32; each GEMM's input is converted
//! (FP16) or quantized (INT8, the plan's static scale or per token) just before it.

use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig,
    PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::blas::{Blas, Kind};
use super::{compile, guarded, Target};
use crate::backend::engine::{Engine, Memory};
use crate::backend::gpu_plan::{self, GemmOp};
use crate::error::{DeviceError, Result};
use crate::model::config::{Activation, ModelConfig};
use crate::model::encoder::{self, Batch, Encoder};
use crate::model::linear::Linear;
use crate::quant::plan::{Gemm, Plan, Precision};

fn drv(what: &'static str) -> impl Fn(cudarc::driver::DriverError) -> String {
    move |e| format!("{what}: {e:?}")
}

struct Funcs {
    embed_layernorm: CudaFunction,
    layernorm: CudaFunction,
    to_half: CudaFunction,
    quantize_rows: CudaFunction,
    bias_act_residual: CudaFunction,
    dequant_bias_act_residual: CudaFunction,
    attention: CudaFunction,
}

enum Weights {
    /// `[n, k]` FP16 bits.
    Fp16(CudaSlice<u16>),
    /// `[n, k]` and the per-output-channel scales.
    Int8 {
        q: CudaSlice<i8>,
        scales: CudaSlice<f32>,
        /// The plan's static input scale; 0 = per token at run time.
        input_scale: f32,
    },
}

struct GpuLinear {
    n: usize,
    k: usize,
    weights: Weights,
    bias: CudaSlice<f32>,
}

struct Norm {
    gamma: CudaSlice<f32>,
    beta: CudaSlice<f32>,
}

struct GpuLayer {
    qkv: GpuLinear,
    out: GpuLinear,
    ln1: Norm,
    up: GpuLinear,
    down: GpuLinear,
    ln2: Norm,
}

struct Tables {
    word: CudaSlice<f32>,
    position: CudaSlice<f32>,
    /// A one-element placeholder when the model has no token types.
    token_type: CudaSlice<f32>,
    type_vocab: i32,
    norm: Norm,
}

/// Per-GEMM scratch: accumulators and the converted or quantized input.
struct Scratch {
    acc_f: CudaSlice<f32>,
    acc_i: CudaSlice<i32>,
    a16: CudaSlice<u16>,
    a8: CudaSlice<i8>,
    scales: CudaSlice<f32>,
}

/// Activation buffers for up to `tokens` tokens.
struct Buffers {
    tokens: usize,
    x: CudaSlice<f32>,
    x1: CudaSlice<f32>,
    qkv: CudaSlice<f32>,
    ctx: CudaSlice<f32>,
    up: CudaSlice<f32>,
    scratch: Scratch,
}

impl Buffers {
    fn new(stream: &Arc<CudaStream>, tokens: usize, h: usize, f: usize) -> Result<Self, String> {
        let widest = (3 * h).max(f);
        let f32s = |n: usize| stream.alloc_zeros::<f32>(n.max(1)).map_err(drv("alloc"));
        Ok(Buffers {
            tokens,
            x: f32s(tokens * h)?,
            x1: f32s(tokens * h)?,
            qkv: f32s(tokens * 3 * h)?,
            ctx: f32s(tokens * h)?,
            up: f32s(tokens * f)?,
            scratch: Scratch {
                acc_f: f32s(tokens * widest)?,
                acc_i: stream
                    .alloc_zeros::<i32>(tokens * widest)
                    .map_err(drv("alloc"))?,
                a16: stream
                    .alloc_zeros::<u16>(tokens * h.max(f))
                    .map_err(drv("alloc"))?,
                a8: stream
                    .alloc_zeros::<i8>(tokens * h.max(f))
                    .map_err(drv("alloc"))?,
                scales: f32s(tokens)?,
            },
        })
    }

    /// Device bytes held.
    fn bytes(&self) -> usize {
        let f32s = self.x.len()
            + self.x1.len()
            + self.qkv.len()
            + self.ctx.len()
            + self.up.len()
            + self.scratch.acc_f.len()
            + self.scratch.scales.len();
        4 * f32s + 4 * self.scratch.acc_i.len() + 2 * self.scratch.a16.len() + self.scratch.a8.len()
    }
}

/// One pass's launch context.
struct Pass<'a> {
    s: &'a Arc<CudaStream>,
    funcs: &'a Funcs,
    blas: &'a mut Blas,
    scratch: &'a mut Scratch,
    t: usize,
}

impl Pass<'_> {
    /// `out = act(input · Wᵀ + b) (+ residual)`, in the layer's precision.
    fn linear(
        &mut self,
        lin: &GpuLinear,
        input: &CudaSlice<f32>,
        residual: Option<&CudaSlice<f32>>,
        act: i32,
        out: &mut CudaSlice<f32>,
    ) -> Result<(), String> {
        let (t, n, k) = (self.t, lin.n, lin.k);
        let (s, sc) = (self.s, &mut *self.scratch);
        let (ti, ni) = (t as i32, n as i32);
        let null = 0u64;
        // SAFETY (launches): argument lists match kernels.cu; buffers hold t·k inputs and
        // t·n outputs (Buffers are sized for the widest GEMM of the model).
        match &lin.weights {
            Weights::Fp16(w) => {
                let count = (t * k) as u64;
                unsafe {
                    s.launch_builder(&self.funcs.to_half)
                        .arg(input)
                        .arg(&mut sc.a16)
                        .arg(&count)
                        .launch(grid(t * k))
                }
                .map_err(drv("to_half"))?;
                {
                    let (a, _ga) = sc.a16.device_ptr(s);
                    let (wp, _gw) = w.device_ptr(s);
                    let (d, _gd) = sc.acc_f.device_ptr_mut(s);
                    self.blas.gemm(s, Kind::Fp16, (t, n, k), a, wp, d)?;
                }
                let mut l = s.launch_builder(&self.funcs.bias_act_residual);
                l.arg(&sc.acc_f).arg(&lin.bias);
                match residual {
                    Some(r) => l.arg(r),
                    None => l.arg(&null),
                };
                unsafe { l.arg(&act).arg(out).arg(&ti).arg(&ni).launch(grid(t * n)) }
                    .map_err(drv("bias_act_residual"))?;
            }
            Weights::Int8 {
                q,
                scales,
                input_scale,
            } => {
                let ki = k as i32;
                unsafe {
                    s.launch_builder(&self.funcs.quantize_rows)
                        .arg(input)
                        .arg(&mut sc.a8)
                        .arg(&mut sc.scales)
                        .arg(&ki)
                        .arg(input_scale)
                        .launch(rows(t))
                }
                .map_err(drv("quantize_rows"))?;
                {
                    let (a, _ga) = sc.a8.device_ptr(s);
                    let (wp, _gw) = q.device_ptr(s);
                    let (d, _gd) = sc.acc_i.device_ptr_mut(s);
                    self.blas.gemm(s, Kind::Int8, (t, n, k), a, wp, d)?;
                }
                let mut l = s.launch_builder(&self.funcs.dequant_bias_act_residual);
                l.arg(&sc.acc_i).arg(scales).arg(&sc.scales).arg(&lin.bias);
                match residual {
                    Some(r) => l.arg(r),
                    None => l.arg(&null),
                };
                unsafe { l.arg(&act).arg(out).arg(&ti).arg(&ni).launch(grid(t * n)) }
                    .map_err(drv("dequant_bias_act_residual"))?;
            }
        }
        Ok(())
    }

    /// LayerNorm of every row of `x`, in place.
    fn norm(&mut self, n: &Norm, x: &mut CudaSlice<f32>, h: usize, eps: f32) -> Result<(), String> {
        let hi = h as i32;
        // SAFETY: matches `layernorm` in kernels.cu; x holds t rows of h.
        unsafe {
            self.s
                .launch_builder(&self.funcs.layernorm)
                .arg(x)
                .arg(&n.gamma)
                .arg(&n.beta)
                .arg(&eps)
                .arg(&hi)
                .launch(rows(self.t))
        }
        .map_err(drv("layernorm"))?;
        Ok(())
    }
}

struct Inner {
    stream: Arc<CudaStream>,
    funcs: Funcs,
    blas: Blas,
    tables: Tables,
    layers: Vec<GpuLayer>,
    bufs: Option<Buffers>,
}

// SAFETY: `Blas` holds raw cuBLASLt handles, which may move between threads but must not be
// used by two at once; `Inner` is only reached through the `Mutex` of `CudaEncoder`.
unsafe impl Send for Inner {}

/// A model's encoder, resident on one GPU.
pub struct CudaEncoder {
    label: String,
    ctx: Arc<CudaContext>,
    cfg: ModelConfig,
    act: i32,
    weight_bytes: usize,
    inner: Mutex<Inner>,
}

fn act_code(a: Activation) -> i32 {
    match a {
        Activation::Gelu => 1,
        Activation::GeluTanh => 2,
        Activation::Relu => 3,
    }
}

fn upload<T: cudarc::driver::DeviceRepr>(
    s: &Arc<CudaStream>,
    v: &[T],
) -> Result<CudaSlice<T>, String> {
    s.clone_htod(v).map_err(drv("upload"))
}

fn upload_linear(
    s: &Arc<CudaStream>,
    lin: &Linear,
    op: GemmOp,
    bytes: &mut usize,
) -> Result<GpuLinear, String> {
    let (n, k) = (lin.outputs(), lin.inputs());
    let weights = match op {
        GemmOp::Fp16 => {
            let w: Vec<u16> = lin
                .float_rows()
                .iter()
                .map(|&v| half::f16::from_f32(v).to_bits())
                .collect();
            *bytes += 2 * w.len();
            Weights::Fp16(upload(s, &w)?)
        }
        GemmOp::Int8 { input_scale } => {
            // The same quantized weights as the CPU kernel: identical integer products.
            let q = lin.qweights();
            *bytes += n * k + 4 * n;
            Weights::Int8 {
                q: upload(s, &q.rows())?,
                scales: upload(s, &q.scales)?,
                input_scale: input_scale.unwrap_or(0.0),
            }
        }
    };
    *bytes += 4 * n;
    Ok(GpuLinear {
        n,
        k,
        weights,
        bias: upload(s, &lin.bias)?,
    })
}

fn grid(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).max(1) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn rows(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaEncoder {
    /// Create a context on GPU `ordinal`, compile the kernels for it and upload `encoder` with
    /// the precisions of `plan`. Errors are reasons to fall back to the CPU.
    pub fn new(ordinal: usize, encoder: &Encoder, plan: &Plan) -> Result<Self, String> {
        let ops = gpu_plan::map(plan, &encoder.cfg)?;
        guarded("CUDA", || Self::build(ordinal, encoder, &ops))
    }

    fn build(ordinal: usize, encoder: &Encoder, ops: &[[GemmOp; 4]]) -> Result<Self, String> {
        let cfg = encoder.cfg.clone();
        let ctx = CudaContext::new(ordinal).map_err(drv("context"))?;
        // SAFETY: all of this encoder's work goes through its one stream, so cudarc's per-buffer
        // events (for ordering across streams) only cost time.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx.compute_capability().map_err(drv("capability"))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let arch = (major * 10 + minor) as u32;
        let module = match compile(Target::Cubin(arch)) {
            Ok(cubin) => ctx.load_module(Ptx::from_binary(cubin)),
            Err(e) => {
                tracing::warn!("no cubin for sm_{arch} ({e}); loading PTX");
                let ptx = compile(Target::Ptx(arch))?;
                ctx.load_module(Ptx::from_src(String::from_utf8_lossy(&ptx).into_owned()))
            }
        }
        .map_err(drv("load kernels"))?;
        let f = |n: &str| {
            module
                .load_function(n)
                .map_err(|e| format!("kernel {n}: {e:?}"))
        };
        let funcs = Funcs {
            embed_layernorm: f("embed_layernorm")?,
            layernorm: f("layernorm")?,
            to_half: f("to_half")?,
            quantize_rows: f("quantize_rows")?,
            bias_act_residual: f("bias_act_residual")?,
            dequant_bias_act_residual: f("dequant_bias_act_residual")?,
            attention: f("attention")?,
        };
        let stream = ctx.new_stream().map_err(drv("stream"))?;
        let mut bytes = 0usize;
        let t = encoder.embedding_tables();
        bytes += 4 * (t.word.len() + t.position.len() + t.token_type.map_or(0, |x| x.len()));
        let tables = Tables {
            word: upload(&stream, t.word)?,
            position: upload(&stream, t.position)?,
            token_type: upload(&stream, t.token_type.unwrap_or(&[0.0]))?,
            type_vocab: if t.token_type.is_some() {
                cfg.type_vocab_size as i32
            } else {
                0
            },
            norm: Norm {
                gamma: upload(&stream, t.gamma)?,
                beta: upload(&stream, t.beta)?,
            },
        };
        let mut layers = Vec::with_capacity(cfg.layers);
        for (layer, op) in encoder.layers().iter().zip(ops) {
            let lin = |g: Gemm, i: usize, bytes: &mut usize| {
                upload_linear(&stream, layer.linear(g), op[i], bytes)
            };
            let [n1, n2] = layer.norms();
            let norm = |n: &crate::model::encoder::LayerNorm| -> Result<Norm, String> {
                Ok(Norm {
                    gamma: upload(&stream, &n.gamma)?,
                    beta: upload(&stream, &n.beta)?,
                })
            };
            layers.push(GpuLayer {
                qkv: lin(Gemm::Qkv, 0, &mut bytes)?,
                out: lin(Gemm::AttnOut, 1, &mut bytes)?,
                ln1: norm(n1)?,
                up: lin(Gemm::FfnUp, 2, &mut bytes)?,
                down: lin(Gemm::FfnDown, 3, &mut bytes)?,
                ln2: norm(n2)?,
            });
            bytes += 16 * cfg.hidden;
        }
        let blas = Blas::new(&stream)?;
        stream.synchronize().map_err(drv("upload"))?;
        Ok(CudaEncoder {
            label: format!("cuda:{ordinal} ({name}, sm_{arch})"),
            act: act_code(cfg.activation),
            cfg,
            ctx,
            weight_bytes: bytes,
            inner: Mutex::new(Inner {
                stream,
                funcs,
                blas,
                tables,
                layers,
                bufs: None,
            }),
        })
    }

    fn run(&self, inner: &mut Inner, batch: &Batch, positions: &[u32]) -> Result<Vec<f32>, String> {
        self.ctx.bind_to_thread().map_err(drv("bind"))?;
        let (h, f) = (self.cfg.hidden, self.cfg.intermediate);
        let t = batch.tokens();
        if t == 0 {
            return Ok(Vec::new());
        }
        let Inner {
            stream,
            funcs,
            blas,
            tables,
            layers,
            bufs,
        } = inner;
        if bufs.as_ref().is_none_or(|b| b.tokens < t) {
            // Grow to the next power of two so a few sizes serve all batches.
            *bufs = None;
            *bufs = Some(Buffers::new(stream, t.next_power_of_two(), h, f)?);
            metrics::gauge!(crate::metrics::DEVICE_MEMORY_BYTES, "device" => self.device_label(), "kind" => "activations")
                .set(bufs.as_ref().map_or(0, Buffers::bytes) as f64);
        }
        let b = bufs.as_mut().expect("allocated above");
        let s = &*stream;

        let ids = upload(s, &batch.ids)?;
        let types = upload(s, &batch.type_ids)?;
        let pos = upload(s, positions)?;
        let starts: Vec<i32> = batch.starts.iter().map(|&v| v as i32).collect();
        let (mut tile_seq, mut tile_q0) = (Vec::new(), Vec::new());
        for q in 0..batch.len() {
            for q0 in (0..batch.seq(q).len()).step_by(32) {
                tile_seq.push(q as i32);
                tile_q0.push(q0 as i32);
            }
        }
        let starts = upload(s, &starts)?;
        let tiles = (upload(s, &tile_seq)?, upload(s, &tile_q0)?);

        let eps = self.cfg.layer_norm_eps;
        let (hi, ti) = (h as i32, tables.type_vocab);
        // SAFETY (every launch below): argument lists match the kernels' signatures in
        // kernels.cu, and every buffer holds at least the elements the grid touches.
        unsafe {
            s.launch_builder(&funcs.embed_layernorm)
                .arg(&ids)
                .arg(&types)
                .arg(&pos)
                .arg(&tables.word)
                .arg(&tables.position)
                .arg(&tables.token_type)
                .arg(&ti)
                .arg(&tables.norm.gamma)
                .arg(&tables.norm.beta)
                .arg(&eps)
                .arg(&hi)
                .arg(&mut b.x)
                .launch(rows(t))
        }
        .map_err(drv("embed_layernorm"))?;

        let heads = self.cfg.heads;
        let d = self.cfg.head_dim();
        let scale = 1.0 / (d as f32).sqrt();
        let di = d as i32;
        let Buffers {
            x,
            x1,
            qkv,
            ctx,
            up,
            scratch,
            ..
        } = b;
        let mut pass = Pass {
            s,
            funcs,
            blas,
            scratch,
            t,
        };
        let attention = LaunchConfig {
            grid_dim: (tile_seq.len() as u32, heads as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: 0,
        };
        for layer in layers.iter() {
            pass.linear(&layer.qkv, x, None, 0, qkv)?;
            // SAFETY: matches `attention` in kernels.cu; the tiles cover the batch's tokens.
            unsafe {
                s.launch_builder(&pass.funcs.attention)
                    .arg(&*qkv)
                    .arg(&mut *ctx)
                    .arg(&starts)
                    .arg(&tiles.0)
                    .arg(&tiles.1)
                    .arg(&hi)
                    .arg(&di)
                    .arg(&scale)
                    .launch(attention)
            }
            .map_err(drv("attention"))?;
            pass.linear(&layer.out, ctx, Some(x), 0, x1)?;
            pass.norm(&layer.ln1, x1, h, eps)?;
            pass.linear(&layer.up, x1, None, self.act, up)?;
            pass.linear(&layer.down, up, Some(x1), 0, x)?;
            pass.norm(&layer.ln2, x, h, eps)?;
        }
        let out = s.clone_dtoh(&x.slice(0..t * h)).map_err(drv("download"))?;
        s.synchronize().map_err(drv("synchronize"))?;
        Ok(out)
    }
}

impl CudaEncoder {
    /// `cuda:N`, for metric labels.
    fn device_label(&self) -> String {
        self.label
            .split_whitespace()
            .next()
            .unwrap_or("cuda")
            .to_string()
    }
}

impl Engine for CudaEncoder {
    fn forward(&self, batch: &Batch) -> Result<Vec<f32>> {
        encoder::check(&self.cfg, batch)?;
        let positions = encoder::positions(&self.cfg, batch);
        let mut inner = self.inner.lock().map_err(|_| DeviceError::Poisoned)?;
        let states = guarded("CUDA", || self.run(&mut inner, batch, &positions))
            .map_err(DeviceError::Pass)?;
        encoder::finite(states)
    }

    fn supports(&self, precision: Precision) -> bool {
        gpu_plan::PRECISIONS.contains(&precision)
    }

    fn device(&self) -> String {
        self.label.clone()
    }

    fn memory(&self) -> Memory {
        Memory {
            device_weight_bytes: self.weight_bytes,
        }
    }
}
