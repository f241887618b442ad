//! `samp kernels`: which GEMM micro-kernel each precision uses on this host, whether every
//! kernel the CPU supports passes its self-check, each one's rate at the model shapes, and the
//! peak of the best multiply-add instruction (so rates read as a share of the hardware); and
//! oneDNN's matmul per precision where the library loads (`kernels::onednn`).

use std::time::Instant;

use clap::Args;

use crate::kernels::bf16::{Bf16Acts, Bf16Kernel, Bf16Weights, BF16_KERNELS};
use crate::kernels::int8::{ActScale, Int8Kernel, QActs, QWeights, INT8_KERNELS};
use crate::kernels::onednn::{self, Kind};
use crate::kernels::packed::{matmul_with, Epilogue, F32Kernel, PackedWeights, F32_KERNELS};
use crate::kernels::peak::Probe;
use crate::kernels::{bf16, int8, packed};

#[derive(Debug, Args)]
pub struct KernelsArgs {
    /// Rows (tokens) of the activations.
    #[arg(long, default_value_t = 1024)]
    pub rows: usize,
    /// Seconds to time each kernel at each shape (and each peak probe).
    #[arg(long, default_value_t = 0.5)]
    pub seconds: f64,
    /// Only the detected kernels (not every supported one).
    #[arg(long)]
    pub detected_only: bool,
    /// Only the shapes whose name contains this (e.g. `minilm`, `attn_out`), for profiling one.
    #[arg(long)]
    pub shape: Option<String>,
    /// Skip the instruction peak probes.
    #[arg(long)]
    pub no_peaks: bool,
}

/// (name, k, n): the four GEMMs of a MiniLM layer and of a BERT-base layer.
const SHAPES: [(&str, usize, usize); 8] = [
    ("minilm.qkv", 384, 1152),
    ("minilm.attn_out", 384, 384),
    ("minilm.ffn_up", 384, 1536),
    ("minilm.ffn_down", 1536, 384),
    ("bert-base.qkv", 768, 2304),
    ("bert-base.attn_out", 768, 768),
    ("bert-base.ffn_up", 768, 3072),
    ("bert-base.ffn_down", 3072, 768),
];

fn data(len: usize, seed: usize, scale: f32) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0) * scale)
        .collect()
}

/// Best of several timed runs of `f` over about `seconds`, as operations per second.
fn rate(ops: f64, seconds: f64, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut best = f64::INFINITY;
    while start.elapsed().as_secs_f64() < seconds || best.is_infinite() {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    ops / best
}

pub fn run_kernels(a: &KernelsArgs) -> anyhow::Result<()> {
    let m = a.rows;
    let threads = rayon::current_num_threads();
    let peaks = peaks(a, threads);
    let f32_detected = F32Kernel::detect();
    let f32_kernels: Vec<&F32Kernel> = if a.detected_only {
        vec![f32_detected]
    } else {
        F32_KERNELS.iter().filter(|k| k.supported()).collect()
    };
    let mut kernels = Vec::new();
    for k in &f32_kernels {
        kernels.push(serde_json::json!({
            "precision": "float32", "kernel": k.name, "self_check": k.self_check(),
            "detected": std::ptr::eq(*k, f32_detected),
        }));
    }
    let bf16_detected = Bf16Kernel::detect();
    let bf16_kernels: Vec<&Bf16Kernel> = BF16_KERNELS
        .iter()
        .filter(|k| k.supported() && (!a.detected_only || std::ptr::eq(*k, bf16_detected)))
        .collect();
    for k in &bf16_kernels {
        kernels.push(serde_json::json!({
            "precision": "bfloat16", "kernel": k.name, "self_check": k.self_check(),
            "detected": std::ptr::eq(*k, bf16_detected),
        }));
    }
    // Without a bf16 instruction, layers large enough for oneDNN run bf16 on its f32 matmul.
    let widened = !Bf16Kernel::accelerated() && onednn::usable(Kind::F32);
    if widened {
        // Not a table entry (the table's detected one still serves the small products); the
        // self-check is oneDNN's f32 one.
        kernels.push(serde_json::json!({
            "precision": "bfloat16", "kernel": WIDENED, "library": onednn::version(),
            "self_check": true, "detected": false, "usable": true,
        }));
    }
    let int8 = int8_entries(a, &mut kernels);
    let (library, dnnl) = onednn_entries(&mut kernels);
    let mut rates = Vec::new();
    let wanted = |s: &str| a.shape.as_deref().is_none_or(|w| s.contains(w));
    for (shape, k, n) in SHAPES.into_iter().filter(|(s, _, _)| wanted(s)) {
        let x = data(m * k, 1, 2.0);
        let w = data(n * k, 2, 0.1);
        let mut y = vec![0.0f32; m * n];
        let ops = 2.0 * (m * k * n) as f64;
        let pw = PackedWeights::from_rows(&w, n, k);
        for kern in &f32_kernels {
            let r = rate(ops, a.seconds, || {
                matmul_with(&x, m, &pw, &mut y, Epilogue::default(), kern)
            });
            eprintln!(
                "{shape:<20} {m}x{k}x{n} {:<24} {:>8.1} GFLOP/s",
                kern.name,
                r / 1e9
            );
            rates.push(serde_json::json!({"shape": shape, "m": m, "k": k, "n": n,
                "precision": "float32", "kernel": kern.name, "gops": r / 1e9}));
        }
        let bw = Bf16Weights::from_rows(&w, n, k);
        for kern in &bf16_kernels {
            let mut b = Bf16Acts::new();
            let r = rate(ops, a.seconds, || {
                b.round(&x, m, k);
                crate::kernels::bf16::matmul_with(&b, &bw, &mut y, Epilogue::default(), kern)
            });
            eprintln!(
                "{shape:<20} {m}x{k}x{n} {:<24} {:>8.1} GFLOP/s (incl. rounding the input)",
                kern.name,
                r / 1e9
            );
            rates.push(serde_json::json!({"shape": shape, "m": m, "k": k, "n": n,
                "precision": "bfloat16", "kernel": kern.name, "gops": r / 1e9}));
        }
        if widened && bf16::widened::serves(k, n, m) {
            rates.push(widened_rate(shape, &x, &w, (m, k, n), a.seconds, &mut y)?);
        }
        for (bits, kern) in &int8 {
            let qw = QWeights::quantize(&w, n, k, *bits);
            let mut q = QActs::new();
            let r = rate(ops, a.seconds, || {
                q.quantize(&x, m, k, ActScale::Dynamic);
                crate::kernels::int8::matmul_with(&q, &qw, &mut y, Epilogue::default(), kern)
            });
            eprintln!(
                "{shape:<20} {m}x{k}x{n} {:<24} {:>8.1} Gop/s ({bits}-bit, incl. quantizing)",
                kern.name,
                r / 1e9
            );
            rates.push(serde_json::json!({"shape": shape, "m": m, "k": k, "n": n,
                "precision": "int8", "weight_bits": bits, "kernel": kern.name,
                "includes_quantize": true, "gops": r / 1e9}));
        }
        for &kind in &dnnl {
            rates.extend(onednn_rates(
                kind,
                &x,
                &w,
                (m, k, n),
                a.seconds,
                &mut y,
                shape,
                &library,
            )?);
        }
    }
    let out = serde_json::json!({
        "onednn": library,
        "max_isa": crate::kernels::isa::max_isa().map(|c| c.name()).unwrap_or("native"),
        "threads": threads,
        "rows": m,
        "peaks_gops": peaks,
        "kernels": kernels,
        "rates": rates,
    });
    println!("{out}");
    Ok(())
}

/// The bf16 layers' path on CPUs without a bf16 instruction: oneDNN's f32 matmul over the
/// rounded values (`kernels::bf16::widened`).
const WIDENED: &str = "bf16-on-onednn-f32";

/// The rate of bf16 on oneDNN's f32 matmul (incl. rounding the input), as a row of the table.
fn widened_rate(
    shape: &str,
    x: &[f32],
    w: &[f32],
    (m, k, n): (usize, usize, usize),
    seconds: f64,
    y: &mut [f32],
) -> anyhow::Result<serde_json::Value> {
    let g = bf16::widened::gemm(w, n, k).map_err(|e| anyhow::anyhow!("{WIDENED}: {e}"))?;
    let r = rate(2.0 * (m * k * n) as f64, seconds, || {
        bf16::widened::matmul(x, m, &g, y, Epilogue::default())
    });
    eprintln!(
        "{shape:<20} {m}x{k}x{n} {WIDENED:<24} {:>8.1} GFLOP/s (incl. rounding the input)",
        r / 1e9
    );
    Ok(serde_json::json!({"shape": shape, "m": m, "k": k, "n": n,
        "precision": "bfloat16", "kernel": WIDENED, "gops": r / 1e9}))
}

fn precision_name(kind: Kind) -> &'static str {
    match kind {
        Kind::F32 => "float32",
        Kind::Bf16 => "bfloat16",
        Kind::Int8 => "int8",
    }
}

/// oneDNN's rate on one shape, timed as samp's kernels are (bf16 incl. rounding the input,
/// INT8 incl. quantizing it), and the implementation it picked.
fn onednn_rate(
    kind: Kind,
    bits: u32,
    x: &[f32],
    w: &[f32],
    (m, k, n): (usize, usize, usize),
    seconds: f64,
    y: &mut [f32],
) -> anyhow::Result<(String, f64)> {
    let ops = 2.0 * (m * k * n) as f64;
    let ep = Epilogue::default;
    let fail = |e: String| anyhow::anyhow!("oneDNN {kind:?} at {m}x{k}x{n}: {e}");
    Ok(match kind {
        Kind::F32 => {
            let g = packed::onednn_gemm(&PackedWeights::from_rows(w, n, k)).map_err(fail)?;
            let r = rate(ops, seconds, || packed::matmul_onednn(x, m, &g, y, ep()));
            (g.name().to_string(), r)
        }
        Kind::Bf16 => {
            let g = bf16::onednn_gemm(w, n, k).map_err(fail)?;
            let mut b = Bf16Acts::new();
            let r = rate(ops, seconds, || {
                b.round(x, m, k);
                bf16::matmul_onednn(&b, &g, y, ep())
            });
            (g.name().to_string(), r)
        }
        Kind::Int8 => {
            let qw = QWeights::quantize(w, n, k, bits);
            let g = int8::onednn_gemm(&qw).map_err(fail)?;
            let mut q = QActs::new();
            let r = rate(ops, seconds, || {
                q.quantize(x, m, k, ActScale::Dynamic);
                int8::matmul_onednn(&q, &qw, &g, y, ep())
            });
            (g.name().to_string(), r)
        }
    })
}

/// oneDNN's entries, where the library loads: each precision's self-check (the layers use it
/// per shape where it wins the race, `kernels::onednn::prefer`). Returns the library's name and
/// the precisions that passed.
fn onednn_entries(kernels: &mut Vec<serde_json::Value>) -> (Option<String>, Vec<Kind>) {
    let library = onednn::version().map(|v| format!("onednn {v}"));
    let dnnl: Vec<Kind> = [Kind::F32, Kind::Bf16, Kind::Int8]
        .into_iter()
        .filter(|&kind| library.is_some() && onednn::usable(kind))
        .collect();
    if let Some(lib) = &library {
        for kind in [Kind::F32, Kind::Bf16, Kind::Int8] {
            let precision = precision_name(kind);
            let outcome = onednn::outcome(kind);
            if outcome == onednn::Outcome::Unavailable {
                // Not a kernel of this CPU (bf16 below AVX-512): like samp's own, left out.
                eprintln!("{lib}: no {precision} matmul on this CPU");
                continue;
            }
            let passed = outcome == onednn::Outcome::Passed;
            eprintln!(
                "{lib}: {precision} {}",
                match kind {
                    _ if !passed => "FAILS its self-check: samp's kernels serve",
                    Kind::F32 => "passes its self-check (the f32 layers use it)",
                    Kind::Bf16 => "passes its self-check (used with SAMP_ONEDNN=always)",
                    Kind::Int8 if onednn::int8_bits() < 8 => {
                        "passes its self-check for 7-bit weights (used per shape where it wins \
                         the race)"
                    }
                    Kind::Int8 => "passes its self-check (used per shape where it wins the race)",
                }
            );
            let mut entry = serde_json::json!({
                "precision": precision, "kernel": "onednn", "library": lib,
                "self_check": passed, "detected": false, "usable": passed,
            });
            if kind == Kind::Int8 {
                entry["weight_bits"] = onednn::int8_bits().into();
            }
            kernels.push(entry);
        }
    }
    (library, dnnl)
}

fn peaks(a: &KernelsArgs, threads: usize) -> serde_json::Map<String, serde_json::Value> {
    let mut peaks = serde_json::Map::new();
    for p in Probe::ALL.iter().filter(|_| !a.no_peaks) {
        if let Some(r) = p.measure(a.seconds) {
            eprintln!(
                "peak {:<18} {:>8.1} Gop/s ({threads} threads)",
                p.name(),
                r / 1e9
            );
            peaks.insert(p.name().into(), serde_json::json!(r / 1e9));
        }
    }
    peaks
}

/// oneDNN's rows of the table for one precision and shape (INT8: 8- and 7-bit weights).
#[allow(clippy::too_many_arguments)]
fn onednn_rates(
    kind: Kind,
    x: &[f32],
    w: &[f32],
    (m, k, n): (usize, usize, usize),
    seconds: f64,
    y: &mut [f32],
    shape: &str,
    library: &Option<String>,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut rates = Vec::new();
    let bits: &[u32] = if kind == Kind::Int8 { &[8, 7] } else { &[0] };
    // INT8: only the widths oneDNN computes exactly on this CPU.
    for &bits in bits.iter().filter(|&&b| b <= onednn::int8_bits() || b == 0) {
        let (name, r) = onednn_rate(kind, bits, x, w, (m, k, n), seconds, y)?;
        let precision = precision_name(kind);
        let note = if bits > 0 {
            format!(" {bits}-bit, incl. quantizing")
        } else {
            String::new()
        };
        eprintln!(
            "{shape:<20} {m}x{k}x{n} onednn {name:<17} {:>8.1} Gop/s ({precision}{note})",
            r / 1e9
        );
        let mut row = serde_json::json!({"shape": shape, "m": m, "k": k, "n": n,
            "precision": precision, "kernel": format!("onednn:{name}"),
            "library": library, "gops": r / 1e9});
        if bits > 0 {
            row["weight_bits"] = bits.into();
            row["includes_quantize"] = true.into();
        }
        rates.push(row);
    }
    Ok(rates)
}

/// The INT8 kernels to time (each width's detected one, or every supported one), with their
/// entries in `kernels`.
fn int8_entries(
    a: &KernelsArgs,
    kernels: &mut Vec<serde_json::Value>,
) -> Vec<(u32, &'static Int8Kernel)> {
    let mut int8: Vec<(u32, &Int8Kernel)> = Vec::new();
    for bits in [8u32, 7, 6] {
        let det = Int8Kernel::detect(bits);
        for k in INT8_KERNELS
            .iter()
            .filter(|k| k.supported() && k.max_bits >= bits)
        {
            if a.detected_only && !std::ptr::eq(k, det) {
                continue;
            }
            kernels.push(serde_json::json!({
                "precision": "int8", "weight_bits": bits, "kernel": k.name,
                "self_check": k.self_check(bits), "detected": std::ptr::eq(k, det),
            }));
            int8.push((bits, k));
        }
    }
    for k in INT8_KERNELS.iter().filter(|k| !k.supported()) {
        eprintln!("not on this CPU: {}", k.name);
    }
    int8
}
