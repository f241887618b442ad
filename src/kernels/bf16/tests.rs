use super::*;

#[test]
fn rounding_is_nearest_even_on_the_bit_pattern() {
    assert_eq!(round(1.0), 0x3f80);
    // 1 + 2^-8 is halfway between two bf16 values: ties go to even (1.0).
    assert_eq!(round(f32::from_bits(0x3f80_8000)), 0x3f80);
    assert_eq!(round(f32::from_bits(0x3f81_8000)), 0x3f82);
    assert_eq!(round(f32::from_bits(0x3f80_8001)), 0x3f81);
    assert_eq!(round(-2.5), 0xc020);
    assert!(widen(round(f32::NAN)).is_nan());
    assert_eq!(widen(round(f32::INFINITY)), f32::INFINITY);
    assert_eq!(widen(round(f32::MAX)), f32::INFINITY);
    for v in [0.1f32, -3.7, 1e-20, 65504.0] {
        assert!((widen(round(v)) - v).abs() <= v.abs() / 256.0);
    }
}

/// The row rounding of this host's widest ISA, and AVX2's directly where the host has it (an
/// AVX-512 host's widest is the AVX-512 one), against the scalar one: values covering ties
/// both ways, NaN, infinities, overflow, signed zero and denormals, with tails shorter than a
/// vector step.
#[test]
fn every_row_rounding_path_agrees_with_the_scalar_one() {
    let (m, k) = (3, 77);
    let mut x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin() * 1e3).collect();
    x[5] = f32::NAN;
    x[6] = f32::from_bits(0x3f80_8000);
    x[7] = 1e-40; // denormal
    x[8] = f32::from_bits(0x3f81_8000);
    x[9] = f32::MAX;
    x[10] = f32::NEG_INFINITY;
    x[11] = -0.0;
    let same = |got: u16, v: f32| {
        let want = round(v);
        got == want || (widen(got).is_nan() && widen(want).is_nan())
    };
    let mut q = Bf16Acts::new();
    q.round(&x, m, k);
    for r in 0..m {
        for c in 0..k {
            assert!(same(q.data[r * q.kp + c], x[r * k + c]), "{r},{c}");
        }
    }
    #[cfg(target_arch = "x86_64")]
    if super::avx2::supported() {
        let mut got = vec![0u16; x.len()];
        // SAFETY: AVX2 was detected.
        unsafe { super::avx2::round_row(&x, &mut got) };
        for (i, (&g, &v)) in got.iter().zip(&x).enumerate() {
            assert!(same(g, v), "avx2 {i}: {v}");
        }
    }
    // Rounded into f32 (the widened path's input): this host's path, and the scalar one.
    let mut wide = vec![0.0f32; x.len()];
    widened::round_widened(&x, &mut wide);
    let scalar: Vec<f32> = x.iter().map(|&v| widen(round(v))).collect();
    for (i, (&g, &v)) in wide.iter().zip(&x).enumerate() {
        assert_eq!(g.to_bits(), scalar[i].to_bits(), "widened {i}: {v}");
    }
}

/// The AVX2 entry adds the same exact products in the same order as the portable kernel (per
/// pair the odd one first, the same depth per pass), so it gives the same floats bit for bit —
/// a stronger check than the bound every entry meets.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_avx2_entry_gives_the_portable_kernels_floats() {
    let avx2 = BF16_KERNELS
        .iter()
        .find(|k| k.name == "bf16-avx2-6x16")
        .expect("the AVX2 entry");
    if !avx2.supported() {
        eprintln!("SKIPPED: no AVX2 here");
        return;
    }
    for (m, n, k) in [(13, 3 * NR + 5, 600), (7, 2 * NR, 77), (1, NR, 2)] {
        let (x, w, bias) = crate::kernels::tests::float_problem(m, n, k);
        let pw = Bf16Weights::from_rows(&w, n, k);
        let mut q = Bf16Acts::new();
        q.round(&x, m, k);
        let ep = Epilogue {
            bias: Some(&bias),
            ..Default::default()
        };
        let (mut a, mut b) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
        matmul_with(&q, &pw, &mut a, ep, Bf16Kernel::portable());
        matmul_with(&q, &pw, &mut b, ep, avx2);
        let differ = a.iter().zip(&b).filter(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(differ.count(), 0, "{m}x{n}x{k}");
    }
}

/// The AMX-BF16 schedule through the software tile model (any CPU), against the f64
/// reference like every other entry.
#[cfg(target_arch = "x86_64")]
fn amx_emulated() -> Bf16Kernel {
    Bf16Kernel {
        name: "bf16-amx-emulated",
        mr: crate::kernels::amx::MR,
        np: crate::kernels::amx::NP,
        kc: 512,
        isa: Isa::Portable,
        dot: true,
        supported: || true,
        tile: crate::kernels::amx::bf16_emulated,
        fused: None,
        task: Some(super::amx::task::<crate::kernels::amx::Emulated>),
    }
}

#[test]
fn every_kernel_matches_f64_reference_within_bf16_sum_bounds() {
    // Each entry (an entry with a fused path also on its tile path), and the AMX schedule
    // on the tile model.
    let mut kernels: Vec<Bf16Kernel> = Vec::new();
    for k in Bf16Kernel::available() {
        kernels.extend(std::iter::once(k.clone()).chain(k.tile_path()));
    }
    #[cfg(target_arch = "x86_64")]
    {
        kernels.push(amx_emulated());
        kernels.push(Bf16Kernel {
            task: None,
            ..amx_emulated()
        });
    }
    for kernel in &kernels {
        assert!(kernel.self_check(), "{kernel:?}");
        for (m, n, k) in [
            (1, 1, 1),
            (5, 17, 3),
            (9, 50, 70),
            (3, 17, 32),
            (33, 40, 64),
            (30, 100, 600),
            (70, 112, 384),
        ] {
            let (x, w, bias) = crate::kernels::tests::float_problem(m, n, k);
            let pw = Bf16Weights::from_rows(&w, n, k);
            let mut q = Bf16Acts::new();
            q.round(&x, m, k);
            let mut y = vec![0.25f32; m * n];
            let ep = Epilogue {
                bias: Some(&bias),
                accumulate: true,
                act: None,
                ..Default::default()
            };
            matmul_with(&q, &pw, &mut y, ep, kernel);
            for i in 0..m {
                for j in 0..n {
                    let (mut want, mut mag) = (0.0f64, 0.0f64);
                    for p in 0..k {
                        let t =
                            widen(round(x[i * k + p])) as f64 * widen(round(w[j * k + p])) as f64;
                        want += t;
                        mag += t.abs();
                    }
                    let want = want + bias[j] as f64 + 0.25;
                    let got = y[i * n + j] as f64;
                    let tol = 2.0 * k as f64 * f32::EPSILON as f64 * mag + 1e-6;
                    assert!(
                        (got - want).abs() <= tol,
                        "{kernel:?} {m}x{n}x{k} ({i},{j}): {got} vs {want}"
                    );
                }
            }
        }
    }
    for k in BF16_KERNELS.iter().filter(|k| !k.supported()) {
        eprintln!("SKIPPED: {k:?} not testable here (CPU lacks the feature)");
    }
}

#[test]
fn every_kernel_quantizes_in_its_epilogue_as_afterwards() {
    let (m, n, k) = (37, 5 * NR + 4, 70);
    let (x, w, bias) = crate::kernels::tests::float_problem(m, n, k);
    let pw = Bf16Weights::from_rows(&w, n, k);
    let mut q = Bf16Acts::new();
    q.round(&x, m, k);
    let mut kernels: Vec<Bf16Kernel> = Vec::new();
    for k in Bf16Kernel::available() {
        kernels.extend(std::iter::once(k.clone()).chain(k.tile_path()));
    }
    #[cfg(target_arch = "x86_64")]
    kernels.push(amx_emulated());
    for kernel in &kernels {
        crate::kernels::tests::check_fused_quantization(
            &format!("{kernel:?}"),
            m,
            n,
            &bias,
            |y, ep| matmul_with(&q, &pw, y, ep, kernel),
        );
    }
}
