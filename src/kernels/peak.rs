//! Peak probes: the best multiply-add instruction of this host timed in a register-only loop
//! on every thread of the pool, so that each kernel's rate can be read as a share of what the
//! hardware does. No memory traffic, 12 independent accumulators (more than any latency ×
//! throughput product of current cores). The AMX probes chain their tile products into one C
//! tile (tile loads once, before the loop): on the Sapphire Rapids-class host that ran faster
//! than spreading them over 2, 4 or 6 C tiles (`tdpbusd`, 2 threads, best of 3: 8.6 Top/s for one
//! tile, 8.0 for 2, 6.3 for 4 or 6), so one chain is the instruction's peak there.

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
    /// AVX2's u8·s8 dot products of 4 into i32 without VNNI, 8 lanes: `vpmaddubsw` (pairs into
    /// i16), `vpmaddwd` by ones (pairs of those into i32), `vpaddd`; 64 ops per three
    /// instructions, counted as one here (the INT8 peak of AVX2-only hosts).
    Maddubs256,
    /// AMX u8·s8 tile product (`tdpbusd`, 16 × 16 i32 sums of 64 products): 32,768 ops each.
    AmxInt8,
    /// AMX bf16 tile product (`tdpbf16ps`, 16 × 16 f32 sums of 32 products): 16,384 flop each.
    AmxBf16,
}

impl Probe {
    pub const ALL: [Probe; 8] = [
        Probe::Fma512,
        Probe::Fma256,
        Probe::Vnni512,
        Probe::Vnni256,
        Probe::Maddubs256,
        Probe::Bf16Dp512,
        Probe::AmxInt8,
        Probe::AmxBf16,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Probe::Fma512 => "vfmadd231ps-zmm",
            Probe::Fma256 => "vfmadd231ps-ymm",
            Probe::Vnni512 => "vpdpbusd-zmm",
            Probe::Vnni256 => "vpdpbusd-ymm",
            Probe::Bf16Dp512 => "vdpbf16ps-zmm",
            Probe::Maddubs256 => "vpmaddubsw-ymm",
            Probe::AmxInt8 => "tdpbusd",
            Probe::AmxBf16 => "tdpbf16ps",
        }
    }

    /// Operations (multiply + add = 2) one instruction does.
    fn ops(self) -> f64 {
        match self {
            Probe::Fma512 => 32.0,
            Probe::Fma256 => 16.0,
            Probe::Vnni512 => 128.0,
            Probe::Vnni256 | Probe::Maddubs256 => 64.0,
            Probe::Bf16Dp512 => 64.0,
            Probe::AmxInt8 => 2.0 * 16.0 * 16.0 * 64.0,
            Probe::AmxBf16 => 2.0 * 16.0 * 16.0 * 32.0,
        }
    }

    /// Instructions one loop iteration issues.
    fn per_iter(self) -> usize {
        match self {
            Probe::AmxInt8 | Probe::AmxBf16 => x86::AMX_ACCS,
            _ => ACCS,
        }
    }

    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Probe::Fma512 => super::has_avx512(),
                Probe::Fma256 => super::has_avx2_fma(),
                Probe::Vnni512 => super::has_avx512() && is_x86_feature_detected!("avx512vnni"),
                Probe::Vnni256 => super::has_avx_vnni(),
                Probe::Maddubs256 => super::has_avx2_fma(),
                Probe::Bf16Dp512 => super::has_avx512() && is_x86_feature_detected!("avx512bf16"),
                Probe::AmxInt8 => super::amx::supported_int8(),
                Probe::AmxBf16 => super::amx::supported_bf16(),
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
            iters as f64 * self.per_iter() as f64 * self.ops() / start.elapsed().as_secs_f64()
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
    use crate::kernels::amx::{Dot, Hardware, Tiles, B, BLOCK_A, BLOCK_C, KB, MR};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must have the probe's instruction.
    pub unsafe fn run(p: Probe, n: u64) {
        match p {
            Probe::Fma512 => fma512(n),
            Probe::Fma256 => fma256(n),
            Probe::Vnni512 => vnni512(n),
            Probe::Vnni256 => vnni256(n),
            Probe::Maddubs256 => maddubs256(n),
            Probe::Bf16Dp512 => bf16(n),
            Probe::AmxInt8 => {
                amx(Dot::Int8, n);
            }
            Probe::AmxBf16 => {
                amx(Dot::Bf16, n);
            }
        }
    }

    /// Tile products per AMX probe iteration (all into C tile 0).
    pub const AMX_ACCS: usize = 4;

    /// The probe's loop, `n` iterations of [`AMX_ACCS`] products; returns the first C element's
    /// bits (`4 · 64 n` as an i32 for INT8, `4 · 32 n` as an f32 for BF16: each product adds 64
    /// (32) products of ones to it), which the tests check.
    ///
    /// # Safety
    /// AMX with `dot`'s instruction must be supported and enabled for this process.
    pub unsafe fn amx(dot: Dot, n: u64) -> u32 {
        #[repr(C, align(64))]
        struct Operand([u8; 1024]);
        // Ones: u8 1 and s8 1, or bf16 1.0 (0x3f80, little-endian).
        let one: [u8; 2] = match dot {
            Dot::Int8 => [1, 1],
            Dot::Bf16 => [0x80, 0x3f],
        };
        let src = std::hint::black_box(Operand(std::array::from_fn(|i| one[i % 2])));
        let mut t = Hardware::default();
        t.config(MR, KB);
        t.load(BLOCK_A[0], src.0.as_ptr(), 64);
        t.load(B[0], src.0.as_ptr(), 64);
        t.zero(BLOCK_C[0][0]);
        for _ in 0..n {
            for _ in 0..AMX_ACCS {
                t.dot(dot, BLOCK_C[0][0], BLOCK_A[0], B[0]);
            }
        }
        let mut out = Operand([0; 1024]);
        t.store(BLOCK_C[0][0], out.0.as_mut_ptr(), 64);
        t.release();
        u32::from_le_bytes([out.0[0], out.0[1], out.0[2], out.0[3]])
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

    #[target_feature(enable = "avx2,fma")]
    unsafe fn maddubs256(n: u64) {
        let (a, b, ones) = std::hint::black_box((
            _mm256_set1_epi8(3),
            _mm256_set1_epi8(-2),
            _mm256_set1_epi16(1),
        ));
        // Each accumulator's bytes are the unsigned operand of its next product, so nothing
        // is loop-invariant (12 chains of 3 instructions cover their latency).
        let mut acc = [a; ACCS];
        for _ in 0..n {
            for v in acc.iter_mut() {
                let pairs = _mm256_maddubs_epi16(*v, b);
                *v = _mm256_add_epi32(*v, _mm256_madd_epi16(pairs, ones));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_probe_reports_a_rate() {
        for p in Probe::ALL {
            match p.measure(0.01) {
                Some(r) => assert!(r.is_finite() && r > 0.0, "{}: {r}", p.name()),
                None => assert!(!p.supported(), "{} supported but not measured", p.name()),
            }
        }
    }

    /// The AMX probes issue what they count: after `n` iterations the C tile holds `4 n` tile
    /// products of ones (64 per INT8 lane, 32 per BF16 lane). Runs where the host has AMX.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn amx_probes_issue_their_products() {
        use crate::kernels::amx::{supported_bf16, supported_int8, Dot};
        if supported_int8() {
            // SAFETY: checked just above.
            assert_eq!(unsafe { x86::amx(Dot::Int8, 3) } as i32, 4 * 3 * 64);
        }
        if supported_bf16() {
            // SAFETY: checked just above.
            assert_eq!(
                f32::from_bits(unsafe { x86::amx(Dot::Bf16, 3) }),
                4.0 * 3.0 * 32.0
            );
        }
    }
}
