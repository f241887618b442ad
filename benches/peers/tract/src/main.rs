//! tract-linalg's matmul kernels at samp's model shapes (BENCHMARKS.md, "library evaluation"):
//! every kernel this host runs for f32 (f32 or bf16-packed) and i8 inputs, on tract's own
//! 2-thread executor, as JSON lines. Weights are packed once; each call packs the activations
//! (and, for INT8, first quantizes them per row to i8), as a layer would; INT8 is also timed
//! with the input quantized once outside the timing ("i8-kernel"), tract's kernel alone.
//!
//!     tract-gemm [--rows 1024] [--seconds 0.5] [--threads 2]
use std::time::Instant;

use tract_data::internal::*;
use tract_linalg::mmm::{AsInputValue, FusedSpec, MatMatMul};
use tract_linalg::multithread::{set_default_executor, Executor};
use tract_linalg::{MmmDispatch, WeightType};

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

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn fill(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Per-row symmetric i8 quantization (what a dynamic INT8 layer does to its input).
fn quantize_rows(x: &[f32], k: usize, q: &mut [i8]) {
    for (xr, qr) in x.chunks(k).zip(q.chunks_mut(k)) {
        let amax = xr.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-12);
        let inv = 127.0 / amax;
        for (v, o) in xr.iter().zip(qr.iter_mut()) {
            *o = (v * inv).round() as i8;
        }
    }
}

/// Best seconds of one call over `seconds`.
fn best(seconds: f64, mut f: impl FnMut()) -> f64 {
    f();
    let (start, mut b) = (Instant::now(), f64::INFINITY);
    while start.elapsed().as_secs_f64() < seconds || b.is_infinite() {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64());
    }
    b
}

fn run(
    mmm: &dyn MatMatMul,
    packing: usize,
    input: &str,
    m: usize,
    k: usize,
    n: usize,
    s: f64,
) -> TractResult<f64> {
    // y[m, n] = x[m, k] · W[n, k]ᵀ: tract's A operand is the weights (its m = our n, packed
    // once), B the activations (packed every call), C stored into y's [m, n] layout.
    let (pa_fmt, pb_fmt) = &mmm.packings()[packing];
    // "i8": quantized in every call; "i8-kernel": quantized once, outside the timing.
    let (int8, requantize) = (input != "f32", input == "i8");
    let w = fill(n * k, 7);
    let x = fill(m * k, 11);
    let wt = if int8 {
        let mut q = vec![0i8; n * k];
        quantize_rows(&w, k, &mut q);
        Tensor::from_shape(&[n, k], &q)?
    } else {
        Tensor::from_shape(&[n, k], &w)?
    };
    let pa = pa_fmt.prepare_one(&wt, 1, 0)?;
    let mut xq = vec![0i8; m * k];
    quantize_rows(&x, k, &mut xq);
    let xt = Tensor::from_shape(&[m, k], &x)?;
    let out_dt = if int8 { DatumType::I32 } else { DatumType::F32 };
    let mut y = Tensor::zero_dt(out_dt, &[m, n])?;
    let call = |xq: &mut Vec<i8>, y: &mut Tensor| -> TractResult<()> {
        let pb = if int8 {
            if requantize {
                quantize_rows(&x, k, xq);
            }
            pb_fmt.prepare_one(&Tensor::from_shape(&[m, k], xq)?, 1, 0)?
        } else {
            pb_fmt.prepare_one(&xt, 1, 0)?
        };
        unsafe {
            let c = mmm.c_view(Some(1), Some(0)).wrap(&y.view_mut());
            mmm.run(
                n,
                m,
                &[
                    FusedSpec::AddMatMul {
                        a: AsInputValue::Borrowed(&*pa),
                        b: AsInputValue::Borrowed(&*pb),
                        packing,
                    },
                    FusedSpec::Store(c),
                ],
            )
        }
    };
    call(&mut xq, &mut y)?;
    // Check one output against a direct sum (the quantized operands for INT8).
    let wq: Vec<f32> = if int8 {
        wt.to_plain_array_view::<i8>()?
            .iter()
            .map(|&v| v as f32)
            .collect()
    } else {
        w.clone()
    };
    let xs: Vec<f32> = if int8 {
        xq.iter().map(|&v| v as f32).collect()
    } else {
        x.clone()
    };
    let worst = [(0, 0), (m - 1, n - 1), (m / 2, n / 3)]
        .iter()
        .map(|&(r, c)| {
            let want: f64 = (0..k)
                .map(|i| xs[r * k + i] as f64 * wq[c * k + i] as f64)
                .sum();
            let got = if int8 {
                y.to_plain_array_view::<i32>().unwrap()[[r, c]] as f64
            } else {
                y.to_plain_array_view::<f32>().unwrap()[[r, c]] as f64
            };
            (got - want).abs() / (want.abs() + 1.0)
        })
        .fold(0f64, f64::max);
    let mut err = None;
    let secs = best(s, || {
        if let Err(e) = call(&mut xq, &mut y) {
            err = Some(e);
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    if s > 0.05 {
        eprintln!("  {} {input} {m}x{k}x{n}: rel err {worst:.2e}", mmm.name());
    }
    Ok(secs)
}

fn main() -> TractResult<()> {
    let rows = arg("--rows", 1024.0) as usize;
    let seconds = arg("--seconds", 0.5);
    let threads = arg("--threads", 2.0) as usize;
    set_default_executor(Executor::multithread(threads));
    let dispatch = MmmDispatch::native();
    for &(shape, k, n) in &SHAPES {
        let preferred = |acc| {
            dispatch
                .preferred_kernel(acc, Some(n), Some(k), Some(rows))
                .map(|k| k.name().to_string())
        };
        let (preferred_f32, preferred_i32) = (preferred(DatumType::F32), preferred(DatumType::I32));
        // Every kernel and packing of f32 or i8 inputs that this host runs.
        let mut candidates = vec![];
        for mmm in dispatch.runnable() {
            let acc = mmm.internal_type();
            for (ix, (a, b)) in mmm.packings().iter().enumerate() {
                let input = match (a.precursor(), b.precursor(), acc) {
                    (
                        WeightType::Plain(DatumType::F32),
                        WeightType::Plain(DatumType::F32),
                        DatumType::F32,
                    ) => "f32",
                    (
                        WeightType::Plain(DatumType::I8),
                        WeightType::Plain(DatumType::I8),
                        DatumType::I32,
                    ) => "i8",
                    _ => continue,
                };
                let preferred = if input == "f32" {
                    &preferred_f32
                } else {
                    &preferred_i32
                };
                let preferred = preferred.as_deref() == Some(mmm.name());
                candidates.push((mmm, ix, input, format!("{a} x {b}"), preferred));
            }
        }
        // A short run each (0.05 s), then the timed runs for tract's own choice and every kernel within 2x
        // of the fastest short run of its input type (the others are an ISA tier below).
        let once: Vec<f64> = candidates
            .iter()
            .map(|(mmm, ix, input, _, _)| {
                run(&***mmm, *ix, input, rows, k, n, 0.05).unwrap_or(f64::INFINITY)
            })
            .collect();
        for (c, &first) in candidates.iter().zip(&once) {
            let (mmm, ix, input, packing, preferred) = c;
            let fastest = candidates
                .iter()
                .zip(&once)
                .filter(|(o, _)| o.2 == *input)
                .map(|(_, &t)| t)
                .fold(f64::INFINITY, f64::min);
            if !preferred && first > 2.0 * fastest {
                continue;
            }
            let inputs: &[&str] = if *input == "i8" {
                &["i8", "i8-kernel"]
            } else {
                &["f32"]
            };
            for input in inputs {
                match run(&***mmm, *ix, input, rows, k, n, seconds) {
                Ok(secs) => println!(
                    "{{\"shape\":\"{shape}\",\"k\":{k},\"n\":{n},\"rows\":{rows},\"kernel\":\"{}\",\"packing\":\"{packing}\",\"input\":\"{input}\",\"preferred\":{preferred},\"gops\":{:.1}}}",
                    mmm.name(),
                    2.0 * (rows * k * n) as f64 / secs / 1e9
                ),
                Err(e) => eprintln!("  {} {input} {shape}: {e}", mmm.name()),
            }
            }
        }
    }
    Ok(())
}
