//! One layer's oneDNN matmul (primitive, reordered weights) and the block driver that runs it
//! over samp's thread pool, with samp's epilogue after each block.

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_void, CStr};

use rayon::prelude::*;

use super::ffi::*;
use super::Kind;
use crate::kernels::aligned::{Aligned, Plain};
use crate::kernels::packed::{finish_block, Epilogue, NR};
use crate::kernels::Isa;

/// One layer's weights in oneDNN's layout and the matmul over them, for any number of rows:
/// for the float kinds, one primitive per group of output columns ([`column_parts`]), so that
/// a product of few rows still spreads over the threads by columns, each thread reading only
/// its columns' weights (split by rows, every thread read all of them, and oneDNN's JIT GEMM
/// packed them all on every call: 1.5–1.7× slower than samp's kernel for one short text).
pub struct Gemm {
    kind: Kind,
    /// Depth as oneDNN sees it (samp's padded depth for bf16 and INT8).
    k: usize,
    n: usize,
    parts: Vec<Part>,
    name: String,
    /// Most rows per block ([`block_cap`]).
    max_rows: usize,
}

/// The primitive of columns `c0..c0 + n` and its reordered weights.
struct Part {
    c0: usize,
    n: usize,
    pd: Handle,
    primitive: Handle,
    weights: Handle,
    /// The scratchpad's descriptor (owned by `pd`) and size; samp supplies one per thread.
    scratch_md: Handle,
    scratch_bytes: usize,
}

/// Where one call of [`Gemm::run_parts`] lands: rows `r0..r0 + rows`, columns `c0..c0 + cols`.
#[derive(Clone, Copy, Debug)]
pub(in crate::kernels) struct Block {
    pub r0: usize,
    pub rows: usize,
    pub c0: usize,
    pub cols: usize,
}

// SAFETY: a primitive may run on several threads at once when each call has its own memory
// objects, stream and scratchpad, which `execute` gives it; the weights are only read.
unsafe impl Send for Gemm {}
unsafe impl Sync for Gemm {}

impl std::fmt::Debug for Gemm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "oneDNN {:?} [{}, {}] {} ({} parts)",
            self.kind,
            self.n,
            self.k,
            self.name,
            self.parts.len()
        )
    }
}

/// The column groups of a layer's primitives: INT8 keeps whole rows in one (its dynamic
/// epilogue needs every row's maximum); the float kinds split `n` into one group per thread
/// (multiples of 16 columns), where each keeps at least 128.
pub(super) fn column_parts(kind: Kind, n: usize, threads: usize) -> Vec<(usize, usize)> {
    const MIN_COLS: usize = 128;
    let parts = match kind {
        Kind::Int8 => 1,
        Kind::F32 | Kind::Bf16 => threads.min(n / MIN_COLS).max(1),
    };
    let edge = |j: usize| (j * n / parts).next_multiple_of(NR).min(n);
    (0..parts).map(|j| (edge(j), edge(j + 1))).collect()
}

/// A plain row-major `rows × cols` descriptor (`rows` may be [`RUNTIME_DIM`]).
fn plain_md(api: &Api, rows: i64, cols: usize, dt: i32) -> Result<Handle, String> {
    let mut md = std::ptr::null_mut();
    let dims = [rows, cols as i64];
    // SAFETY: two dims; writes one handle.
    check(
        unsafe { (api.md_with_tag)(&mut md, 2, dims.as_ptr(), dt, TAG_AB) },
        "memory_desc_create",
    )?;
    Ok(md)
}

/// The matmul's primitive descriptor: rows left to run time, plain row-major source and
/// destination, weights in the layout the library picks, scratchpad supplied by samp.
fn matmul_pd(api: &Api, kind: Kind, k: usize, n: usize) -> Result<Handle, String> {
    let (src_dt, wei_dt, dst_dt, _) = kind.types();
    let mut own = Owned::new(api);
    let src = own.md(plain_md(api, RUNTIME_DIM, k, src_dt))?;
    let dst = own.md(plain_md(api, RUNTIME_DIM, n, dst_dt))?;
    let mut any = std::ptr::null_mut();
    // SAFETY: two dims; writes one handle.
    check(
        unsafe { (api.md_with_tag)(&mut any, 2, [k as i64, n as i64].as_ptr(), wei_dt, TAG_ANY) },
        "memory_desc_create",
    )?;
    own.mds.push(any);
    let mut attr = std::ptr::null_mut();
    // SAFETY: writes one handle, destroyed below.
    check(unsafe { (api.attr_create)(&mut attr) }, "attr_create")?;
    let mut pd = std::ptr::null_mut();
    // SAFETY: valid descriptors and attributes; no bias. The library copies what it keeps.
    let made = unsafe {
        check(
            (api.attr_scratchpad_mode)(attr, SCRATCHPAD_USER),
            "scratchpad mode",
        )
        .and_then(|()| {
            let no_bias = std::ptr::null_mut();
            check(
                (api.matmul_pd)(&mut pd, api.engine, src, any, no_bias, dst, attr),
                "matmul_primitive_desc_create",
            )
        })
    };
    // SAFETY: created above, used by nothing else.
    unsafe { (api.attr_destroy)(attr) };
    made.map(|()| pd)
}

/// Reorders weights in PyTorch layout at `w` (element (k, n) at `n * k + k`: strides (1, k),
/// of type `dt`) into `to`, memory of descriptor `wmd` — or, `back`, from that memory into `w`.
fn reorder_weights(
    api: &Api,
    w: *mut u8,
    (k, n, dt): (usize, usize, i32),
    to: Handle,
    wmd: Handle,
    back: bool,
) -> Result<(), String> {
    let mut own = Owned::new(api);
    let mut user = std::ptr::null_mut();
    let (dims, strides) = ([k as i64, n as i64], [1, k as i64]);
    // SAFETY: two dims and two strides; writes one handle.
    check(
        unsafe { (api.md_with_strides)(&mut user, 2, dims.as_ptr(), dt, strides.as_ptr()) },
        "memory_desc_create",
    )?;
    own.mds.push(user);
    let plain = own.memory(user, w as *mut c_void)?;
    let (from, to, src_md, dst_md) = if back {
        (to, plain, wmd, user)
    } else {
        (plain, to, user, wmd)
    };
    let mut rpd = std::ptr::null_mut();
    let (engine, default_attr) = (api.engine, std::ptr::null_mut());
    // SAFETY: valid descriptors, one engine.
    check(
        unsafe { (api.reorder_pd)(&mut rpd, src_md, engine, dst_md, engine, default_attr) },
        "reorder_primitive_desc_create",
    )?;
    own.pds.push(rpd);
    let mut reorder = std::ptr::null_mut();
    // SAFETY: writes one handle.
    check(
        unsafe { (api.primitive_create)(&mut reorder, rpd) },
        "primitive_create",
    )?;
    own.primitives.push(reorder);
    let args = [
        ExecArg {
            arg: ARG_SRC,
            memory: from,
        },
        ExecArg {
            arg: ARG_DST,
            memory: to,
        },
    ];
    // SAFETY: the reorder reads `from` and writes `to`, both alive here (the caller vouches
    // for `w`: `k × n` elements, writable when `back`).
    with_stream(|stream| unsafe {
        check((api.execute)(reorder, stream, 2, args.as_ptr()), "reorder")?;
        check((api.stream_wait)(stream), "stream_wait")
    })
}

/// Destroys the handles it holds when dropped, so that every early return cleans up.
struct Owned<'a> {
    api: &'a Api,
    mds: Vec<Handle>,
    memories: Vec<Handle>,
    pds: Vec<Handle>,
    primitives: Vec<Handle>,
}

impl<'a> Owned<'a> {
    fn new(api: &'a Api) -> Self {
        Owned {
            api,
            mds: vec![],
            memories: vec![],
            pds: vec![],
            primitives: vec![],
        }
    }
    fn md(&mut self, md: Result<Handle, String>) -> Result<Handle, String> {
        let md = md?;
        self.mds.push(md);
        Ok(md)
    }
    fn memory(&mut self, md: Handle, ptr: *mut c_void) -> Result<Handle, String> {
        let mut m = std::ptr::null_mut();
        // SAFETY: `ptr` is ALLOCATE or a buffer the caller keeps alive for the memory's use.
        check(
            unsafe { (self.api.memory_create)(&mut m, md, self.api.engine, ptr) },
            "memory_create",
        )?;
        self.memories.push(m);
        Ok(m)
    }
}

impl Drop for Owned<'_> {
    fn drop(&mut self) {
        let a = self.api;
        // SAFETY: each handle was created by this library and is destroyed once.
        unsafe {
            self.primitives
                .iter()
                .for_each(|&p| _ = (a.primitive_destroy)(p));
            self.pds.iter().for_each(|&p| _ = (a.pd_destroy)(p));
            self.memories
                .iter()
                .for_each(|&m| _ = (a.memory_destroy)(m));
            self.mds.iter().for_each(|&m| _ = (a.md_destroy)(m));
        }
    }
}

impl Part {
    /// The primitive of `n` columns over their weights at `w` (PyTorch layout, `n` rows of `k`
    /// elements of the kind's weight type), and its implementation's name.
    fn new(
        api: &Api,
        kind: Kind,
        w: &[u8],
        (c0, n, k): (usize, usize, usize),
    ) -> Result<(Part, String), String> {
        let mut part = Part {
            c0,
            n,
            pd: matmul_pd(api, kind, k, n)?,
            primitive: std::ptr::null_mut(),
            weights: std::ptr::null_mut(),
            scratch_md: std::ptr::null_mut(),
            scratch_bytes: 0,
        };
        // From here `part`'s Drop owns what it holds.
        let pd = part.pd;
        let mut name = String::new();
        let mut info: *const c_char = std::ptr::null();
        // SAFETY: the implementation name query writes a pointer to a string owned by pd.
        if unsafe { (api.pd_query)(pd, QUERY_IMPL_INFO, 0, (&raw mut info).cast()) } == SUCCESS
            && !info.is_null()
        {
            // SAFETY: NUL-terminated, alive as long as pd.
            name = unsafe { CStr::from_ptr(info) }
                .to_string_lossy()
                .into_owned();
        }
        // SAFETY: queries of a valid primitive descriptor; the descriptors stay owned by pd.
        let wmd = unsafe { (api.pd_query_md)(pd, QUERY_WEIGHTS_MD, 0) };
        part.scratch_md = unsafe { (api.pd_query_md)(pd, QUERY_SCRATCHPAD_MD, 0) };
        if !part.scratch_md.is_null() {
            // SAFETY: a valid descriptor.
            part.scratch_bytes = unsafe { (api.md_size)(part.scratch_md) };
        }
        // SAFETY: writes one handle.
        check(
            unsafe { (api.primitive_create)(&mut part.primitive, pd) },
            "primitive_create",
        )?;
        // SAFETY: writes one handle; the library allocates the buffer.
        check(
            unsafe { (api.memory_create)(&mut part.weights, wmd, api.engine, ALLOCATE) },
            "memory_create",
        )?;
        let wt = (k, n, kind.types().1);
        reorder_weights(api, w.as_ptr() as *mut u8, wt, part.weights, wmd, false)?;
        Ok((part, name))
    }
}

impl Drop for Part {
    fn drop(&mut self) {
        let Some(api) = api() else { return };
        // SAFETY: created in `new`, destroyed once; the scratchpad descriptor is owned by pd.
        unsafe {
            if !self.weights.is_null() {
                (api.memory_destroy)(self.weights);
            }
            if !self.primitive.is_null() {
                (api.primitive_destroy)(self.primitive);
            }
            (api.pd_destroy)(self.pd);
        }
    }
}

impl Gemm {
    /// A matmul over weights given in PyTorch layout: `n` rows of `k` elements of the kind's
    /// weight type (f32, bf16 bit patterns, or i8), `elem` bytes each.
    fn new(kind: Kind, w: &[u8], n: usize, k: usize) -> Result<Gemm, String> {
        let api = api().ok_or("oneDNN is not loaded")?;
        let elem = kind.types().3;
        assert_eq!(w.len(), n * k * elem, "oneDNN weights size");
        let mut parts = Vec::new();
        let mut name = String::new();
        for (c0, c1) in column_parts(kind, n, rayon::current_num_threads()) {
            let (part, impl_name) = Part::new(
                api,
                kind,
                &w[c0 * k * elem..c1 * k * elem],
                (c0, c1 - c0, k),
            )?;
            parts.push(part);
            name = impl_name;
        }
        Ok(Gemm {
            kind,
            k,
            n,
            parts,
            max_rows: block_cap(&name, Isa::detect()),
            name,
        })
    }

    /// The weights of an f32 matmul back in PyTorch layout `[n, k]`, from oneDNN's layout
    /// (a reorder per part: exact).
    pub fn f32_rows(&self) -> Result<Vec<f32>, String> {
        assert_eq!(self.kind, Kind::F32, "f32_rows of a {:?} matmul", self.kind);
        let api = api().ok_or("oneDNN is not loaded")?;
        let mut rows = vec![0.0f32; self.n * self.k];
        for p in &self.parts {
            // SAFETY: a query of a valid primitive descriptor, owned by pd.
            let wmd = unsafe { (api.pd_query_md)(p.pd, QUERY_WEIGHTS_MD, 0) };
            let wt = (self.k, p.n, DT_F32);
            let out = rows[p.c0 * self.k..].as_mut_ptr() as *mut u8;
            reorder_weights(api, out, wt, p.weights, wmd, true)?;
        }
        Ok(rows)
    }

    /// f32 weights in PyTorch layout `[n, k]`.
    pub fn f32(w: &[f32], n: usize, k: usize) -> Result<Gemm, String> {
        Self::new(Kind::F32, bytes_of(w), n, k)
    }

    /// bf16 weights (bit patterns) in PyTorch layout `[n, kp]`, `kp` samp's padded depth.
    pub fn bf16(w: &[u16], n: usize, kp: usize) -> Result<Gemm, String> {
        Self::new(Kind::Bf16, bytes_of(w), n, kp)
    }

    /// INT8 weights in PyTorch layout `[n, kp]`, `kp` samp's padded depth (zeros past `k`).
    pub fn int8(w: &[i8], n: usize, kp: usize) -> Result<Gemm, String> {
        Self::new(Kind::Int8, bytes_of(w), n, kp)
    }

    /// The implementation oneDNN picked (e.g. `brg:avx512_core_amx`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `rows` rows of the source (`k` elements each, row-major at `src`) times the weights,
    /// into `dst` (`rows × n` of the destination type), on the calling thread.
    ///
    /// # Safety
    /// `src` and `dst` must address that many readable and writable elements.
    unsafe fn execute(&self, part: &Part, src: *const u8, rows: usize, dst: *mut u8) {
        let api = api().expect("a Gemm exists only with the library loaded");
        let (src_dt, _, dst_dt, _) = self.kind.types();
        let run = || -> Result<(), String> {
            let mut own = Owned::new(api);
            let smd = own.md(plain_md(api, rows as i64, self.k, src_dt))?;
            let dmd = own.md(plain_md(api, rows as i64, part.n, dst_dt))?;
            let s = own.memory(smd, src as *mut c_void)?;
            let d = own.memory(dmd, dst.cast())?;
            SCRATCH.with_borrow_mut(|scratch| {
                let mut args = vec![
                    ExecArg {
                        arg: ARG_SRC,
                        memory: s,
                    },
                    ExecArg {
                        arg: ARG_WEIGHTS,
                        memory: part.weights,
                    },
                    ExecArg {
                        arg: ARG_DST,
                        memory: d,
                    },
                ];
                if part.scratch_bytes > 0 {
                    scratch.set_len(part.scratch_bytes);
                    let m = own.memory(part.scratch_md, scratch.as_mut_ptr().cast())?;
                    args.push(ExecArg {
                        arg: ARG_SCRATCHPAD,
                        memory: m,
                    });
                }
                with_stream(|stream| {
                    // SAFETY: every memory object addresses a live buffer of its descriptor's
                    // size (the caller vouches for src and dst).
                    check(
                        unsafe {
                            (api.execute)(part.primitive, stream, args.len() as i32, args.as_ptr())
                        },
                        "matmul",
                    )?;
                    // SAFETY: a valid stream.
                    check(unsafe { (api.stream_wait)(stream) }, "stream_wait")
                })
            })
        };
        // The primitive was created and self-checked over these shapes, samp supplies every
        // buffer (the scratchpad too), so the library allocates nothing here: a failure is a
        // broken library, not an input samp could refuse.
        if let Err(e) = run() {
            panic!("{e} ({self:?}, {rows} rows)");
        }
    }

    /// `y = epilogue(x · W)` for `m` rows of `x` (`row_bytes` each, from `src`) of a matmul
    /// of one part (whole rows: INT8), cut into row blocks over the rayon pool: each block's
    /// product lands in a per-thread buffer of `T` (4 bytes: f32 or i32), and
    /// `finish(first_row, rows, product)` writes it out.
    pub(in crate::kernels) fn run<T: Plain>(
        &self,
        src: &[u8],
        m: usize,
        finish: impl Fn(usize, usize, &[T]) + Sync,
    ) {
        assert_eq!(
            self.parts.len(),
            1,
            "oneDNN matmul: whole rows need one part"
        );
        self.run_parts(src, m, |b, product| finish(b.r0, b.rows, product));
    }

    /// As [`Gemm::run`] for any number of parts: blocks of rows times parts over the rayon
    /// pool, `finish(block, product)` with the block's `rows × cols` product.
    pub(in crate::kernels) fn run_parts<T: Plain>(
        &self,
        src: &[u8],
        m: usize,
        finish: impl Fn(Block, &[T]) + Sync,
    ) {
        assert_eq!(
            std::mem::size_of::<T>(),
            4,
            "oneDNN destination is f32 or s32"
        );
        if m == 0 {
            return;
        }
        let row_bytes = self.k * self.kind.types().3;
        assert!(
            src.len() >= m * row_bytes,
            "oneDNN matmul: source too small"
        );
        let parts = self.parts.len();
        let threads = rayon::current_num_threads().div_ceil(parts);
        let block = block_rows(m, threads, self.max_rows);
        let body = |t: usize| {
            let (r0, part) = ((t / parts) * block, &self.parts[t % parts]);
            let rows = block.min(m - r0);
            PRODUCT.with_borrow_mut(|buf| {
                buf.set_len(rows * part.n * 4);
                // SAFETY: the rows exist in src (asserted above); buf holds rows × cols values.
                unsafe {
                    self.execute(part, src[r0 * row_bytes..].as_ptr(), rows, buf.as_mut_ptr())
                };
                // SAFETY: the buffer is 64-byte aligned and holds rows × cols 4-byte values,
                // written by the matmul; T accepts any bit pattern.
                let product =
                    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<T>(), rows * part.n) };
                let b = Block {
                    r0,
                    rows,
                    c0: part.c0,
                    cols: part.n,
                };
                finish(b, product);
            })
        };
        let tasks = m.div_ceil(block) * parts;
        if tasks == 1 {
            body(0);
        } else {
            (0..tasks).into_par_iter().for_each(body);
        }
    }
}

impl Gemm {
    /// `y[m, n] = epilogue(x · W)` for an f32 product (the f32 and bf16 kinds): samp's float
    /// epilogue (bias, residual, activation) on each block.
    pub(in crate::kernels) fn run_float(
        &self,
        src: &[u8],
        m: usize,
        y: &mut [f32],
        ep: Epilogue<'_>,
    ) {
        let n = self.n;
        assert!(y.len() >= m * n, "oneDNN matmul: output too small");
        if let Some(b) = ep.bias {
            assert_eq!(b.len(), n, "oneDNN matmul: bias length");
        }
        let isa = Isa::detect();
        let y = y.as_mut_ptr() as usize;
        self.run_parts::<f32>(src, m, |b, product| {
            // SAFETY: the block's rows and columns of y exist (asserted above) and are its own.
            let at = unsafe { (y as *mut f32).add(b.r0 * n + b.c0) };
            unsafe { finish_block(product, (b.rows, b.cols), (at, n), ep, b.c0, isa) }
        });
    }

    /// Depth and width as oneDNN sees them.
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }
}

/// Most rows per block for oneDNN's implementation `name` on a host whose kernels run at `isa`.
/// 128 where oneDNN's brgemm kernels serve (AVX-512, AMX: fastest there, one thread each, at the
/// MiniLM shapes on the Sapphire Rapids-class host). 1,024 where its plain `gemm:jit` serves an
/// AVX2-level host: at 128-row blocks the Zen 3 ran BERT-base's FFN up projection (768 → 3,072)
/// 1.5× slower and BERT-base's f32 passes 1.15× slower (BENCHMARKS.md, "oneDNN's blocks on the
/// AVX2 tier") — a cost per call, most likely that GEMM packing its operands again each time.
/// Only measured there, so AVX-512 hosts keep 128 whatever the name.
pub(super) fn block_cap(name: &str, isa: Isa) -> usize {
    if name.starts_with("gemm:") && isa != Isa::Avx512 {
        1024
    } else {
        128
    }
}

/// Rows per block: up to `max` ([`block_cap`]), split evenly into a multiple of the threads'
/// count of blocks (so that the pool ends together) while each keeps at least a 16-row tile.
pub(super) fn block_rows(m: usize, threads: usize, max: usize) -> usize {
    const TILE: usize = 16;
    let blocks = m
        .div_ceil(max)
        .next_multiple_of(threads.max(1))
        .min(m.div_ceil(TILE))
        .max(1);
    m.div_ceil(blocks).max(1)
}

pub(in crate::kernels) fn bytes_of<T: Plain>(v: &[T]) -> &[u8] {
    // SAFETY: any initialised slice of plain numbers is readable as bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

thread_local! {
    /// This thread's stream (oneDNN streams are not shared between threads).
    static STREAM: Cell<Handle> = const { Cell::new(std::ptr::null_mut()) };
    /// This thread's scratchpad and product block, reused across calls.
    static SCRATCH: RefCell<Aligned<u8>> = RefCell::new(Aligned::default());
    static PRODUCT: RefCell<Aligned<u8>> = RefCell::new(Aligned::default());
}

/// Runs `f` with this thread's stream, made on first use; the thread's OpenMP team is set to
/// one thread then, since samp spreads the blocks itself.
fn with_stream<R>(f: impl FnOnce(Handle) -> Result<R, String>) -> Result<R, String> {
    let api = api().ok_or("oneDNN is not loaded")?;
    let mut stream = STREAM.get();
    if stream.is_null() {
        if let Some(set) = api.omp_set_num_threads {
            // SAFETY: sets this thread's OpenMP ICV.
            unsafe { set(1) };
        }
        // SAFETY: writes one handle; the stream lives as long as the thread.
        check(
            unsafe { (api.stream_create)(&mut stream, api.engine, STREAM_IN_ORDER) },
            "stream_create",
        )?;
        STREAM.set(stream);
    }
    f(stream)
}
