//! AMX micro-kernels for INT8 (`tdpbusd`) and BF16 (`tdpbf16ps`): 16 rows × two adjacent
//! 16-column panels per call; tile registers tmm0/tmm1 accumulate the two 16 × 16 blocks (i32 or
//! f32), tmm4 holds 16 rows × 64 bytes of activations, tmm6/tmm7 16 rows of 64 bytes of weights.
//!
//! **Written without an AMX machine to run it on.** The packed weight panels of both
//! precisions are already in the layout the instructions want for their B operand (each
//! 64-byte group holds 4 consecutive int8 k, or 2 consecutive bf16 k, of 16 columns, so 16
//! groups are one B tile at stride 64), and the activation rows are the A operand at stride
//! `kp`. Everything below counts bytes, so one schedule serves both. The schedule — which tile
//! is configured how, loaded from where, multiplied with which, stored where — is written once
//! ([`schedule`]) against the [`Tiles`] trait, with two implementations: [`Emulated`], a
//! software model of the tile registers and of both instructions that the unit tests run on any
//! CPU against the portable kernels, and [`Hardware`], the instruction sequence in inline
//! `asm!` (stable Rust has no AMX intrinsics). On a host with AMX an entry is used only after
//! its start-up self-check reproduces the portable kernel.

use super::packed::NR;

/// Rows per call (one A tile).
pub const MR: usize = 16;
/// Adjacent panels per call (one C and one B tile each).
pub const NP: usize = 2;
/// Depth bytes per tile step (a full A-tile row).
const KB: usize = 64;

/// Which dot-product instruction a schedule issues.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Dot {
    /// `tdpbusd`: u8 × s8, four products per i32 lane.
    Int8,
    /// `tdpbf16ps`: bf16 × bf16, two products per f32 lane.
    Bf16,
}

/// The tile operations the schedule needs. Tile numbers: C = 0, 1; A = 4; B = 6, 7.
pub trait Tiles {
    /// Configure palette 1: A tile `rows × kb` bytes, B tiles `kb / 4` rows × 64 bytes, C
    /// tiles `rows × 64` bytes.
    ///
    /// # Safety
    /// Hardware: AMX must be enabled for this process.
    unsafe fn config(&mut self, rows: usize, kb: usize);
    /// # Safety
    /// `ptr` must address the configured rows at `stride` bytes.
    unsafe fn load(&mut self, tile: usize, ptr: *const u8, stride: usize);
    /// `C[tile c] += A[tile a] · B[tile b]` with the instruction `dot`.
    ///
    /// # Safety
    /// The tiles must be configured.
    unsafe fn dot(&mut self, dot: Dot, c: usize, a: usize, b: usize);
    /// # Safety
    /// `ptr` must address the configured rows of the C tile at `stride` bytes, writable.
    unsafe fn store(&mut self, tile: usize, ptr: *mut u8, stride: usize);
    /// # Safety
    /// Hardware: AMX must be enabled.
    unsafe fn release(&mut self);
}

const C: [usize; NP] = [0, 1];
const A: usize = 4;
const B: [usize; NP] = [6, 7];

/// One call of a table entry on any [`Tiles`], everything in bytes: `rows` (≤ 16) rows of
/// `kc` bytes at `a` (stride `lda`); per panel `q < np` (≤ 2) `kc / 4` rows of 64 bytes at
/// `b + q * bstride`; accumulators `np × 16` rows of 64 bytes at `acc`, panel-major.
///
/// # Safety
/// Every pointer must address what is described above, and `t` as its implementation requires.
// The panel index drives the tile numbers and the pointer offsets together.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
pub unsafe fn schedule<T: Tiles>(
    t: &mut T,
    dot: Dot,
    rows: usize,
    np: usize,
    kc: usize,
    a: *const u8,
    lda: usize,
    b: *const u8,
    bstride: usize,
    acc: *mut u8,
) {
    let np = np.min(NP);
    let full = kc / KB * KB;
    // One configuration for `kb`-byte steps from k0 to k1; the accumulators stay in the C
    // tiles in between. The B tile of the step at byte k starts 16 × k bytes into the panel
    // (each 4 bytes of an activation row meet one 64-byte row of weights).
    let pass = |t: &mut T, kb: usize, k0: usize, k1: usize| {
        // SAFETY: within the extents the caller vouches for.
        t.config(rows, kb);
        for q in 0..np {
            t.load(C[q], acc.add(q * MR * 64), 64);
        }
        let mut k = k0;
        while k < k1 {
            t.load(A, a.add(k), lda);
            for q in 0..np {
                t.load(B[q], b.add(q * bstride + k * 16), 64);
                t.dot(dot, C[q], A, B[q]);
            }
            k += kb;
        }
        for q in 0..np {
            t.store(C[q], acc.add(q * MR * 64), 64);
        }
    };
    if full > 0 {
        pass(t, KB, 0, full);
    }
    // The tail (a multiple of 4 bytes): one step with a narrower A and a shorter B tile.
    if kc > full {
        pass(t, kc - full, full, kc);
    }
    t.release();
}

/// A software model of the eight tile registers, `tdpbusd` and `tdpbf16ps`, for the tests.
pub struct Emulated {
    tiles: [[[u8; 64]; 16]; 8],
    /// Rows and bytes per row of each tile, as configured.
    shape: [(usize, usize); 8],
}

impl Default for Emulated {
    fn default() -> Self {
        Emulated {
            tiles: [[[0; 64]; 16]; 8],
            shape: [(0, 0); 8],
        }
    }
}

impl Emulated {
    /// The shapes palette 1 gives each tile for `rows × kb` (as [`config_block`] writes them).
    fn shapes(rows: usize, kb: usize) -> [(usize, usize); 8] {
        let mut s = [(0, 0); 8];
        for c in C {
            s[c] = (rows, 64);
        }
        s[A] = (rows, kb);
        for b in B {
            s[b] = (kb / 4, 64);
        }
        s
    }
}

fn dword(t: &[u8; 64], j: usize) -> [u8; 4] {
    t[4 * j..4 * j + 4].try_into().expect("4 bytes")
}

/// The bf16 number in half `h` (0 low, 1 high) of a dword, widened (exact).
fn half(d: [u8; 4], h: usize) -> f32 {
    f32::from_bits((u16::from_le_bytes([d[2 * h], d[2 * h + 1]]) as u32) << 16)
}

impl Tiles for Emulated {
    unsafe fn config(&mut self, rows: usize, kb: usize) {
        assert!((1..=16).contains(&rows) && kb.is_multiple_of(4) && (4..=64).contains(&kb));
        self.shape = Self::shapes(rows, kb);
        self.tiles = [[[0; 64]; 16]; 8];
    }

    unsafe fn load(&mut self, tile: usize, ptr: *const u8, stride: usize) {
        let (rows, cols) = self.shape[tile];
        for r in 0..rows {
            for c in 0..cols {
                // SAFETY: the caller vouches for rows × cols bytes at stride.
                self.tiles[tile][r][c] = *ptr.add(r * stride + c);
            }
        }
    }

    unsafe fn dot(&mut self, dot: Dot, c: usize, a: usize, b: usize) {
        let (m, n4) = self.shape[c];
        let (am, k4) = self.shape[a];
        let (bk, bn4) = self.shape[b];
        // The instructions' shape rules: C is M × N dwords, A is M × K dwords, B K × N.
        assert!(am == m && bk * 4 == k4 && bn4 == n4, "tile shapes");
        for i in 0..m {
            for j in 0..n4 / 4 {
                let cv = dword(&self.tiles[c][i], j);
                let out = match dot {
                    Dot::Int8 => {
                        let mut sum = i32::from_le_bytes(cv);
                        for k in 0..k4 / 4 {
                            let x = dword(&self.tiles[a][i], k);
                            let w = dword(&self.tiles[b][k], j);
                            for q in 0..4 {
                                sum = sum.wrapping_add(x[q] as i32 * w[q] as i8 as i32);
                            }
                        }
                        sum.to_le_bytes()
                    }
                    Dot::Bf16 => {
                        // Per pair: the odd product, then the even one (the documented order).
                        let mut sum = f32::from_le_bytes(cv);
                        for k in 0..k4 / 4 {
                            let x = dword(&self.tiles[a][i], k);
                            let w = dword(&self.tiles[b][k], j);
                            sum += half(x, 1) * half(w, 1);
                            sum += half(x, 0) * half(w, 0);
                        }
                        sum.to_le_bytes()
                    }
                };
                self.tiles[c][i][4 * j..4 * j + 4].copy_from_slice(&out);
            }
        }
    }

    unsafe fn store(&mut self, tile: usize, ptr: *mut u8, stride: usize) {
        let (rows, cols) = self.shape[tile];
        for r in 0..rows {
            for c in 0..cols {
                // SAFETY: the caller vouches for rows × cols writable bytes at stride.
                *ptr.add(r * stride + c) = self.tiles[tile][r][c];
            }
        }
    }

    unsafe fn release(&mut self) {
        self.shape = [(0, 0); 8];
    }
}

/// The emulated INT8 entry (tests only): the same schedule over [`Emulated`].
///
/// # Safety
/// As `Int8Tile`.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn int8_emulated(
    rows: usize,
    np: usize,
    kc: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    bstride: usize,
    acc: *mut [i32; NR],
) {
    let (b, acc) = (b as *const u8, acc as *mut u8);
    let e = &mut Emulated::default();
    schedule(e, Dot::Int8, rows, np, kc, a, lda, b, bstride, acc)
}

/// The emulated BF16 entry (tests only).
///
/// # Safety
/// As `Bf16Tile`.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn bf16_emulated(
    rows: usize,
    np: usize,
    kc: usize,
    a: *const u16,
    lda: usize,
    b: *const u16,
    bstride: usize,
    acc: *mut [f32; NR],
) {
    let (a, b, acc) = (a as *const u8, b as *const u8, acc as *mut u8);
    let e = &mut Emulated::default();
    schedule(
        e,
        Dot::Bf16,
        rows,
        np,
        2 * kc,
        a,
        2 * lda,
        b,
        2 * bstride,
        acc,
    )
}

/// The instruction sequence.
#[derive(Default)]
pub struct Hardware {
    /// The configuration block of `ldtilecfg`.
    cfg: Config,
}

#[repr(C, align(64))]
struct Config([u8; 64]);

impl Default for Config {
    fn default() -> Self {
        Config([0; 64])
    }
}

/// The `ldtilecfg` block for `rows × kb`, palette 1: byte 0 the palette, bytes 16 + 2t the
/// bytes per row of tile t (u16), byte 48 + t its rows; the shapes are the emulator's.
pub fn config_block(rows: usize, kb: usize) -> [u8; 64] {
    let mut c = [0u8; 64];
    c[0] = 1;
    for (tile, (r, cols)) in Emulated::shapes(rows, kb).into_iter().enumerate() {
        c[16 + 2 * tile..18 + 2 * tile].copy_from_slice(&(cols as u16).to_le_bytes());
        c[48 + tile] = r as u8;
    }
    c
}

impl Tiles for Hardware {
    unsafe fn config(&mut self, rows: usize, kb: usize) {
        self.cfg.0 = config_block(rows, kb);
        // SAFETY: AMX was enabled for this process (see `supported`); the block is 64 bytes.
        std::arch::asm!("ldtilecfg [{}]", in(reg) self.cfg.0.as_ptr(), options(nostack, readonly));
    }

    unsafe fn load(&mut self, tile: usize, ptr: *const u8, stride: usize) {
        // SAFETY: the caller vouches for the configured rows at ptr, stride bytes apart.
        match tile {
            0 => {
                std::arch::asm!("tileloadd tmm0, [{p} + {s} * 1]", p = in(reg) ptr, s = in(reg) stride, options(nostack, readonly))
            }
            1 => {
                std::arch::asm!("tileloadd tmm1, [{p} + {s} * 1]", p = in(reg) ptr, s = in(reg) stride, options(nostack, readonly))
            }
            4 => {
                std::arch::asm!("tileloadd tmm4, [{p} + {s} * 1]", p = in(reg) ptr, s = in(reg) stride, options(nostack, readonly))
            }
            6 => {
                std::arch::asm!("tileloadd tmm6, [{p} + {s} * 1]", p = in(reg) ptr, s = in(reg) stride, options(nostack, readonly))
            }
            7 => {
                std::arch::asm!("tileloadd tmm7, [{p} + {s} * 1]", p = in(reg) ptr, s = in(reg) stride, options(nostack, readonly))
            }
            _ => unreachable!("tile numbers are the schedule's constants"),
        }
    }

    unsafe fn dot(&mut self, dot: Dot, c: usize, a: usize, b: usize) {
        debug_assert_eq!(a, A);
        match (dot, c, b) {
            (Dot::Int8, 0, 6) => {
                std::arch::asm!("tdpbusd tmm0, tmm4, tmm6", options(nostack, nomem))
            }
            (Dot::Int8, 1, 7) => {
                std::arch::asm!("tdpbusd tmm1, tmm4, tmm7", options(nostack, nomem))
            }
            (Dot::Bf16, 0, 6) => {
                std::arch::asm!("tdpbf16ps tmm0, tmm4, tmm6", options(nostack, nomem))
            }
            (Dot::Bf16, 1, 7) => {
                std::arch::asm!("tdpbf16ps tmm1, tmm4, tmm7", options(nostack, nomem))
            }
            _ => unreachable!("the schedule pairs C0 with B6 and C1 with B7"),
        }
    }

    unsafe fn store(&mut self, tile: usize, ptr: *mut u8, stride: usize) {
        // SAFETY: the caller vouches for the configured rows at ptr, writable.
        match tile {
            0 => {
                std::arch::asm!("tilestored [{p} + {s} * 1], tmm0", p = in(reg) ptr, s = in(reg) stride, options(nostack))
            }
            1 => {
                std::arch::asm!("tilestored [{p} + {s} * 1], tmm1", p = in(reg) ptr, s = in(reg) stride, options(nostack))
            }
            _ => unreachable!("only C tiles are stored"),
        }
    }

    unsafe fn release(&mut self) {
        std::arch::asm!("tilerelease", options(nostack, nomem));
    }
}

/// The INT8 table entry on real AMX hardware.
///
/// # Safety
/// As `Int8Tile`, and [`supported_int8`] must have returned true.
#[allow(clippy::too_many_arguments)]
pub unsafe fn int8(
    rows: usize,
    np: usize,
    kc: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    bstride: usize,
    acc: *mut [i32; NR],
) {
    let (b, acc) = (b as *const u8, acc as *mut u8);
    let h = &mut Hardware::default();
    schedule(h, Dot::Int8, rows, np, kc, a, lda, b, bstride, acc)
}

/// The BF16 table entry on real AMX hardware.
///
/// # Safety
/// As `Bf16Tile`, and [`supported_bf16`] must have returned true.
#[allow(clippy::too_many_arguments)]
pub unsafe fn bf16(
    rows: usize,
    np: usize,
    kc: usize,
    a: *const u16,
    lda: usize,
    b: *const u16,
    bstride: usize,
    acc: *mut [f32; NR],
) {
    let (a, b, acc) = (a as *const u8, b as *const u8, acc as *mut u8);
    let h = &mut Hardware::default();
    schedule(
        h,
        Dot::Bf16,
        rows,
        np,
        2 * kc,
        a,
        2 * lda,
        b,
        2 * bstride,
        acc,
    )
}

pub fn supported_int8() -> bool {
    supported(25)
}

pub fn supported_bf16() -> bool {
    supported(22)
}

/// AMX-TILE and the given AMX feature in CPUID (leaf 7, EDX bit 24 and `bit`: 25 INT8, 22
/// BF16), the OS saving tile state (XCR0 bits 17 and 18), and the kernel's permission for this
/// process to use the tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, Linux
/// ≥ 5.16; asked once).
fn supported(bit: u32) -> bool {
    if !super::has_avx512() {
        return false;
    }
    // CPUID leaf 7 exists on every CPU with AVX-512 (checked above).
    let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
    if leaf7.edx & (1 << 24) == 0 || leaf7.edx & (1 << bit) == 0 {
        return false;
    }
    static PERMITTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PERMITTED.get_or_init(|| {
        // SAFETY: XGETBV is available where the OS enabled XSAVE, which AVX-512 requires.
        let xcr0 = unsafe { xgetbv0() };
        xcr0 & (0b11 << 17) == 0b11 << 17 && request_tile_permission()
    })
}

/// # Safety
/// The CPU must support XSAVE with OS support (OSXSAVE).
unsafe fn xgetbv0() -> u64 {
    let (lo, hi): (u32, u32);
    std::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nostack, nomem));
    ((hi as u64) << 32) | lo as u64
}

#[cfg(target_os = "linux")]
fn request_tile_permission() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl only reads its two integer arguments; the syscall clobbers rcx and r11.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    if ret != 0 {
        tracing::warn!(
            errno = -ret,
            "the kernel refused AMX tile data for this process; not using AMX"
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_permission() -> bool {
    false
}
