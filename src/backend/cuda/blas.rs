//! GEMMs through cuBLASLt, in the "TN" form that works on Hopper without reordering: row-major
//! activations `A [t, k]` times PyTorch-layout weights `W [n, k]` give row-major `D [t, n]`. In
//! cuBLASLt's column-major terms that is `Dᶜ [n, t] = Wᶜᵀ · Aᶜ`, with `Wᶜ` = W read as `[k, n]`.
//!
//! Two kinds: FP16 × FP16 → FP32 (FP32 accumulation) and INT8 × INT8 → INT32. Descriptors and the
//! heuristic's algorithm are made once per shape and kept.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublaslt::{result as lt, sys};
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, CudaStream};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// FP16 inputs, FP32 accumulation and output.
    Fp16,
    /// INT8 inputs, INT32 accumulation and output.
    Int8,
}

impl Kind {
    fn types(
        self,
    ) -> (
        sys::cudaDataType,
        sys::cudaDataType,
        sys::cublasComputeType_t,
    ) {
        use sys::cudaDataType::*;
        match self {
            Kind::Fp16 => (
                CUDA_R_16F,
                CUDA_R_32F,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            ),
            Kind::Int8 => (
                CUDA_R_8I,
                CUDA_R_32I,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32I,
            ),
        }
    }
}

/// One shape's descriptors and algorithm.
struct Prepared {
    desc: sys::cublasLtMatmulDesc_t,
    w: sys::cublasLtMatrixLayout_t,
    a: sys::cublasLtMatrixLayout_t,
    d: sys::cublasLtMatrixLayout_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // SAFETY: each was created once by `prepare` and is destroyed once, here.
        unsafe {
            let _ = lt::destroy_matrix_layout(self.w);
            let _ = lt::destroy_matrix_layout(self.a);
            let _ = lt::destroy_matrix_layout(self.d);
            let _ = lt::destroy_matmul_desc(self.desc);
        }
    }
}

const WORKSPACE: usize = 32 << 20;
/// Distinct shapes kept (token counts vary per batch); the cache is cleared when full.
const MAX_SHAPES: usize = 512;

pub struct Blas {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    shapes: HashMap<(Kind, usize, usize, usize), Prepared>,
}

fn err(what: &str) -> impl Fn(lt::CublasError) -> String + '_ {
    move |e| format!("cuBLASLt {what}: {e:?}")
}

impl Blas {
    pub fn new(stream: &Arc<CudaStream>) -> Result<Self, String> {
        let workspace = stream
            .alloc_zeros::<u8>(WORKSPACE)
            .map_err(|e| format!("cuBLASLt workspace: {e:?}"))?;
        let handle = lt::create_handle().map_err(err("create"))?;
        Ok(Blas {
            handle,
            workspace,
            shapes: HashMap::new(),
        })
    }

    fn prepare(&self, kind: Kind, t: usize, n: usize, k: usize) -> Result<Prepared, String> {
        let (io, acc, compute) = kind.types();
        let desc = lt::create_matmul_desc(compute, acc).map_err(err("matmul desc"))?;
        let trans: i32 = 1; // CUBLAS_OP_T
                            // SAFETY: `desc` is live; the value has the attribute's type and size.
        unsafe {
            lt::set_matmul_desc_attribute(
                desc,
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                (&trans as *const i32).cast(),
                std::mem::size_of::<i32>(),
            )
        }
        .map_err(err("transa"))?;
        let (k64, n64, t64) = (k as u64, n as u64, t as u64);
        let w = lt::create_matrix_layout(io, k64, n64, k as i64).map_err(err("W layout"))?;
        let a = lt::create_matrix_layout(io, k64, t64, k as i64).map_err(err("A layout"))?;
        let d = lt::create_matrix_layout(acc, n64, t64, n as i64).map_err(err("D layout"))?;
        let pref = lt::create_matmul_pref().map_err(err("preference"))?;
        let ws = WORKSPACE as u64;
        // SAFETY: every handle is live; the heuristic only reads them.
        let algo = unsafe {
            lt::set_matmul_pref_attribute(
                pref,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&ws as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
            .map_err(err("workspace size"))
            .and_then(|()| {
                lt::get_matmul_algo_heuristic(self.handle, desc, w, a, d, d, pref)
                    .map_err(err(&format!("no algorithm for {kind:?} t={t} n={n} k={k}")))
            })
        };
        // SAFETY: created above.
        unsafe {
            let _ = lt::destroy_matmul_pref(pref);
        }
        Ok(Prepared {
            desc,
            w,
            a,
            d,
            algo: algo?.algo,
        })
    }

    /// `d [t, n] = a [t, k] · w [n, k]ᵀ` on `stream`; pointers to device memory of the kind's
    /// types, at least that large.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &mut self,
        stream: &CudaStream,
        kind: Kind,
        (t, n, k): (usize, usize, usize),
        a: CUdeviceptr,
        w: CUdeviceptr,
        d: CUdeviceptr,
    ) -> Result<(), String> {
        let key = (kind, t, n, k);
        if !self.shapes.contains_key(&key) {
            if self.shapes.len() >= MAX_SHAPES {
                self.shapes.clear();
            }
            let p = self.prepare(kind, t, n, k)?;
            self.shapes.insert(key, p);
        }
        let p = &self.shapes[&key];
        let (one_f, zero_f) = (1.0f32, 0.0f32);
        let (one_i, zero_i) = (1i32, 0i32);
        let (alpha, beta): (*const c_void, *const c_void) = match kind {
            Kind::Fp16 => (
                (&one_f as *const f32).cast(),
                (&zero_f as *const f32).cast(),
            ),
            Kind::Int8 => (
                (&one_i as *const i32).cast(),
                (&zero_i as *const i32).cast(),
            ),
        };
        let (ws, _sync) = {
            use cudarc::driver::DevicePtrMut;
            self.workspace.device_ptr_mut(stream)
        };
        // SAFETY: descriptors are live and match the pointers' types and sizes (callers pass
        // buffers of at least t·k, n·k and t·n elements); alpha/beta outlive the call.
        unsafe {
            lt::matmul(
                self.handle,
                p.desc,
                alpha,
                beta,
                w as *const c_void,
                p.w,
                a as *const c_void,
                p.a,
                d as *const c_void,
                p.d,
                d as *mut c_void,
                p.d,
                &p.algo,
                ws as *mut c_void,
                WORKSPACE,
                stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(err("matmul"))
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        self.shapes.clear();
        // SAFETY: created in `new`, destroyed once.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}
