//! AMX-INT8 micro-kernel (`tdpbusd`): 16 rows × two adjacent 16-column panels per call, tile
//! registers tmm0/tmm1 accumulate the two 16 × 16 i32 blocks, tmm4 holds 16 rows × 64 bytes of
//! activations, tmm6/tmm7 64 depth steps × 16 columns of weights.
//!
//! **Written without an AMX machine to run it on.** The packed weight panels are already in
//! the layout `tdpbusd` wants for its B operand (each 64-byte group holds 4 consecutive k of 16
//! columns, so 16 groups are one B tile at stride 64), and the activation rows are its A
//! operand at stride `kp`. The schedule — which tile is configured how, loaded from where,
//! multiplied with which, stored where — is written once ([`schedule`]) against the [`Tiles`]
//! trait, with two implementations: [`Emulated`], a software model of the tile registers and of
//! `tdpbusd` that the unit tests run on any CPU against the portable kernel, and [`Hardware`],
//! the instruction sequence in inline `asm!` (stable Rust has no AMX intrinsics). On a host
//! with AMX the kernel is used only after the start-up self-check reproduces the portable
//! kernel exactly.

use super::NR;

/// Rows per call (one A tile).
pub const MR: usize = 16;
/// Adjacent panels per call (one C and one B tile each).
pub const NP: usize = 2;
/// Depth bytes per tile step (a full A-tile row).
const KB: usize = 64;

/// The tile operations the schedule needs. Tile numbers: C = 0, 1; A = 4; B = 6, 7.
pub trait Tiles {
    /// Configure palette 1: A tile `rows × kb` bytes, B tiles `kb / 4` rows × 64 bytes, C
    /// tiles `rows × 64` bytes.
    ///
    /// # Safety
    /// Hardware: AMX must be enabled for this thread.
    unsafe fn config(&mut self, rows: usize, kb: usize);
    /// # Safety
    /// `ptr` must address the configured rows at `stride` bytes.
    unsafe fn load(&mut self, tile: usize, ptr: *const u8, stride: usize);
    /// `C[tile c] += A[tile a] · B[tile b]` (u8 × s8 → i32, four products per lane).
    ///
    /// # Safety
    /// The tiles must be configured.
    unsafe fn dpbusd(&mut self, c: usize, a: usize, b: usize);
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

/// One call of the table entry (see `Int8Tile` for the pointers), on any [`Tiles`].
///
/// # Safety
/// As `Int8Tile`, and `t` as its implementation requires.
// The panel index drives the tile numbers and the pointer offsets together.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
pub unsafe fn schedule<T: Tiles>(
    t: &mut T,
    rows: usize,
    np: usize,
    kc: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    bstride: usize,
    acc: *mut [i32; NR],
) {
    let np = np.min(NP);
    let full = kc / KB * KB;
    let mut k0 = 0;
    let step = |t: &mut T, kb: usize, k0: usize| {
        // SAFETY: rows of kb bytes at a + k0 (stride lda), kb / 4 groups of 64 bytes at each
        // panel's b + k0 * 16, and the accumulators, as the caller vouches.
        t.config(rows, kb);
        for q in 0..np {
            t.load(C[q], acc.add(q * MR) as *const u8, 64);
        }
        t.load(A, a.add(k0), lda);
        for q in 0..np {
            t.load(B[q], b.add(q * bstride + k0 * 16) as *const u8, 64);
            t.dpbusd(C[q], A, B[q]);
        }
        for q in 0..np {
            t.store(C[q], acc.add(q * MR) as *mut u8, 64);
        }
    };
    // Full 64-byte steps share one configuration; the accumulators stay in the C tiles.
    if full > 0 {
        t.config(rows, KB);
        for q in 0..np {
            t.load(C[q], acc.add(q * MR) as *const u8, 64);
        }
        while k0 < full {
            t.load(A, a.add(k0), lda);
            for q in 0..np {
                t.load(B[q], b.add(q * bstride + k0 * 16) as *const u8, 64);
                t.dpbusd(C[q], A, B[q]);
            }
            k0 += KB;
        }
        for q in 0..np {
            t.store(C[q], acc.add(q * MR) as *mut u8, 64);
        }
    }
    // The tail (a multiple of 4 bytes): one step with narrower A and shorter B tiles.
    if kc > full {
        step(t, kc - full, full);
    }
    t.release();
}

/// A software model of the eight tile registers and `tdpbusd`, for the tests.
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
    /// The shapes palette 1 gives each tile for `rows × kb` (as [`Hardware::config`] writes
    /// them into the configuration block).
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

    unsafe fn dpbusd(&mut self, c: usize, a: usize, b: usize) {
        let (m, n4) = self.shape[c];
        let (am, k4) = self.shape[a];
        let (bk, bn4) = self.shape[b];
        // The instruction's shape rules: C is M × N dwords, A is M × K dwords, B K × N.
        assert!(am == m && bk * 4 == k4 && bn4 == n4, "tdpbusd shapes");
        for i in 0..m {
            for j in 0..n4 / 4 {
                let mut sum =
                    i32::from_le_bytes(self.tiles[c][i][4 * j..4 * j + 4].try_into().unwrap());
                for k in 0..k4 / 4 {
                    for q in 0..4 {
                        let x = self.tiles[a][i][4 * k + q] as i32;
                        let w = self.tiles[b][k][4 * j + q] as i8 as i32;
                        sum = sum.wrapping_add(x * w);
                    }
                }
                self.tiles[c][i][4 * j..4 * j + 4].copy_from_slice(&sum.to_le_bytes());
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

/// The emulated entry (tests only): the same schedule over [`Emulated`].
#[cfg(test)]
///
/// # Safety
/// As `Int8Tile`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile_emulated(
    rows: usize,
    np: usize,
    kc: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    bstride: usize,
    acc: *mut [i32; NR],
) {
    schedule(
        &mut Emulated::default(),
        rows,
        np,
        kc,
        a,
        lda,
        b,
        bstride,
        acc,
    )
}

/// The instruction sequence.
pub struct Hardware {
    /// The configuration block of `ldtilecfg` (64 bytes, aligned).
    cfg: Config,
}

#[repr(C, align(64))]
struct Config([u8; 64]);

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

impl Default for Hardware {
    fn default() -> Self {
        Hardware {
            cfg: Config([0; 64]),
        }
    }
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

    unsafe fn dpbusd(&mut self, c: usize, a: usize, b: usize) {
        debug_assert_eq!(a, A);
        match (c, b) {
            (0, 6) => std::arch::asm!("tdpbusd tmm0, tmm4, tmm6", options(nostack, nomem)),
            (1, 7) => std::arch::asm!("tdpbusd tmm1, tmm4, tmm7", options(nostack, nomem)),
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

/// The table entry on real AMX hardware.
///
/// # Safety
/// As `Int8Tile`, and [`supported`] must have returned true.
#[allow(clippy::too_many_arguments)]
pub unsafe fn tile(
    rows: usize,
    np: usize,
    kc: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    bstride: usize,
    acc: *mut [i32; NR],
) {
    schedule(
        &mut Hardware::default(),
        rows,
        np,
        kc,
        a,
        lda,
        b,
        bstride,
        acc,
    )
}

/// AMX-TILE and AMX-INT8 in CPUID (leaf 7, EDX bits 24 and 25), the OS saving tile state
/// (XCR0 bits 17 and 18), and the kernel's permission for this process to use the tile data
/// (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, Linux ≥ 5.16). Asked once.
pub fn supported() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        if !crate::model::kernels::has_avx512() {
            return false;
        }
        // CPUID leaf 7 exists on every CPU with AVX-512 (checked above).
        let leaf7 = std::arch::x86_64::__cpuid_count(7, 0);
        if leaf7.edx & (1 << 24) == 0 || leaf7.edx & (1 << 25) == 0 {
            return false;
        }
        // SAFETY: XGETBV is available where the OS enabled XSAVE, which AVX-512 requires.
        let xcr0 = unsafe { xgetbv0() };
        if xcr0 & (0b11 << 17) != 0b11 << 17 {
            return false;
        }
        request_tile_permission()
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
