//! Backend selection: `--device cuda:0` on a machine without a GPU (CI) serves on the CPU, says
//! why, and answers exactly as the CPU does. GPU checks run only with SAMP_GPU_TESTS=1 on a
//! machine with a GPU (they skip with a message otherwise); `scripts/device_check.sh` is the
//! full check on the lent GPU machine. Also the CPU side of the same question: `samp kernels`
//! names a self-checked GEMM kernel for every precision on whatever CPU runs the tests.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::model_dir;

fn samp(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_samp"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run samp");
    assert!(
        out.status.success(),
        "samp {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn gpu_tests() -> bool {
    let on = std::env::var("SAMP_GPU_TESTS").as_deref() == Ok("1");
    if !on {
        eprintln!("SKIPPED: GPU test (set SAMP_GPU_TESTS=1 on a machine with an NVIDIA GPU)");
    }
    on
}

fn floats(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[test]
fn cuda_without_a_usable_gpu_falls_back_to_the_cpu_and_says_why() {
    let dir = model_dir("all-MiniLM-L6-v2");
    let dir = dir.to_str().unwrap();
    let text = "The backend falls back without a GPU.";
    let cpu = samp(&["embed", "--model", dir, text]);
    let cuda = samp(&["embed", "--model", dir, "--device", "cuda:0", text]);
    let log = String::from_utf8_lossy(&cuda.stderr);
    if log.contains("running on the CPU instead") {
        assert_eq!(
            cpu.stdout, cuda.stdout,
            "the fallback is the CPU backend itself"
        );
    } else {
        // A machine with a GPU: the answer must still be the same embedding.
        let v = |o: &Output| -> Vec<f32> {
            let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            common::floats(&j["embedding"])
        };
        assert!(common::cosine(&v(&cpu), &v(&cuda)) > 0.999, "{log}");
    }
}

#[test]
fn serve_check_reports_the_device_setting() {
    let out = samp(&["serve", "--check", "--device", "cuda:1"]);
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["device"], "cuda:1");
    assert_eq!(j["cuda_built"], cfg!(feature = "cuda"));
    let bad = Command::new(env!("CARGO_BIN_EXE_samp"))
        .args(["serve", "--check", "--device", "tpu"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a device"));
}

#[test]
fn gpu_hidden_states_match_the_cpu_in_float_and_int8() {
    if !gpu_tests() {
        return;
    }
    let dir = model_dir("all-MiniLM-L6-v2");
    let tmp = tempfile::tempdir().unwrap();
    let texts = tmp.path().join("texts.txt");
    std::fs::write(
        &texts,
        "A first sentence.\nAnd a second, somewhat longer one.\n",
    )
    .unwrap();
    let plan = tmp.path().join("int8.json");
    let modes = vec![samp::quant::plan::LayerMode::Full; 6];
    samp::quant::plan::Plan::from_modes(
        "int8",
        &modes,
        &[[1.0; 4]; 6],
        samp::quant::plan::ActMode::Dynamic,
        None,
    )
    .write(&plan)
    .unwrap();
    for (plan, tol) in [("float32", 2e-2), (plan.to_str().unwrap(), 2e-2)] {
        let states = |device: &str| {
            let out = tmp.path().join(format!("{device}.f32"));
            samp(&[
                "bench",
                "--model",
                dir.to_str().unwrap(),
                "--input",
                texts.to_str().unwrap(),
                "--plan",
                plan,
                "--device",
                device,
                "--seconds",
                "0",
                "--states-out",
                out.to_str().unwrap(),
            ]);
            floats(&out)
        };
        let (cpu, gpu) = (states("cpu"), states("cuda:0"));
        assert_eq!(cpu.len(), gpu.len());
        let num: f64 = cpu
            .iter()
            .zip(&gpu)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = cpu.iter().map(|a| (*a as f64).powi(2)).sum();
        let rel = (num / den).sqrt();
        assert!(rel < tol, "plan {plan}: relative error {rel}");
    }
}

#[test]
fn samp_kernels_reports_a_self_checked_kernel_for_every_precision() {
    let out = samp(&["kernels", "--rows", "8", "--seconds", "0.01"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let kernels = v["kernels"].as_array().expect("kernels");
    for (precision, bits) in [
        ("float32", None),
        ("bfloat16", None),
        ("int8", Some(7)),
        ("int8", Some(8)),
    ] {
        let detected: Vec<_> = kernels
            .iter()
            .filter(|k| k["precision"] == precision && k["detected"] == true)
            .filter(|k| bits.is_none_or(|b| k["weight_bits"] == b))
            .collect();
        assert_eq!(detected.len(), 1, "{precision} {bits:?}: {kernels:?}");
    }
    // Every kernel this CPU supports passes its self-check here.
    assert!(
        kernels.iter().all(|k| k["self_check"] == true),
        "{kernels:?}"
    );
    let rates = v["rates"].as_array().expect("rates");
    assert!(rates
        .iter()
        .all(|r| r["gops"].as_f64().is_some_and(|g| g > 0.0)));
}
