//! Peak probes: the best multiply-add instruction of this host timed in a register-only loop
//! on every thread of the pool, so that each kernel's rate can be read as a share of what the
//! hardware does. No memory traffic, 12 independent accumulators (more than any latency ×
//! throughput product of current cores).

use std::time::{Duration, Instant};

/// The instruction a probe times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// f32 FMA, 16 lanes (`vfmadd231ps zmm`): 32 flop each.
    Fma512,
    /// f32 FMA, 8 lanes (`vfmadd231ps ymm`): 16 flop each.
    Fma256,
    /// u8·s8 dot products of 4 into i32, 16 lanes (`vpdpbusd zmm`): 128 ops each.
    Vnni512,
    /// The same on AVX2-width registers (`vpdpbusd ymm`, AVX-VNNI): 64 ops each.
    Vnni256,
    /// bf16 pair dot products into f32, 16 lanes (`vdpbf16ps zmm`): 64 flop each.
    Bf16Dp512,
}

impl Probe {
    pub const ALL: [Probe; 5] = [
        Probe::Fma512,
        Probe::Fma256,
        Probe::Vnni512,
        Probe::Vnni256,
        Probe::Bf16Dp512,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Probe::Fma512 => "vfmadd231ps-zmm",
            Probe::Fma256 => "vfmadd231ps-ymm",
            Probe::Vnni512 => "vpdpbusd-zmm",
            Probe::Vnni256 => "vpdpbusd-ymm",
            Probe::Bf16Dp512 => "vdpbf16ps-zmm",
        }
    }

    /// Operations (multiply + add = 2) one instruction does.
    fn ops(self) -> f64 {
        match self {
            Probe::Fma512 => 32.0,
            Probe::Fma256 => 16.0,
            Probe::Vnni512 => 128.0,
            Probe::Vnni256 => 64.0,
            Probe::Bf16Dp512 => 64.0,
        }
    }

    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Probe::Fma512 => super::has_avx512(),
                Probe::Fma256 => super::has_avx2_fma(),
                Probe::Vnni512 => super::has_avx512() && is_x86_feature_detected!("avx512vnni"),
                Probe::Vnni256 => super::has_avx2_fma() && is_x86_feature_detected!("avxvnni"),
                Probe::Bf16Dp512 => super::has_avx512() && is_x86_feature_detected!("avx512bf16"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Operations per second of the whole rayon pool, each thread running the loop for about
    /// `seconds`; `None` where the CPU lacks the instruction.
    pub fn measure(self, seconds: f64) -> Option<f64> {
        if !self.supported() {
            return None;
        }
        let budget = Duration::from_secs_f64(seconds.max(0.01));
        let per_thread: Vec<f64> = rayon::broadcast(|_| {
            let start = Instant::now();
            let mut iters = 0u64;
            while start.elapsed() < budget {
                // SAFETY: `supported()` checked the instruction's features above.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    x86::run(self, LOOP)
                };
                iters += LOOP;
            }
            iters as f64 * ACCS as f64 * self.ops() / start.elapsed().as_secs_f64()
        });
        Some(per_thread.iter().sum())
    }
}

/// Iterations between clock reads.
const LOOP: u64 = 100_000;
/// Independent accumulators per iteration.
const ACCS: usize = 12;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Probe, ACCS};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have the probe's instruction.
    pub unsafe fn run(p: Probe, n: u64) {
        match p {
            Probe::Fma512 => fma512(n),
            Probe::Fma256 => fma256(n),
            Probe::Vnni512 => vnni512(n),
            Probe::Vnni256 => vnni256(n),
            Probe::Bf16Dp512 => bf16(n),
        }
    }

    // Each loop feeds its accumulators from values the optimiser cannot see through
    // (`black_box`) and consumes them afterwards, so the instructions are neither folded nor
    // removed.

    #[target_feature(enable = "avx512f")]
    unsafe fn fma512(n: u64) {
        let (a, b) = std::hint::black_box((_mm512_set1_ps(0.999), _mm512_set1_ps(1e-3)));
        let mut acc = [_mm512_setzero_ps(); ACCS];
        for _ in 0..n {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        std::hint::black_box(acc);
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn fma256(n: u64) {
        let (a, b) = std::hint::black_box((_mm256_set1_ps(0.999), _mm256_set1_ps(1e-3)));
        let mut acc = [_mm256_setzero_ps(); ACCS];
        for _ in 0..n {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        std::hint::black_box(acc);
    }

    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn vnni512(n: u64) {
        let (a, b) = std::hint::black_box((_mm512_set1_epi8(3), _mm512_set1_epi8(-2)));
        let mut acc = [_mm512_setzero_si512(); ACCS];
        for _ in 0..n {
            for v in acc.iter_mut() {
                *v = _mm512_dpbusd_epi32(*v, a, b);
            }
        }
        std::hint::black_box(acc);
    }

    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn vnni256(n: u64) {
        let (a, b) = std::hint::black_box((_mm256_set1_epi8(3), _mm256_set1_epi8(-2)));
        let mut acc = [_mm256_setzero_si256(); ACCS];
        for _ in 0..n {
            for v in acc.iter_mut() {
                *v = _mm256_dpbusd_avx_epi32(*v, a, b);
            }
        }
        std::hint::black_box(acc);
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn bf16(n: u64) {
        let (a, b) = std::hint::black_box((
            _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5), _mm512_set1_ps(0.25)),
            _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3), _mm512_set1_ps(2e-3)),
        ));
        let mut acc = [_mm512_setzero_ps(); ACCS];
        for _ in 0..n {
            for v in acc.iter_mut() {
                *v = _mm512_dpbf16_ps(*v, a, b);
            }
        }
        std::hint::black_box(acc);
    }
}
