//! The INT8 weights of a plan, saved beside the original model files as a safetensors file
//! (`layers.{i}.{gemm}.weight`: I8 `[n, k]`; `layers.{i}.{gemm}.scale`: F32 `[n]`). The format
//! is small enough to write and read here: an 8-byte little-endian header length, a JSON
//! header of names → dtype, shape and byte offsets, then the bytes. The metadata's
//! `weight_bits` is the width of most tensors; `weight_bits.{name}` that of a tensor whose
//! width differs (a plan's narrowed GEMMs).

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Result, SampError};
use crate::kernels::int8::QWeights;

pub const INT8_FILE: &str = "samp-int8.safetensors";

/// Name of one GEMM's tensors (before the `.weight`/`.scale` suffix).
pub fn tensor_name(layer: usize, gemm: &str) -> String {
    format!("layers.{layer}.{gemm}")
}

/// Write `(name, weights)` pairs.
pub fn write(path: &Path, tensors: &[(String, &QWeights)]) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut body: Vec<u8> = Vec::new();
    let mut put = |name: String, dtype: &str, shape: Vec<usize>, bytes: &[u8]| {
        let start = body.len();
        body.extend_from_slice(bytes);
        header.insert(
            name,
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, body.len()]}),
        );
    };
    for (name, q) in tensors {
        let rows: Vec<u8> = q.rows().into_iter().map(|v| v as u8).collect();
        put(format!("{name}.weight"), "I8", vec![q.n, q.k], &rows);
        let scales: Vec<u8> = q.scales.iter().flat_map(|s| s.to_le_bytes()).collect();
        put(format!("{name}.scale"), "F32", vec![q.n], &scales);
    }
    header.insert("__metadata__".into(), metadata(tensors).into());
    let mut head = serde_json::to_vec(&header).expect("header serializes");
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + head.len() + body.len());
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&body);
    std::fs::write(path, out).map_err(|e| SampError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}

/// The file's metadata: its format, the most common weight width, and each tensor's own
/// where it differs.
fn metadata(tensors: &[(String, &QWeights)]) -> serde_json::Map<String, serde_json::Value> {
    let count = |b: u32| tensors.iter().filter(|(_, q)| q.bits == b).count();
    let bits = crate::kernels::int8::WEIGHT_BITS
        .into_iter()
        .rev()
        .max_by_key(|&b| count(b))
        .filter(|&b| count(b) > 0)
        .unwrap_or(7);
    let mut meta = serde_json::Map::new();
    meta.insert("format".into(), "samp-int8/1".into());
    meta.insert("weight_bits".into(), bits.to_string().into());
    for (name, q) in tensors.iter().filter(|(_, q)| q.bits != bits) {
        meta.insert(format!("weight_bits.{name}"), q.bits.to_string().into());
    }
    meta
}

/// The INT8 weights in a file, by name (without the `.weight`/`.scale` suffix).
pub fn read(path: &Path) -> Result<BTreeMap<String, QWeights>> {
    let bytes = std::fs::read(path).map_err(|e| SampError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    parse(&bytes, path)
}

/// The INT8 weights in the bytes of a file; `path` names it in errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<BTreeMap<String, QWeights>> {
    let bad = |reason: String| SampError::malformed(path, reason);
    if bytes.len() < 8 {
        return Err(bad("shorter than a safetensors header".into()));
    }
    let hlen = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    if hlen > bytes.len() - 8 {
        return Err(bad(format!(
            "header length {hlen} past the end of the file"
        )));
    }
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + hlen]).map_err(|e| bad(format!("header: {e}")))?;
    let data = &bytes[8 + hlen..];
    // Artifacts written before the width was recorded hold 7-bit weights.
    let meta = header.get("__metadata__");
    let width = |key: &str, default: u32| -> Result<u32> {
        match meta.and_then(|m| m.get(key)) {
            None => Ok(default),
            Some(v) => v
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| bad(format!("__metadata__.{key}: {v} is not a bit count"))),
        }
    };
    let bits = width("weight_bits", 7)?;
    let tensor = |name: &str, dtype: &str| -> Result<(Vec<usize>, &[u8])> {
        let t = header
            .get(name)
            .ok_or_else(|| bad(format!("tensor {name} is missing")))?;
        let field = |k: &str| t.get(k).ok_or_else(|| bad(format!("{name}: no {k}")));
        if field("dtype")?.as_str() != Some(dtype) {
            return Err(bad(format!("{name}: dtype is not {dtype}")));
        }
        let nums = |k: &str| -> Result<Vec<usize>> {
            field(k)?
                .as_array()
                .and_then(|a| a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect())
                .ok_or_else(|| bad(format!("{name}: {k} is not a list of integers")))
        };
        let (shape, off) = (nums("shape")?, nums("data_offsets")?);
        let width = if dtype == "F32" { 4 } else { 1 };
        let len = shape
            .iter()
            .try_fold(width, |n: usize, &d| n.checked_mul(d))
            .ok_or_else(|| bad(format!("{name}: shape {shape:?} overflows")))?;
        match off[..] {
            [s, e] if s <= e && e <= data.len() && e - s == len => Ok((shape, &data[s..e])),
            _ => Err(bad(format!(
                "{name}: data_offsets do not match shape {shape:?}"
            ))),
        }
    };
    let mut out = BTreeMap::new();
    for key in header.keys() {
        let Some(name) = key.strip_suffix(".weight") else {
            continue;
        };
        let (shape, w) = tensor(key, "I8")?;
        let [n, k] = shape[..] else {
            return Err(bad(format!("{key}: shape {shape:?} is not 2-D")));
        };
        let (sshape, s) = tensor(&format!("{name}.scale"), "F32")?;
        if sshape != [n] {
            return Err(bad(format!(
                "{name}.scale: shape {sshape:?}, expected [{n}]"
            )));
        }
        let q: Vec<i8> = w.iter().map(|&b| b as i8).collect();
        let scales = s
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let bits = width(&format!("weight_bits.{name}"), bits)?;
        let qw = QWeights::from_parts(&q, scales, n, k, bits)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        out.insert(name.to_string(), qw);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(INT8_FILE);
        let w: Vec<f32> = (0..35).map(|i| i as f32 - 17.0).collect();
        for bits in [7, 8] {
            let q = QWeights::quantize(&w, 5, 7, bits);
            write(&path, &[(tensor_name(0, "qkv"), &q)]).unwrap();
            let back = read(&path).unwrap();
            let got = &back["layers.0.qkv"];
            assert_eq!(got.rows(), q.rows());
            assert_eq!(got.scales, q.scales);
            assert_eq!(got.bits, bits);
        }
        // Mixed widths: the most common one is the file's, the other tensor names its own.
        let (q7, q6) = (
            QWeights::quantize(&w, 5, 7, 7),
            QWeights::quantize(&w, 5, 7, 6),
        );
        let names = ["qkv", "attn_out", "ffn_up"].map(|g| tensor_name(2, g));
        let tensors = [
            (names[0].clone(), &q7),
            (names[1].clone(), &q6),
            (names[2].clone(), &q7),
        ];
        write(&path, &tensors).unwrap();
        let back = read(&path).unwrap();
        for (name, q) in &tensors {
            assert_eq!(
                (back[name].bits, back[name].rows()),
                (q.bits, q.rows()),
                "{name}"
            );
        }
        let bytes = std::fs::read(&path).unwrap();
        let head = String::from_utf8_lossy(&bytes[8..]);
        assert!(head.contains(r#""weight_bits":"7""#), "{head}");
        assert!(
            head.contains(r#""weight_bits.layers.2.attn_out":"6""#),
            "{head}"
        );
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("data_offsets"), "{e}");
        // A shape whose size overflows is an error naming it, not a panic or a wrap.
        let header = br#"{"layers.0.qkv.weight":{"dtype":"I8","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}"#;
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header);
        std::fs::write(&path, &file).unwrap();
        let e = read(&path).unwrap_err().to_string();
        assert!(e.contains("overflows"), "{e}");
    }
}
