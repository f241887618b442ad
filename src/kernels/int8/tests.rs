use super::*;
use crate::kernels::Activation;

#[test]
fn every_supported_kernel_passes_its_self_check() {
    for bits in WEIGHT_BITS {
        let k = Int8Kernel::detect(bits);
        eprintln!(
            "int8 kernels on this CPU for {bits}-bit weights: {:?}; detected {k:?}",
            Int8Kernel::available(bits)
        );
        assert!(k.max_bits >= bits);
        for k in Int8Kernel::available(bits) {
            assert!(k.self_check(bits), "{k:?} {bits}-bit");
        }
    }
    for k in INT8_KERNELS.iter().filter(|k| !k.supported()) {
        eprintln!("SKIPPED: {k:?} kernel not testable here (CPU lacks the feature)");
    }
}

#[test]
fn seven_bit_only_kernels_are_never_chosen_for_eight_bit_weights() {
    for k in INT8_KERNELS.iter().filter(|k| k.max_bits < 8) {
        assert!(!Int8Kernel::available(8).contains(&k));
        assert!(!k.self_check(8));
    }
    assert!(Int8Kernel::detect(8).max_bits == 8);
}

fn data(len: usize, seed: usize, scale: f32) -> Vec<f32> {
    (0..len)
        .map(|i| (((i * 7919 + seed * 104729) % 2001) as f32 - 1000.0) / 1000.0 * scale)
        .collect()
}

/// The f64 product of exactly what the kernel multiplies (dequantized operands).
fn reference(x: &[f32], m: usize, k: usize, scale: ActScale, w: &QWeights) -> Vec<f64> {
    let q = w.rows();
    let mut y = vec![0.0f64; m * w.n];
    for r in 0..m {
        let row = &x[r * k..(r + 1) * k];
        let s = match scale {
            ActScale::Static(s) => s,
            ActScale::Dynamic => row.iter().fold(0.0f32, |a, &v| a.max(v.abs())) / 127.0,
        };
        let xq: Vec<f64> = row
            .iter()
            .map(|&v| (v / s).round_ties_even().clamp(-127.0, 127.0) as f64 * s as f64)
            .collect();
        for o in 0..w.n {
            y[r * w.n + o] = (0..k)
                .map(|i| xq[i] * q[o * k + i] as f64 * w.scales[o] as f64)
                .sum();
        }
    }
    y
}

/// Every entry this CPU runs for `bits`, plus, for an entry with a fused whole-depth path, the
/// same entry on its tile path (both must be right).
fn variants(bits: u32) -> Vec<Int8Kernel> {
    let mut out = Vec::new();
    for k in Int8Kernel::available(bits) {
        out.push(k.clone());
        #[cfg(target_arch = "x86_64")]
        if k.fused.is_some() {
            out.push(Int8Kernel {
                fused: None,
                ..k.clone()
            });
        }
    }
    out
}

#[test]
fn every_kernel_matches_f64_reference_on_ragged_shapes() {
    for (bits, kernel) in WEIGHT_BITS
        .into_iter()
        .flat_map(|b| variants(b).into_iter().map(move |k| (b, k)))
    {
        let kernel = &kernel;
        for (m, n, k) in [
            (1, 1, 1),
            (3, 17, 5),
            (4, 16, 8),
            (7, 33, 70),
            (13, 40, 600),
            (70, 48, 384),
            (37, 100, 260),
        ] {
            let x = data(m * k, 1, 3.0);
            let wf = data(n * k, 2, 0.2);
            let w = QWeights::quantize(&wf, n, k, bits);
            let bias = data(n, 3, 1.0);
            for scale in [ActScale::Static(3.0 / 127.0), ActScale::Dynamic] {
                let mut q = QActs::new();
                q.quantize(&x, m, k, scale);
                let want = reference(&x, m, k, scale, &w);
                let mut y = vec![0.5f32; m * n];
                let ep = Epilogue {
                    bias: Some(&bias),
                    accumulate: true,
                    act: None,
                    ..Default::default()
                };
                matmul_with(&q, &w, &mut y, ep, kernel);
                for i in 0..m * n {
                    let expect = want[i] + bias[i % n] as f64 + 0.5;
                    assert!(
                        (y[i] as f64 - expect).abs() < 1e-4 * (1.0 + expect.abs()),
                        "{kernel:?} {scale:?} {m}x{n}x{k} at {i}: {} vs {expect}",
                        y[i]
                    );
                }
            }
        }
    }
}

#[test]
fn kernels_agree_bit_for_bit_at_saturation_edges() {
    // Extreme activations (all ±127 → bytes 1 and 255) against extreme weights (±31, ±63 or
    // ±127): the pair sums are as large as they get; a saturating i16 would show here. The
    // second pattern is the 6-bit kernel's worst case: every activation byte 255 against rows of
    // +31 or of -31, so two groups' 16-bit sums add to ±31,620 (and a third would overflow).
    for bits in WEIGHT_BITS {
        saturation_edges(
            bits,
            |i| if i % 3 == 0 { -1.0 } else { 1.0 },
            |i| i % 5 == 0,
        );
        saturation_edges(bits, |_| 1.0, |i| (i / 68) % 2 == 0);
    }
}

/// Activation `i` is `x(i)`; weight `i` (row-major `[n, k]`) is -1 where `negative(i)`, else 1.
fn saturation_edges(bits: u32, x: impl Fn(usize) -> f32, negative: impl Fn(usize) -> bool) {
    let (m, n, k) = (9, 52, 68);
    let x: Vec<f32> = (0..m * k).map(x).collect();
    let wf: Vec<f32> = (0..n * k)
        .map(|i| if negative(i) { -1.0 } else { 1.0 })
        .collect();
    let w = QWeights::quantize(&wf, n, k, bits);
    let mut q = QActs::new();
    q.quantize(&x, m, k, ActScale::Static(1.0 / 127.0));
    let want = reference(&x, m, k, ActScale::Static(1.0 / 127.0), &w);
    let mut outs = Vec::new();
    for kernel in &variants(bits) {
        let mut y = vec![0.0f32; m * n];
        let ep = Epilogue {
            bias: None,
            accumulate: false,
            act: Some(Activation::Relu),
            ..Default::default()
        };
        matmul_with(&q, &w, &mut y, ep, kernel);
        for i in 0..m * n {
            assert!(
                (y[i] as f64 - want[i].max(0.0)).abs() < 1e-4,
                "{kernel:?} {bits}-bit at {i}"
            );
        }
        outs.push(y);
    }
    assert!(outs.windows(2).all(|p| p[0] == p[1]));
}

#[test]
fn weights_round_trip_and_bad_artifacts_are_refused() {
    let (n, k) = (19, 13);
    let w = QWeights::quantize(&data(n * k, 4, 1.0), n, k, 7);
    let back = QWeights::from_parts(&w.rows(), w.scales.clone(), n, k, 7).unwrap();
    assert_eq!(back.rows(), w.rows());
    let mut bad = w.rows();
    bad[3] = 100;
    let err = QWeights::from_parts(&bad, w.scales.clone(), n, k, 7).err();
    assert!(err
        .map(|e| e.to_string())
        .unwrap_or_default()
        .contains("outside"));
    // The same value is fine at 8 bits, and -128 never is (not symmetric).
    assert!(QWeights::from_parts(&bad, w.scales.clone(), n, k, 8).is_ok());
    bad[3] = -128;
    assert!(QWeights::from_parts(&bad, w.scales.clone(), n, k, 8).is_err());
    assert!(QWeights::from_parts(&w.rows(), w.scales.clone(), n, k, 6).is_err());
    assert!(QWeights::from_parts(&w.rows(), w.scales.clone(), n, k, 5).is_err());
    let w6 = QWeights::quantize(&data(n * k, 4, 1.0), n, k, 6);
    assert_eq!(w6.rows().iter().map(|v| v.unsigned_abs()).max(), Some(31));
    assert!(QWeights::from_parts(&w.rows(), vec![0.0; n], n, k, 7).is_err());
    assert!(QWeights::from_parts(&w.rows()[1..], w.scales.clone(), n, k, 7).is_err());
    let w8 = QWeights::quantize(&data(n * k, 4, 1.0), n, k, 8);
    assert_eq!(w8.rows().iter().map(|v| v.unsigned_abs()).max(), Some(127));
}

#[test]
fn zero_and_non_finite_inputs_stay_finite() {
    let (m, n, k) = (3, 8, 8);
    let mut x = vec![0.0f32; m * k];
    x[9] = f32::NAN;
    x[10] = f32::INFINITY;
    let w = QWeights::quantize(&data(n * k, 5, 1.0), n, k, 8);
    let mut q = QActs::new();
    q.quantize(&x, m, k, ActScale::Dynamic);
    let mut y = vec![0.0f32; m * n];
    matmul(&q, &w, &mut y, Epilogue::default());
    assert!(y.iter().all(|v| v.is_finite()));
}

/// The AMX kernel's two schedules and layouts, run through the software model of the tile
/// registers and `tdpbusd` (any CPU): bit-exact against the portable kernel on ragged shapes
/// (rows < 16, rows past a whole 32, an odd panel count, depths that are and are not a multiple
/// of 64 bytes, more than one depth pass), for both weight widths, with the task (32 × 32
/// blocks) and with the any-depth tile schedule alone.
#[cfg(target_arch = "x86_64")]
#[test]
fn amx_schedules_on_the_tile_model_match_the_portable_kernel() {
    let emulated = Int8Kernel {
        name: "int8-amx-emulated",
        mr: tiles::MR,
        np: tiles::NP,
        max_bits: 8,
        kc: 1024,
        isa: Isa::Portable,
        supported: || true,
        tile: tiles::int8_emulated,
        fused: None,
        task: Some(amx::task::<tiles::Emulated>),
    };
    let schedule_only = Int8Kernel {
        task: None,
        ..emulated.clone()
    };
    for kernel in [&emulated, &schedule_only] {
        for bits in WEIGHT_BITS {
            for (m, n, k) in [
                (1, 1, 1),
                (1, 1, 64),
                (15, 17, 63),
                (16, 32, 64),
                (17, 48, 130),
                (33, 80, 128),
                (40, 80, 1100),
                (70, 112, 384),
            ] {
                let x = data(m * k, 1, 3.0);
                let w = QWeights::quantize(&data(n * k, 2, 0.2), n, k, bits);
                let mut q = QActs::new();
                q.quantize(&x, m, k, ActScale::Dynamic);
                let bias = data(n, 3, 1.0);
                let ep = Epilogue {
                    bias: Some(&bias),
                    accumulate: true,
                    act: Some(Activation::Gelu),
                    ..Default::default()
                };
                let y0 = data(m * n, 4, 1.0);
                let (mut a, mut b) = (y0.clone(), y0);
                matmul_with(&q, &w, &mut a, ep, Int8Kernel::portable());
                matmul_with(&q, &w, &mut b, ep, kernel);
                assert_eq!(a, b, "{kernel:?} {bits}-bit {m}x{n}x{k}");
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn amx_tile_configuration_block_layout() {
    let c = tiles::config_block(16, 64);
    assert_eq!(c[0], 1, "palette 1");
    let colsb = |t: usize| u16::from_le_bytes([c[16 + 2 * t], c[17 + 2 * t]]);
    // C tiles 0-3: 16 rows of 16 i32; A tiles 4, 5: 16 rows of 64 bytes; B tiles 6, 7: 16 rows.
    for t in 0..8 {
        assert_eq!((c[48 + t], colsb(t)), (16, 64), "tile {t}");
    }
    let tail = tiles::config_block(5, 12);
    assert_eq!(
        (tail[48 + 4], u16::from_le_bytes([tail[24], tail[25]])),
        (5, 12)
    );
    assert_eq!(tail[48 + 6], 3, "B rows = depth bytes / 4");
    if !tiles::supported_int8() {
        eprintln!("SKIPPED: AMX hardware path not run here (needs an AMX-INT8 CPU)");
    }
}

/// The vector quantizers give the bytes of the scalar one (round half to even, clamp, NaN → 0
/// or a bound, never out of range), on every row length and at the rounding ties.
#[cfg(target_arch = "x86_64")]
#[test]
fn vector_quantizers_match_the_scalar_one() {
    let mut x: Vec<f32> = (0..203).map(|i| (i as f32 - 101.0) * 0.75).collect();
    x[7] = 2.5; // ties go to even
    x[8] = -3.5;
    x[9] = 1e9;
    x[10] = -1e9;
    let mut want = vec![0u8; x.len()];
    quantize_row(&x, &mut want, 1.0);
    if crate::kernels::has_avx2_fma() {
        let mut got = vec![0u8; x.len()];
        // SAFETY: AVX2 and FMA were detected.
        unsafe { quantize_row_avx2(&x, &mut got, 1.0) };
        assert_eq!(got, want, "avx2");
    }
    if crate::kernels::has_avx512() {
        for len in [0usize, 1, 15, 16, 17, 203] {
            let mut got = vec![0u8; len];
            // SAFETY: AVX-512 was detected.
            unsafe { quantize_row_avx512(&x[..len], &mut got, 1.0) };
            assert_eq!(got, want[..len], "avx512 len {len}");
        }
    } else {
        eprintln!("SKIPPED: AVX-512 quantizer not testable here");
    }
    assert_eq!((want[7], want[8]), (130, 124));
}

#[test]
fn every_kernel_quantizes_in_its_epilogue_as_afterwards() {
    for bits in WEIGHT_BITS {
        // A partial last panel; AMX blocks of 32 rows and whole 64-byte steps; a ragged depth.
        for (m, n, k) in [(37, 5 * NR + 4, 130), (70, 112, 384)] {
            let x = data(m * k, 1, 3.0);
            let w = QWeights::quantize(&data(n * k, 2, 0.2), n, k, bits);
            let bias = data(n, 3, 1.0);
            let mut q = QActs::new();
            q.quantize(&x, m, k, ActScale::Dynamic);
            for kernel in &variants(bits) {
                let what = format!("{kernel:?} {bits}-bit");
                crate::kernels::tests::check_fused_quantization(&what, m, n, &bias, |y, ep| {
                    matmul_with(&q, &w, y, ep, kernel)
                });
            }
        }
    }
}

/// samp's fused kernel handing a next layer its input with dynamic scales, row block by row
/// block over the threads, gives the bytes and scales of its float outputs quantized
/// afterwards: ragged row blocks, a partial last panel group and a partial panel, with and
/// without GELU. Entries without a fused path (and accumulating epilogues) decline.
#[test]
fn fused_kernels_quantize_for_a_dynamic_next_layer_as_afterwards() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    pool.install(|| {
        for (m, n, k) in [(61, 5 * NR + 4, 130), (96, 3 * NR, 384)] {
            let x = data(m * k, 1, 3.0);
            let w = QWeights::quantize(&data(n * k, 2, 0.2), n, k, 8);
            let bias = data(n, 3, 1.0);
            let mut q = QActs::new();
            q.quantize(&x, m, k, ActScale::Dynamic);
            for kernel in Int8Kernel::available(8) {
                #[cfg(target_arch = "x86_64")]
                let fused = kernel.fused.is_some();
                #[cfg(not(target_arch = "x86_64"))]
                let fused = false;
                for act in [None, Some(Activation::Gelu)] {
                    let ep = Epilogue {
                        bias: Some(&bias),
                        act,
                        ..Default::default()
                    };
                    let mut y = vec![0.0f32; m * n];
                    matmul_with(&q, &w, &mut y, ep, kernel);
                    let mut want = QActs::new();
                    want.quantize(&y, m, n, ActScale::Dynamic);
                    for rows in [kernel.mr, 2 * kernel.mr] {
                        let what = format!("{kernel:?} {m}x{k}->{n} {act:?}, {rows} rows");
                        let mut got = QActs::new();
                        let done = dynamic::matmul_dynamic_with(&q, &w, ep, &mut got, kernel, rows);
                        assert_eq!(done, fused, "{what}: runs where the entry fuses");
                        if !done {
                            continue;
                        }
                        let ((gb, gs), (wb, ws)) = (got.parts(), want.parts());
                        assert_eq!(gs, ws, "{what}: scales");
                        let kp = got.shape().1;
                        for r in 0..m {
                            assert_eq!(gb[r * kp..][..n], wb[r * kp..][..n], "{what}: row {r}");
                        }
                        let residual = Epilogue {
                            accumulate: true,
                            ..ep
                        };
                        assert!(
                            !dynamic::matmul_dynamic_with(&q, &w, residual, &mut got, kernel, rows),
                            "{what}: an accumulating epilogue is declined"
                        );
                    }
                }
            }
        }
        let (x, w) = (
            QActs::new(),
            QWeights::quantize(&data(64 * 32, 2, 0.2), 64, 32, 8),
        );
        assert!(
            !matmul_dynamic(&x, &w, Epilogue::default(), &mut QActs::new()),
            "no rows: declined (the split by columns serves few rows)"
        );
    });
}
