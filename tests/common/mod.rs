//! Shared helpers of the integration tests: where the fetched models and golden files live.

#![allow(dead_code)]

use std::path::PathBuf;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A model fetched by scripts/fetch_models.sh; a clear failure (not a skip) when absent.
pub fn model_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("SAMP_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models"));
    let d = base.join(name);
    assert!(
        d.join(".complete").exists() || d.join("config.json").exists(),
        "model {} is missing: run scripts/fetch_models.sh first",
        d.display()
    );
    d
}

pub fn golden(name: &str) -> serde_json::Value {
    let p = root().join("tests/golden").join(name);
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).unwrap()
}

pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
