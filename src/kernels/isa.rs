//! Which instruction sets the kernels may use: what the CPU reports, capped by `SAMP_MAX_ISA`.
//!
//! Every feature check of samp's own kernels goes through the functions here, so the cap holds
//! for all of them: the GEMM tables, the epilogues, LayerNorm, softmax, the quantizers, the peak
//! probes. oneDNN is capped to the same level through its own API (see `onednn::ffi`). The
//! `gemm` crate (attention's products wherever samp's AVX-512 direct path does not run: beyond
//! its lengths, or under a cap below `avx512`) keeps its own run-time detection.
//!
//! The cap exists for the operator (pin a fleet of mixed hosts to one kernel family, rule out a
//! kernel while debugging) and for testing: an AVX-512 host capped to `avx2` runs the AVX2-only
//! hosts' kernels end to end.

/// The levels `SAMP_MAX_ISA` accepts, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum IsaCap {
    /// samp's portable Rust loops only (oneDNN not used).
    Portable,
    /// AVX2 + FMA (no AVX-VNNI: the AVX2-only EPYC tier).
    Avx2,
    /// AVX-512 F/BW/DQ/VL with VNNI and BF16 where present, AVX-VNNI; no AMX.
    Avx512,
    /// Everything the CPU has (the default).
    Native,
}

impl IsaCap {
    pub const NAMES: &'static str = "portable, avx2, avx512, native";

    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" => Ok(IsaCap::Portable),
            "avx2" => Ok(IsaCap::Avx2),
            "avx512" => Ok(IsaCap::Avx512),
            "native" | "" => Ok(IsaCap::Native),
            other => Err(format!(
                "SAMP_MAX_ISA={other:?} is not one of {}",
                Self::NAMES
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            IsaCap::Portable => "portable",
            IsaCap::Avx2 => "avx2",
            IsaCap::Avx512 => "avx512",
            IsaCap::Native => "native",
        }
    }
}

/// The cap from `SAMP_MAX_ISA` (read once), or the error that names a bad value. The binary
/// checks this at start-up and refuses to run on an error; a library user with a bad value gets
/// a warning and no cap.
pub fn max_isa() -> Result<IsaCap, String> {
    static CAP: std::sync::OnceLock<Result<IsaCap, String>> = std::sync::OnceLock::new();
    CAP.get_or_init(|| match std::env::var("SAMP_MAX_ISA") {
        Ok(v) => IsaCap::parse(&v),
        Err(std::env::VarError::NotPresent) => Ok(IsaCap::Native),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!(
            "SAMP_MAX_ISA is not UTF-8; use one of {}",
            IsaCap::NAMES
        )),
    })
    .clone()
}

/// The cap the kernels obey.
fn cap() -> IsaCap {
    static WARNED: std::sync::Once = std::sync::Once::new();
    max_isa().unwrap_or_else(|e| {
        WARNED.call_once(|| tracing::warn!("{e}; ignoring it"));
        IsaCap::Native
    })
}

/// Whether the cap lets the kernels use `level`.
pub fn allowed(level: IsaCap) -> bool {
    cap() >= level
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        allowed(IsaCap::Avx2) && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    })
}

/// AVX-512 F, BW, DQ and VL (every AVX-512 server CPU since Skylake-SP has all four).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        allowed(IsaCap::Avx512)
            && has_avx2_fma()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
    })
}

/// AVX-VNNI (`vpdpbusd` on ymm with the VEX encoding): above the `avx2` cap.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx_vnni() -> bool {
    allowed(IsaCap::Avx512) && has_avx2_fma() && is_x86_feature_detected!("avxvnni")
}

/// The vector ISA an element-wise routine (an epilogue, a quantizer) is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Portable,
    Avx2,
    Avx512,
}

impl Isa {
    /// The widest this CPU runs (under the cap).
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx512() {
                return Isa::Avx512;
            }
            if has_avx2_fma() {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_names_parse_in_any_case_and_bad_ones_are_named() {
        assert_eq!(IsaCap::parse("AVX2"), Ok(IsaCap::Avx2));
        assert_eq!(IsaCap::parse(" avx512 "), Ok(IsaCap::Avx512));
        assert_eq!(IsaCap::parse("portable"), Ok(IsaCap::Portable));
        assert_eq!(IsaCap::parse(""), Ok(IsaCap::Native));
        for c in [
            IsaCap::Portable,
            IsaCap::Avx2,
            IsaCap::Avx512,
            IsaCap::Native,
        ] {
            assert_eq!(IsaCap::parse(c.name()), Ok(c));
        }
        let e = IsaCap::parse("avx10").unwrap_err();
        assert!(e.contains("avx10") && e.contains(IsaCap::NAMES), "{e}");
        assert!(IsaCap::Portable < IsaCap::Avx2 && IsaCap::Avx512 < IsaCap::Native);
    }
}
