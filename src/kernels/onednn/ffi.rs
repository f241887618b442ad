//! The C side of oneDNN: the values and functions samp uses from its 3.x headers, bound from
//! `libdnnl.so.3` at run time, and the one CPU engine.

use std::ffi::{c_char, c_void, CStr};
use std::sync::OnceLock;

/// Every oneDNN object (engine, stream, memory descriptor, memory, attributes, primitive
/// descriptor, primitive) is an opaque pointer.
pub(super) type Handle = *mut c_void;
pub(super) type Status = i32;

// Values from oneDNN 3.x's headers (dnnl_types.h, dnnl_common_types.h).
pub(super) const SUCCESS: Status = 0;
pub(super) const DT_BF16: i32 = 2;
pub(super) const DT_F32: i32 = 3;
pub(super) const DT_S32: i32 = 4;
pub(super) const DT_S8: i32 = 5;
pub(super) const DT_U8: i32 = 6;
pub(super) const TAG_ANY: i32 = 1;
pub(super) const TAG_AB: i32 = 3;
pub(super) const ENGINE_CPU: i32 = 1;
pub(super) const STREAM_IN_ORDER: u32 = 1;
pub(super) const SCRATCHPAD_USER: i32 = 1;
pub(super) const QUERY_IMPL_INFO: i32 = 8;
pub(super) const QUERY_WEIGHTS_MD: i32 = 131;
pub(super) const QUERY_SCRATCHPAD_MD: i32 = 136;
pub(super) const ARG_SRC: i32 = 1;
pub(super) const ARG_DST: i32 = 17;
pub(super) const ARG_WEIGHTS: i32 = 33;
pub(super) const ARG_SCRATCHPAD: i32 = 80;
pub(super) const RUNTIME_DIM: i64 = i64::MIN;
pub(super) const RUNTIME_SEQ: u32 = 1;
pub(super) const RUNTIME_OMP: u32 = 2;
/// `DNNL_MEMORY_ALLOCATE`: the library allocates the buffer.
pub(super) const ALLOCATE: *mut c_void = usize::MAX as *mut c_void;

#[repr(C)]
pub(super) struct ExecArg {
    pub(super) arg: i32,
    pub(super) memory: Handle,
}

#[repr(C)]
pub(super) struct Version {
    major: i32,
    minor: i32,
    patch: i32,
    hash: *const c_char,
    cpu_runtime: u32,
    gpu_runtime: u32,
}

/// The loaded library: the C functions samp calls and one CPU engine.
pub(super) struct Api {
    pub(super) _lib: libloading::Library,
    pub(super) engine: Handle,
    pub(super) version: String,
    pub(super) omp_set_num_threads: Option<unsafe extern "C" fn(i32)>,
    pub(super) md_with_tag: unsafe extern "C" fn(*mut Handle, i32, *const i64, i32, i32) -> Status,
    pub(super) md_with_strides:
        unsafe extern "C" fn(*mut Handle, i32, *const i64, i32, *const i64) -> Status,
    pub(super) md_destroy: unsafe extern "C" fn(Handle) -> Status,
    pub(super) md_size: unsafe extern "C" fn(Handle) -> usize,
    pub(super) memory_create:
        unsafe extern "C" fn(*mut Handle, Handle, Handle, *mut c_void) -> Status,
    pub(super) memory_destroy: unsafe extern "C" fn(Handle) -> Status,
    pub(super) attr_create: unsafe extern "C" fn(*mut Handle) -> Status,
    pub(super) attr_destroy: unsafe extern "C" fn(Handle) -> Status,
    pub(super) attr_scratchpad_mode: unsafe extern "C" fn(Handle, i32) -> Status,
    pub(super) matmul_pd:
        unsafe extern "C" fn(*mut Handle, Handle, Handle, Handle, Handle, Handle, Handle) -> Status,
    pub(super) reorder_pd:
        unsafe extern "C" fn(*mut Handle, Handle, Handle, Handle, Handle, Handle) -> Status,
    pub(super) pd_query_md: unsafe extern "C" fn(Handle, i32, i32) -> Handle,
    pub(super) pd_query: unsafe extern "C" fn(Handle, i32, i32, *mut c_void) -> Status,
    pub(super) pd_destroy: unsafe extern "C" fn(Handle) -> Status,
    pub(super) primitive_create: unsafe extern "C" fn(*mut Handle, Handle) -> Status,
    pub(super) primitive_destroy: unsafe extern "C" fn(Handle) -> Status,
    pub(super) execute: unsafe extern "C" fn(Handle, Handle, i32, *const ExecArg) -> Status,
    pub(super) stream_create: unsafe extern "C" fn(*mut Handle, Handle, u32) -> Status,
    pub(super) stream_wait: unsafe extern "C" fn(Handle) -> Status,
}

// SAFETY: oneDNN's engine may be used from any thread; the function pointers are plain code.
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

pub(super) fn check(status: Status, what: &str) -> Result<(), String> {
    if status == SUCCESS {
        Ok(())
    } else {
        Err(format!("oneDNN {what} failed (status {status})"))
    }
}

/// The library, loaded on first use; `None` (logged once) where it is absent or unusable.
pub(super) fn api() -> Option<&'static Api> {
    static API: OnceLock<Option<Api>> = OnceLock::new();
    API.get_or_init(|| match load() {
        Ok(Some(api)) => {
            tracing::info!(version = %api.version, "oneDNN loaded");
            Some(api)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::info!("oneDNN not used: {e}");
            None
        }
    })
    .as_ref()
}

/// Where to look for the library, in order; empty when `SAMP_ONEDNN` switches it off.
fn candidates() -> Vec<std::path::PathBuf> {
    const NAME: &str = "libdnnl.so.3";
    match std::env::var("SAMP_ONEDNN") {
        Ok(v) if matches!(v.as_str(), "0" | "off" | "false" | "no") => return vec![],
        Ok(v) if !v.is_empty() && !matches!(v.as_str(), "1" | "on" | "true" | "yes" | "always") => {
            return vec![v.into()]
        }
        _ => {}
    }
    let mut paths = vec![std::path::PathBuf::from(NAME)];
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(4) {
            paths.push(dir.join("onednn/lib").join(NAME));
        }
    }
    paths
}

/// Holds oneDNN to `SAMP_MAX_ISA` (`dnnl_set_max_cpu_isa`, before any other call creates
/// state) and checks that its effective ISA obeys: the values are `dnnl_cpu_isa_t`'s (AVX2
/// 0x7; everything below AMX 0x1ef, AVX-512 with FP16; confirmed with
/// `dnnl_get_effective_cpu_isa` on oneDNN 3.2).
fn cap_isa(
    set: unsafe extern "C" fn(u32) -> Status,
    effective: unsafe extern "C" fn() -> u32,
) -> Result<(), String> {
    use crate::kernels::isa::{allowed, IsaCap};
    let max = if !allowed(IsaCap::Avx512) {
        0x7
    } else if !allowed(IsaCap::Native) {
        0x1ef
    } else {
        return Ok(());
    };
    // SAFETY: both take or return plain integers.
    check(unsafe { set(max) }, "set_max_cpu_isa")?;
    let got = unsafe { effective() };
    if got & !max != 0 {
        return Err(format!(
            "its effective ISA {got:#x} is above SAMP_MAX_ISA's {max:#x}"
        ));
    }
    Ok(())
}

fn load() -> Result<Option<Api>, String> {
    if !crate::kernels::isa::allowed(crate::kernels::isa::IsaCap::Avx2) {
        tracing::info!("oneDNN not used: SAMP_MAX_ISA=portable");
        return Ok(None);
    }
    let paths = candidates();
    if paths.is_empty() {
        return Ok(None);
    }
    let mut errors = Vec::new();
    for path in &paths {
        // SAFETY: loading oneDNN runs its (and OpenMP's) initialisers, which only set up
        // their own state.
        match unsafe { libloading::Library::new(path) } {
            Ok(lib) => return bind(lib).map(Some),
            Err(e) => errors.push(format!("{}: {e}", path.display())),
        }
    }
    if std::env::var_os("SAMP_ONEDNN").is_some() {
        Err(errors.join("; "))
    } else {
        // Not installed: the usual case, not worth more than a debug line.
        tracing::debug!("oneDNN not found ({})", errors.join("; "));
        Ok(None)
    }
}

fn bind(lib: libloading::Library) -> Result<Api, String> {
    macro_rules! sym {
        ($name:literal) => {
            // SAFETY: the symbol's type is the C declaration in oneDNN 3.x's dnnl.h, and the
            // version is checked below before any of them is called.
            *unsafe { lib.get(concat!($name, "\0").as_bytes()) }
                .map_err(|e| format!("{}: {e}", $name))?
        };
    }
    let version: unsafe extern "C" fn() -> *const Version = sym!("dnnl_version");
    // SAFETY: dnnl_version returns a pointer to a static struct.
    let v = unsafe { &*version() };
    if v.major != 3 {
        return Err(format!(
            "oneDNN {}.{} found, samp binds 3.x",
            v.major, v.minor
        ));
    }
    let omp_set_num_threads = match v.cpu_runtime {
        RUNTIME_SEQ => None,
        RUNTIME_OMP => Some(sym!("omp_set_num_threads")),
        r => {
            return Err(format!(
                "oneDNN's CPU runtime {r} is not OpenMP or sequential"
            ))
        }
    };
    let hash = if v.hash.is_null() {
        String::new()
    } else {
        // SAFETY: a version's hash is a NUL-terminated static string.
        unsafe { CStr::from_ptr(v.hash) }
            .to_string_lossy()
            .into_owned()
    };
    cap_isa(
        sym!("dnnl_set_max_cpu_isa"),
        sym!("dnnl_get_effective_cpu_isa"),
    )?;
    let create: unsafe extern "C" fn(*mut Handle, i32, usize) -> Status =
        sym!("dnnl_engine_create");
    let mut api = Api {
        engine: std::ptr::null_mut(),
        version: format!("{}.{}.{} ({hash})", v.major, v.minor, v.patch),
        omp_set_num_threads,
        md_with_tag: sym!("dnnl_memory_desc_create_with_tag"),
        md_with_strides: sym!("dnnl_memory_desc_create_with_strides"),
        md_destroy: sym!("dnnl_memory_desc_destroy"),
        md_size: sym!("dnnl_memory_desc_get_size"),
        memory_create: sym!("dnnl_memory_create"),
        memory_destroy: sym!("dnnl_memory_destroy"),
        attr_create: sym!("dnnl_primitive_attr_create"),
        attr_destroy: sym!("dnnl_primitive_attr_destroy"),
        attr_scratchpad_mode: sym!("dnnl_primitive_attr_set_scratchpad_mode"),
        matmul_pd: sym!("dnnl_matmul_primitive_desc_create"),
        reorder_pd: sym!("dnnl_reorder_primitive_desc_create"),
        pd_query_md: sym!("dnnl_primitive_desc_query_md"),
        pd_query: sym!("dnnl_primitive_desc_query"),
        pd_destroy: sym!("dnnl_primitive_desc_destroy"),
        primitive_create: sym!("dnnl_primitive_create"),
        primitive_destroy: sym!("dnnl_primitive_destroy"),
        execute: sym!("dnnl_primitive_execute"),
        stream_create: sym!("dnnl_stream_create"),
        stream_wait: sym!("dnnl_stream_wait"),
        _lib: lib,
    };
    // SAFETY: writes one engine handle.
    check(
        unsafe { create(&mut api.engine, ENGINE_CPU, 0) },
        "engine_create",
    )?;
    Ok(api)
}
