//! oneDNN's path against samp's own kernels. The library is optional: without it these tests
//! check only what needs no library, unless `SAMP_REQUIRE_ONEDNN=1` (CI sets it, after
//! `scripts/fetch_onednn.sh`), which turns a missing library into a failure.

use super::*;
use crate::kernels::bf16::{self, Bf16Acts, Bf16Weights};
use crate::kernels::int8::{self, ActScale, QActs, QWeights};
use crate::kernels::packed::{self, PackedWeights};
use crate::kernels::{Activation, Isa};

fn library() -> bool {
    let loaded = api().is_some();
    // SAMP_MAX_ISA=portable switches oneDNN off.
    let wanted = crate::kernels::isa::allowed(crate::kernels::isa::IsaCap::Avx2);
    if !loaded && wanted && std::env::var("SAMP_REQUIRE_ONEDNN").is_ok_and(|v| v == "1") {
        panic!("SAMP_REQUIRE_ONEDNN=1 but oneDNN did not load (scripts/fetch_onednn.sh)");
    }
    loaded
}

fn data(len: usize, seed: usize, scale: f32) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0) * scale)
        .collect()
}

/// (rows, depth): one row, a ragged block, several blocks with a ragged last one; a depth that
/// is not a multiple of 4 (samp pads it).
const PROBLEMS: [(usize, usize); 4] = [(1, 64), (17, 130), (100, 384), (300, 203)];
const N: usize = 5 * NR + 3;

/// The epilogues a layer uses: none, bias + GELU (FFN up), bias + residual (the others), ReLU.
fn epilogues(bias: &[f32]) -> Vec<Epilogue<'_>> {
    vec![
        Epilogue::default(),
        Epilogue {
            bias: Some(bias),
            accumulate: false,
            act: Some(Activation::Gelu),
            ..Default::default()
        },
        Epilogue {
            bias: Some(bias),
            accumulate: true,
            act: None,
            ..Default::default()
        },
        Epilogue {
            bias: Some(bias),
            accumulate: false,
            act: Some(Activation::Relu),
            ..Default::default()
        },
    ]
}

#[test]
fn blocks_are_at_most_the_cap_and_shared_evenly() {
    for max in [128, 1024] {
        for threads in [1, 2, 8] {
            for m in [
                1, 15, 16, 17, 100, 128, 129, 255, 256, 843, 1000, 1025, 4096, 9000,
            ] {
                let b = block_rows(m, threads, max);
                let blocks = m.div_ceil(b);
                assert!((1..=max).contains(&b), "m {m} max {max} -> {b}");
                // A multiple of the threads while every block keeps a tile's worth of rows.
                if m >= 16 * threads && m > max {
                    assert!(
                        blocks.is_multiple_of(threads),
                        "m {m} threads {threads} max {max} -> {b}"
                    );
                }
            }
        }
    }
    assert_eq!(block_rows(1024, 2, 128), 128);
    assert_eq!(block_rows(843, 2, 128), 106); // 8 blocks, not 7 of 128
    assert_eq!(block_rows(100, 2, 128), 50); // 2 blocks of 50, not 64 + 36
    assert_eq!(block_rows(5, 2, 128), 5);
    assert_eq!(block_rows(4096, 1, 1024), 1024);
    assert_eq!(block_rows(4096, 2, 1024), 1024);
    assert_eq!(block_rows(1024, 2, 1024), 512); // still one block per thread
}

#[test]
fn only_the_plain_gemm_below_avx512_gets_big_blocks() {
    assert_eq!(block_cap("gemm:jit:f32", Isa::Avx2), 1024);
    assert_eq!(block_cap("gemm:jit", Isa::Avx2), 1024);
    assert_eq!(block_cap("gemm:jit:f32", Isa::Avx512), 128);
    assert_eq!(block_cap("brg:avx512_core", Isa::Avx512), 128);
    assert_eq!(block_cap("brg:avx2", Isa::Avx2), 128);
}

#[test]
fn tiles_visit_every_value_once() {
    let (rows, n) = (37, 2 * NR + 5);
    let product: Vec<i32> = (0..rows * n).map(|i| i as i32 + 1).collect();
    let mut seen = vec![0; rows * n];
    tiles(&product, rows, n, |tile, r, c0| {
        for (i, t) in tile.iter().enumerate() {
            for (j, &v) in t.iter().enumerate() {
                if c0 + j < n {
                    assert_eq!(v, product[(r + i) * n + c0 + j]);
                    seen[(r + i) * n + c0 + j] += 1;
                } else {
                    assert_eq!(v, 0, "past n is zero");
                }
            }
        }
    });
    assert!(seen.iter().all(|&s| s == 1));
}

/// f32 and INT8 pass where the library loads, INT8 for the weight width samp's own kernels
/// prefer on this CPU (8 with VNNI or AMX, 7 on AVX2, where oneDNN's INT8 saturates like
/// `vpmaddubsw`); bf16 either passes or oneDNN has no bf16 matmul here (AVX2).
#[test]
fn every_precision_passes_its_self_check_where_the_library_loads() {
    if !library() {
        return;
    }
    assert!(usable(Kind::F32));
    assert!(usable(Kind::Int8));
    // The width samp's plans take here: 8 where one kernel serves both (VNNI, AMX).
    let (k8, k7) = (int8::Int8Kernel::detect(8), int8::Int8Kernel::detect(7));
    assert_eq!(int8_bits(), if std::ptr::eq(k8, k7) { 8 } else { 7 });
    if !usable(Kind::Bf16) {
        assert!(bf16::onednn_gemm(&data(N * 64, 2, 1.0), N, 64).is_err());
        assert!(!crate::kernels::has_avx512(), "bf16 on oneDNN with AVX-512");
    }
}

/// Weight widths oneDNN's INT8 matmul is exact for here.
fn int8_widths() -> Vec<u32> {
    [7, 8].into_iter().filter(|&b| b <= int8_bits()).collect()
}

#[test]
fn int8_on_onednn_is_bit_identical_to_samps_kernel_with_every_epilogue() {
    if !library() {
        return;
    }
    let bias = data(N, 9, 0.5);
    for bits in int8_widths() {
        for (m, k) in PROBLEMS {
            let x = data(m * k, 1, 3.0);
            let w = QWeights::quantize(&data(N * k, 2, 0.2), N, k, bits);
            let g = int8::onednn_gemm(&w).expect("gemm");
            for scale in [ActScale::Static(3.0 / 127.0), ActScale::Dynamic] {
                let mut q = QActs::new();
                q.quantize(&x, m, k, scale);
                for ep in epilogues(&bias) {
                    let start = data(m * N, 5, 1.0);
                    let (mut a, mut b) = (start.clone(), start);
                    int8::matmul(&q, &w, &mut a, ep);
                    int8::matmul_onednn(&q, &w, &g, &mut b, ep);
                    assert!(
                        a == b,
                        "{bits}-bit {m}x{k} {scale:?} act {:?} acc {}",
                        ep.act,
                        ep.accumulate
                    );
                }
            }
        }
    }
}

fn worst_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn float_kinds_on_onednn_match_samps_kernels_within_rounding() {
    if !library() {
        return;
    }
    let bias = data(N, 9, 0.5);
    for (m, k) in PROBLEMS {
        let x = data(m * k, 1, 1.0);
        let wf = data(N * k, 2, 1.0);
        let pw = PackedWeights::from_rows(&wf, N, k);
        let (gf, gb) = (
            packed::onednn_gemm(&pw).expect("f32"),
            bf16::onednn_gemm(&wf, N, k).ok(),
        );
        // bf16 on oneDNN's f32 matmul (hosts without a bf16 instruction; made on any host).
        let gw = bf16::widened::gemm(&wf, N, k).expect("bf16 widened to f32");
        let bw = Bf16Weights::from_rows(&wf, N, k);
        let mut xb = Bf16Acts::new();
        xb.round(&x, m, k);
        for ep in epilogues(&bias) {
            let start = data(m * N, 5, 1.0);
            let (mut a, mut b) = (start.clone(), start.clone());
            packed::matmul(&x, m, &pw, &mut a, ep);
            packed::matmul_onednn(&x, m, &gf, &mut b, ep);
            // |x|, |w| ≤ 1: k bounds each sum of magnitudes; GELU and the bias keep the scale.
            let tol = 8.0 * k as f32 * f32::EPSILON;
            let worst = worst_diff(&a, &b);
            assert!(
                worst <= tol,
                "f32 {m}x{k} act {:?}: {worst} > {tol}",
                ep.act
            );
            let (mut a, mut b) = (start.clone(), start.clone());
            bf16::matmul(&xb, &bw, &mut a, ep);
            bf16::widened::matmul(&x, m, &gw, &mut b, ep);
            let worst = worst_diff(&a, &b);
            assert!(
                worst <= tol,
                "bf16 widened {m}x{k} act {:?}: {worst} > {tol}",
                ep.act
            );
            let Some(gb) = &gb else {
                continue;
            };
            let (mut a, mut b) = (start.clone(), start);
            bf16::matmul(&xb, &bw, &mut a, ep);
            bf16::matmul_onednn(&xb, gb, &mut b, ep);
            let worst = worst_diff(&a, &b);
            assert!(
                worst <= tol,
                "bf16 {m}x{k} act {:?}: {worst} > {tol}",
                ep.act
            );
        }
    }
}

#[test]
fn zero_rows_write_nothing() {
    if !library() {
        return;
    }
    let w = QWeights::quantize(&data(N * 64, 2, 0.2), N, 64, int8_bits());
    let g = int8::onednn_gemm(&w).expect("gemm");
    let mut q = QActs::new();
    q.quantize(&[], 0, 64, ActScale::Dynamic);
    let mut y: Vec<f32> = vec![];
    int8::matmul_onednn(&q, &w, &g, &mut y, Epilogue::default());
}

#[test]
fn the_race_is_skipped_for_small_products() {
    // Below MIN_MACS nothing is timed and samp's kernels serve, library or not.
    assert!(!prefer(Kind::Int8, 64, 64, 1, 7));
    assert!(!prefer(Kind::F32, 384, 1, 10, 0));
}

/// An INT8 race times both outputs, on products that samp's row blocks take and on ones too
/// small for them (where both paths quantize afterwards).
#[test]
fn int8_races_time_each_output() {
    if !library() {
        return;
    }
    let bits = int8_bits();
    for m in [64, 512] {
        for out in [Output::Floats, Output::DynamicInt8] {
            let (own, dnnl) = int8::onednn_race(384, 768, m, bits, out).expect("race");
            assert!(
                own > 0.0 && dnnl > 0.0 && own.is_finite() && dnnl.is_finite(),
                "{m} rows, {out:?}: {own} s, {dnnl} s"
            );
        }
    }
}

#[test]
fn every_precision_on_onednn_quantizes_in_its_epilogue_as_afterwards() {
    if !library() {
        return;
    }
    use crate::kernels::tests::check_fused_quantization as check;
    let n = 5 * NR + 4;
    let bias = data(n, 9, 0.5);
    for (m, k) in PROBLEMS {
        let x = data(m * k, 1, 1.0);
        let wf = data(n * k, 2, 1.0);
        let w = QWeights::quantize(&wf, n, k, int8_bits());
        let g = int8::onednn_gemm(&w).expect("int8");
        let mut q = QActs::new();
        q.quantize(&x, m, k, ActScale::Dynamic);
        check("oneDNN int8", m, n, &bias, |y, ep| {
            int8::matmul_onednn(&q, &w, &g, y, ep)
        });
        let g = packed::onednn_gemm(&PackedWeights::from_rows(&wf, n, k)).expect("f32");
        check("oneDNN f32", m, n, &bias, |y, ep| {
            packed::matmul_onednn(&x, m, &g, y, ep)
        });
        let Ok(g) = bf16::onednn_gemm(&wf, n, k) else {
            continue;
        };
        let mut xb = Bf16Acts::new();
        xb.round(&x, m, k);
        check("oneDNN bf16", m, n, &bias, |y, ep| {
            bf16::matmul_onednn(&xb, &g, y, ep)
        });
    }
}

/// The INT8 path that hands a next layer its input with dynamic scales block by block gives
/// the bytes and scales of quantizing the float outputs afterwards (on this host's epilogue:
/// AVX-512's, AVX2's — whose partial last panel goes through the portable walk — or the
/// portable one), with and without GELU, a width that needs padding or not, and one wide
/// enough that each block is finished and quantized in several strips of 8 rows.
#[test]
fn int8_on_onednn_quantizes_its_outputs_with_dynamic_scales_as_afterwards() {
    if !library() {
        return;
    }
    for n in [N, 4 * NR, 256 * NR + 3] {
        let bias = data(n, 9, 0.5);
        for (m, k) in PROBLEMS {
            let x = data(m * k, 1, 3.0);
            let w = QWeights::quantize(&data(n * k, 2, 0.2), n, k, int8_bits());
            let g = int8::onednn_gemm(&w).expect("gemm");
            let mut q = QActs::new();
            q.quantize(&x, m, k, ActScale::Dynamic);
            for act in [None, Some(Activation::Gelu)] {
                let ep = Epilogue {
                    bias: Some(&bias),
                    act,
                    ..Default::default()
                };
                let mut y = vec![0.0f32; m * n];
                int8::matmul_onednn(&q, &w, &g, &mut y, ep);
                let mut want = QActs::new();
                want.quantize(&y, m, n, ActScale::Dynamic);

                let mut got = QActs::new();
                let done = int8::matmul_onednn_dynamic(&q, &w, &g, ep, &mut got);
                assert!(done, "{m}x{k}->{n} {act:?}: declined");
                assert_eq!(got.shape(), want.shape());
                let ((gb, gs), (wb, ws)) = (got.parts(), want.parts());
                assert_eq!(gs, ws, "{m}x{k}->{n} {act:?}: scales");
                let kp = got.shape().1;
                for r in 0..m {
                    assert_eq!(
                        gb[r * kp..][..n],
                        wb[r * kp..][..n],
                        "{m}x{k}->{n} {act:?}: row {r}"
                    );
                }
                let residual = Epilogue {
                    accumulate: true,
                    ..ep
                };
                assert!(
                    !int8::matmul_onednn_dynamic(&q, &w, &g, residual, &mut got),
                    "an accumulating epilogue is declined"
                );
            }
        }
    }
}

#[test]
fn f32_weights_come_back_from_onednns_layout_exactly() {
    if !library() {
        return;
    }
    for (n, k) in [(N, 130), (384, 1536)] {
        let w = data(n * k, 3, 1.0);
        let g = Gemm::f32(&w, n, k).expect("f32");
        assert_eq!(g.f32_rows().expect("reorder back"), w, "[{n}, {k}]");
    }
}

#[test]
fn every_row_count_races_in_a_bucket_prepared_for_it() {
    for max_rows in [1, 63, 64, 65, 500, 4096] {
        let buckets: Vec<usize> = row_buckets(max_rows).collect();
        for rows in 1..=max_rows {
            assert!(buckets.contains(&row_bucket(rows)), "{rows} of {max_rows}");
        }
    }
    assert_eq!(
        row_buckets(4096).collect::<Vec<_>>(),
        [64, 128, 256, 512, 1024, 2048]
    );
    assert_eq!(row_buckets(100).collect::<Vec<_>>(), [64, 128]);
}

#[test]
fn float_column_parts_cover_the_width_in_whole_panels() {
    for n in [1, 100, 255, 256, 384, 421, 1152, 3072] {
        for threads in [1, 2, 3, 8] {
            let parts = gemm::column_parts(Kind::F32, n, threads);
            assert_eq!(
                parts.len(),
                threads.min(n / 128).max(1),
                "n {n} threads {threads}"
            );
            assert_eq!((parts[0].0, parts.last().unwrap().1), (0, n));
            for w in parts.windows(2) {
                assert_eq!(w[0].1, w[1].0, "contiguous");
                assert!(w[0].1.is_multiple_of(NR), "whole panels");
            }
            assert!(parts.iter().all(|&(a, b)| b > a), "n {n}: {parts:?}");
            assert_eq!(gemm::column_parts(Kind::Int8, n, threads), vec![(0, n)]);
        }
    }
}

/// With more threads than one, a float matmul is one primitive per group of columns: few rows
/// still spread over the threads. The parts together give samp's kernel's outputs (within
/// rounding) with every epilogue, with the next layer's bytes fused in, and the rows back.
#[test]
fn float_kinds_split_by_columns_match_samps_kernels() {
    if !library() {
        return;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    pool.install(|| {
        let n = 3 * 128 + 37;
        let bias = data(n, 9, 0.5);
        for (m, k) in [(1, 64), (5, 130), (300, 203)] {
            let x = data(m * k, 1, 1.0);
            let wf = data(n * k, 2, 1.0);
            let pw = PackedWeights::from_rows(&wf, n, k);
            let g = packed::onednn_gemm(&pw).expect("f32");
            assert!(format!("{g:?}").contains("(3 parts)"), "{g:?}");
            assert_eq!(g.f32_rows().unwrap(), wf, "the rows come back exactly");
            let gb = bf16::onednn_gemm(&wf, n, k).ok();
            let mut xb = Bf16Acts::new();
            xb.round(&x, m, k);
            let bw = Bf16Weights::from_rows(&wf, n, k);
            let tol = 8.0 * k as f32 * f32::EPSILON;
            for ep in epilogues(&bias) {
                let start = data(m * n, 5, 1.0);
                let (mut a, mut b) = (start.clone(), start.clone());
                packed::matmul(&x, m, &pw, &mut a, ep);
                packed::matmul_onednn(&x, m, &g, &mut b, ep);
                let worst = worst_diff(&a, &b);
                assert!(worst <= tol, "f32 {m}x{k} {:?}: {worst}", ep.act);
                let Some(gb) = &gb else {
                    continue;
                };
                let (mut a, mut b) = (start.clone(), start);
                bf16::matmul(&xb, &bw, &mut a, ep);
                bf16::matmul_onednn(&xb, gb, &mut b, ep);
                let worst = worst_diff(&a, &b);
                assert!(worst <= tol, "bf16 {m}x{k} {:?}: {worst}", ep.act);
            }
            use crate::kernels::tests::check_fused_quantization as check;
            check("oneDNN f32 in parts", m, n - 1, &bias[..n - 1], |y, ep| {
                let pw = PackedWeights::from_rows(&wf[..(n - 1) * k], n - 1, k);
                let g = packed::onednn_gemm(&pw).expect("f32");
                packed::matmul_onednn(&x, m, &g, y, ep)
            });
        }
    });
}
