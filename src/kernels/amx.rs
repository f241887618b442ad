//! AMX micro-kernels for INT8 (`tdpbusd`) and BF16 (`tdpbf16ps`). Two schedules over the same
//! tile configuration (every tile 16 rows × 64 bytes):
//!
//! - [`block`], the fast path: 32 rows × two adjacent 16-column panels per call, four C tiles
//!   (tmm0–tmm3) started at zero, two A tiles (tmm4/tmm5) and two B tiles (tmm6/tmm7), so each
//!   tile load feeds two dot products; the caller configures the tiles once per task. For
//!   depths that are a multiple of 64 bytes (every BERT-class shape).
//! - [`schedule`], any depth: 16 rows × two panels, accumulators loaded and stored around each
//!   call, a narrower tile configuration for the depth's tail; configures and releases itself.
//!
//! First written without an AMX machine; since run on one (Sapphire Rapids-class, AMX-INT8 and
//! AMX-BF16), where both schedules pass their self-checks. The packed weight panels of both
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

use crate::kernels::TileCall;

mod task;
pub use task::run_task;

/// Rows per call (one A tile).
pub const MR: usize = 16;
/// Adjacent panels per call (one C and one B tile each).
pub const NP: usize = 2;
/// Depth bytes per tile step (a full A-tile row).
pub(super) const KB: usize = 64;

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
    /// Whether these are the real tile registers (hardware-only hints such as prefetches are
    /// issued only then).
    const HARDWARE: bool = false;
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
    /// One depth step of the fast path's full 2 × 2 block: load A halves from `a` (stride
    /// `lda`) and B panels from `b` (stride 64), then `C[h][q] += A[h] · B[q]` for all four.
    /// The hardware issues it as one instruction sequence.
    ///
    /// # Safety
    /// As [`Tiles::load`] for each pointer, and the tiles configured by `config(MR, 64)`.
    unsafe fn step_2x2(&mut self, dot: Dot, a: [*const u8; 2], lda: usize, b: [*const u8; 2]) {
        for h in 0..2 {
            self.load(BLOCK_A[h], a[h], lda);
        }
        for q in 0..NP {
            self.load(B[q], b[q], 64);
            for h in 0..2 {
                self.dot(dot, BLOCK_C[h][q], BLOCK_A[h], B[q]);
            }
        }
    }
    /// Set a C tile to zero.
    ///
    /// # Safety
    /// The tiles must be configured.
    unsafe fn zero(&mut self, tile: usize);
    /// # Safety
    /// Hardware: AMX must be enabled.
    unsafe fn release(&mut self);
}

const C: [usize; NP] = [0, 1];
const A: usize = 4;
pub(super) const B: [usize; NP] = [6, 7];
/// The fast path's tiles: C\[half\]\[panel\], A\[half\] (half = rows 0–15 or 16–31), B\[panel\].
pub(super) const BLOCK_C: [[usize; NP]; 2] = [[0, 1], [2, 3]];
pub(super) const BLOCK_A: [usize; 2] = [4, 5];
/// Rows per call of the fast path (two A tiles).
pub const BLOCK_ROWS: usize = 2 * MR;

/// One call of a table entry on any [`Tiles`], everything in bytes (`TileCall::bytes`): `rows` (≤ 16) rows of
/// `kc` bytes at `a` (stride `lda`); per panel `q < np` (≤ 2) `kc / 4` rows of 64 bytes at
/// `b + q * bstride`; accumulators `np × 16` rows of 64 bytes at `acc`, panel-major.
///
/// # Safety
/// Every pointer must address what is described above, and `t` as its implementation requires.
// The panel index drives the tile numbers and the pointer offsets together.
#[allow(clippy::needless_range_loop)]
pub unsafe fn schedule<T: Tiles>(t: &mut T, dot: Dot, c: &TileCall<u8, u8, u8>) {
    let (rows, np, kc, a, lda, b, bstride, acc) = c.parts();
    let acc = acc as *mut u8;
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
        for c in BLOCK_C.into_iter().flatten() {
            s[c] = (rows, 64);
        }
        for a in BLOCK_A {
            s[a] = (rows, kb);
        }
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

    unsafe fn zero(&mut self, tile: usize) {
        self.tiles[tile] = [[0; 64]; 16];
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
pub unsafe fn int8_emulated(c: &TileCall<u8, i8, i32>) {
    schedule(&mut Emulated::default(), Dot::Int8, &c.bytes(1))
}

/// The emulated BF16 entry (tests only).
///
/// # Safety
/// As `Bf16Tile`.
#[cfg(test)]
pub unsafe fn bf16_emulated(c: &TileCall<u16, u16, f32>) {
    schedule(&mut Emulated::default(), Dot::Bf16, &c.bytes(2))
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
    const HARDWARE: bool = true;

    unsafe fn config(&mut self, rows: usize, kb: usize) {
        self.cfg.0 = config_block(rows, kb);
        // SAFETY: AMX was enabled for this process (see `supported`); the block is 64 bytes.
        std::arch::asm!("ldtilecfg [{}]", in(reg) self.cfg.0.as_ptr(), options(nostack, readonly));
    }

    unsafe fn load(&mut self, tile: usize, ptr: *const u8, stride: usize) {
        macro_rules! load {
            ($($n:literal),*) => {
                match tile {
                    // SAFETY: the caller vouches for the configured rows at ptr, stride apart.
                    $($n => std::arch::asm!(
                        concat!("tileloadd tmm", $n, ", [{p} + {s} * 1]"),
                        p = in(reg) ptr, s = in(reg) stride, options(nostack, readonly)
                    ),)*
                    _ => unreachable!("tile numbers are the schedules' constants"),
                }
            };
        }
        load!(0, 1, 2, 3, 4, 5, 6, 7)
    }

    unsafe fn dot(&mut self, dot: Dot, c: usize, a: usize, b: usize) {
        macro_rules! dot {
            ($(($c:literal, $a:literal, $b:literal)),*) => {
                match (dot, c, a, b) {
                    $(
                        (Dot::Int8, $c, $a, $b) => std::arch::asm!(
                            concat!("tdpbusd tmm", $c, ", tmm", $a, ", tmm", $b),
                            options(nostack, nomem)
                        ),
                        (Dot::Bf16, $c, $a, $b) => std::arch::asm!(
                            concat!("tdpbf16ps tmm", $c, ", tmm", $a, ", tmm", $b),
                            options(nostack, nomem)
                        ),
                    )*
                    _ => unreachable!("the schedules pair C0/C2 with B6 and C1/C3 with B7"),
                }
            };
        }
        dot!((0, 4, 6), (1, 4, 7), (2, 5, 6), (3, 5, 7))
    }

    unsafe fn store(&mut self, tile: usize, ptr: *mut u8, stride: usize) {
        macro_rules! store {
            ($($n:literal),*) => {
                match tile {
                    // SAFETY: the caller vouches for the configured rows at ptr, writable.
                    $($n => std::arch::asm!(
                        concat!("tilestored [{p} + {s} * 1], tmm", $n),
                        p = in(reg) ptr, s = in(reg) stride, options(nostack)
                    ),)*
                    _ => unreachable!("only C tiles are stored"),
                }
            };
        }
        store!(0, 1, 2, 3)
    }

    unsafe fn step_2x2(&mut self, dot: Dot, a: [*const u8; 2], lda: usize, b: [*const u8; 2]) {
        macro_rules! step {
            ($op:literal) => {
                std::arch::asm!(
                    "tileloadd tmm4, [{a0} + {lda} * 1]",
                    "tileloadd tmm5, [{a1} + {lda} * 1]",
                    "tileloadd tmm6, [{b0} + {s} * 1]",
                    concat!($op, " tmm0, tmm4, tmm6"),
                    concat!($op, " tmm2, tmm5, tmm6"),
                    "tileloadd tmm7, [{b1} + {s} * 1]",
                    concat!($op, " tmm1, tmm4, tmm7"),
                    concat!($op, " tmm3, tmm5, tmm7"),
                    a0 = in(reg) a[0],
                    a1 = in(reg) a[1],
                    b0 = in(reg) b[0],
                    b1 = in(reg) b[1],
                    lda = in(reg) lda,
                    s = in(reg) 64usize,
                    options(nostack, readonly)
                )
            };
        }
        // SAFETY: the caller vouches for 16 rows at each pointer and the configuration.
        match dot {
            Dot::Int8 => step!("tdpbusd"),
            Dot::Bf16 => step!("tdpbf16ps"),
        }
    }

    unsafe fn zero(&mut self, tile: usize) {
        macro_rules! zero {
            ($($n:literal),*) => {
                match tile {
                    $($n => std::arch::asm!(concat!("tilezero tmm", $n), options(nostack, nomem)),)*
                    _ => unreachable!("only C tiles are zeroed"),
                }
            };
        }
        zero!(0, 1, 2, 3)
    }

    unsafe fn release(&mut self) {
        std::arch::asm!("tilerelease", options(nostack, nomem));
    }
}

/// The INT8 table entry on real AMX hardware.
///
/// # Safety
/// As `Int8Tile`, and [`supported_int8`] must have returned true.
pub unsafe fn int8(c: &TileCall<u8, i8, i32>) {
    schedule(&mut Hardware::default(), Dot::Int8, &c.bytes(1))
}

/// The BF16 table entry on real AMX hardware.
///
/// # Safety
/// As `Bf16Tile`, and [`supported_bf16`] must have returned true.
pub unsafe fn bf16(c: &TileCall<u16, u16, f32>) {
    schedule(&mut Hardware::default(), Dot::Bf16, &c.bytes(2))
}

pub use crate::kernels::packed::avx512::prefetch_out;

pub fn supported_int8() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| supported(25))
}

pub fn supported_bf16() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| supported(22))
}

/// AMX-TILE and the given AMX feature in CPUID (leaf 7, EDX bit 24 and `bit`: 25 INT8, 22
/// BF16), the OS saving tile state (XCR0 bits 17 and 18), and the kernel's permission for this
/// process to use the tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, Linux
/// ≥ 5.16; asked once). Asked once per feature by the callers: CPUID leaves the guest in a
/// virtual machine, which costs microseconds.
fn supported(bit: u32) -> bool {
    if !super::has_avx512() || !super::isa::allowed(super::isa::IsaCap::Native) {
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
