//! The CUDA backend: the same encoder pass and precision plans as the CPU one, on an NVIDIA GPU.
//! CUDA is loaded at run time (cudarc `dynamic-loading`), so one binary serves everywhere: on a
//! machine without a GPU or without the libraries, start-up falls back to the CPU and says why.
//!
//! Start-up order, each step a clean error (never a panic — cudarc panics on a missing library
//! or symbol, so every call into it runs under `catch_unwind`): libraries present → their
//! versions → device context → kernels compiled by NVRTC for the device → weights uploaded.

mod blas;
mod engine;

use std::path::PathBuf;
use std::sync::OnceLock;

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};

pub use engine::CudaEncoder;

/// The kernels' CUDA C source.
pub const KERNEL_SOURCE: &str = include_str!("kernels.cu");

/// Every `extern "C"` kernel in [`KERNEL_SOURCE`].
pub const KERNELS: [&str; 7] = [
    "embed_layernorm",
    "layernorm",
    "to_half",
    "quantize_rows",
    "bias_act_residual",
    "dequant_bias_act_residual",
    "attention",
];

/// Oldest driver API this build's bindings (CUDA 13.0) may call.
const MIN_DRIVER: i32 = 13000;
/// Oldest cuBLASLt (`major·10000 + minor·100 + patch`) with the Hopper INT8 "TN" layout.
const MIN_CUBLASLT: usize = 120000;

/// Library file names to load ahead of cudarc's own by-name lookup, in dependency order.
const PRELOAD: [&str; 4] = [
    "libnvrtc-builtins.so",
    "libnvrtc.so",
    "libcublasLt.so",
    "libcuda.so",
];

/// Load the CUDA libraries found in `dirs` by absolute path, so cudarc's later lookup by soname
/// finds them even when they are not on the loader path (pip wheels, for instance). Returns the
/// files loaded. Runs once per process; later calls return the first result.
pub fn preload(dirs: &[PathBuf]) -> &'static [PathBuf] {
    static LOADED: OnceLock<Vec<PathBuf>> = OnceLock::new();
    LOADED.get_or_init(|| {
        let mut loaded = Vec::new();
        for prefix in PRELOAD {
            for dir in dirs {
                let Ok(entries) = std::fs::read_dir(dir) else {
                    tracing::warn!(dir = %dir.display(), "CUDA library directory is not readable");
                    continue;
                };
                let mut hits: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(prefix) && !n.contains(".alt."))
                    })
                    .collect();
                hits.sort();
                // The most specific name (e.g. `.so.13.0.88` over `.so.13`) is the real file.
                if let Some(path) = hits.pop() {
                    // SAFETY: loading a shared library runs its initialisers; these are NVIDIA's
                    // own libraries, loaded the way cudarc would load them.
                    match unsafe { libloading::Library::new(&path) } {
                        Ok(lib) => {
                            std::mem::forget(lib); // stays loaded for the process
                            loaded.push(path);
                            break;
                        }
                        Err(e) => tracing::warn!(path = %path.display(), "cannot load: {e}"),
                    }
                }
            }
        }
        loaded
    })
}

/// Run `f`, turning a cudarc panic (missing library or symbol) into an error.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(format!("{what}: {msg}"))
        }
    }
}

/// NVRTC's version, or why it cannot be used.
pub fn nvrtc_version() -> Result<(i32, i32), String> {
    guarded("NVRTC", || {
        // SAFETY: is_culib_present only tries to dlopen the library.
        if !unsafe { nvrtc_sys::is_culib_present() } {
            return Err("libnvrtc is not on the loader path (set SAMP_CUDA_LIB_DIR)".into());
        }
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two valid out-pointers.
        unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| format!("nvrtcVersion: {e:?}"))?;
        Ok((major, minor))
    })
}

/// What [`compile`] should produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Machine code for exactly this architecture (e.g. 90 for sm_90).
    Cubin(u32),
    /// PTX for this virtual architecture, JIT-compiled by the driver.
    Ptx(u32),
}

/// Compile [`KERNEL_SOURCE`] with NVRTC. Needs only libnvrtc, no GPU.
pub fn compile(target: Target) -> Result<Vec<u8>, String> {
    compile_source(KERNEL_SOURCE, target)
}

/// Compile CUDA C `source`; the error carries NVRTC's log.
pub fn compile_source(source: &str, target: Target) -> Result<Vec<u8>, String> {
    nvrtc_version()?;
    guarded("NVRTC", || {
        let src = std::ffi::CString::new(source).map_err(|_| "NUL byte in the source")?;
        let name = c"samp_kernels.cu";
        let prog = nvrtc::create_program(&src, Some(name)).map_err(|e| format!("{e:?}"))?;
        let arch = match target {
            Target::Cubin(a) => format!("--gpu-architecture=sm_{a}"),
            Target::Ptx(a) => format!("--gpu-architecture=compute_{a}"),
        };
        let opts = [arch, "--std=c++17".to_string()];
        // SAFETY: `prog` is a live program; it is destroyed below on every path.
        let out = unsafe {
            match nvrtc::compile_program(prog, &opts) {
                Ok(()) => match target {
                    Target::Ptx(_) => nvrtc::get_ptx(prog)
                        .map(|p| p.iter().map(|&c| c as u8).collect())
                        .map_err(|e| format!("{e:?}")),
                    Target::Cubin(_) => cubin(prog),
                },
                Err(e) => {
                    let log = nvrtc::get_program_log(prog)
                        .map(|l| {
                            let bytes: Vec<u8> = l.iter().map(|&c| c as u8).collect();
                            String::from_utf8_lossy(&bytes)
                                .trim_end_matches('\0')
                                .to_string()
                        })
                        .unwrap_or_default();
                    Err(format!("{e:?} with {opts:?}:\n{log}"))
                }
            }
        };
        // SAFETY: created above, not destroyed before.
        let _ = unsafe { nvrtc::destroy_program(prog) };
        out
    })
}

/// # Safety
/// `prog` must be a successfully compiled program.
unsafe fn cubin(prog: nvrtc_sys::nvrtcProgram) -> Result<Vec<u8>, String> {
    let mut size = 0usize;
    nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size)
        .result()
        .map_err(|e| format!("nvrtcGetCUBINSize: {e:?}"))?;
    let mut buf = vec![0u8; size];
    nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast())
        .result()
        .map_err(|e| format!("nvrtcGetCUBIN: {e:?}"))?;
    Ok(buf)
}

/// Versions of what was found, for the start-up log and the device check.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Probe {
    pub driver: Option<i32>,
    pub nvrtc: Option<(i32, i32)>,
    pub cublaslt: Option<usize>,
    pub devices: Option<i32>,
    pub preloaded: Vec<PathBuf>,
}

/// Check library presence and versions, without creating a context.
pub fn probe(lib_dirs: &[PathBuf]) -> (Probe, Result<(), String>) {
    use cudarc::{cublaslt::sys as lt, driver::sys as drv};
    let mut p = Probe {
        preloaded: preload(lib_dirs).to_vec(),
        ..Probe::default()
    };
    let res = (|| {
        p.driver = Some(guarded("CUDA driver", || {
            // SAFETY: only tries to dlopen the library.
            if !unsafe { drv::is_culib_present() } {
                return Err("libcuda.so.1 not found: no NVIDIA driver on this machine".into());
            }
            let mut v = 0;
            // SAFETY: a valid out-pointer.
            unsafe { drv::cuDriverGetVersion(&mut v) }
                .result()
                .map_err(|e| format!("cuDriverGetVersion: {e:?}"))?;
            Ok(v)
        })?);
        let driver = p.driver.unwrap_or_default();
        if driver < MIN_DRIVER {
            return Err(format!(
                "the NVIDIA driver supports CUDA {}.{}; this build needs {}.{} or newer",
                driver / 1000,
                driver % 1000 / 10,
                MIN_DRIVER / 1000,
                MIN_DRIVER % 1000 / 10
            ));
        }
        p.nvrtc = Some(nvrtc_version()?);
        p.cublaslt = Some(guarded("cuBLASLt", || {
            // SAFETY: only tries to dlopen the library.
            if !unsafe { lt::is_culib_present() } {
                return Err("libcublasLt is not on the loader path (set SAMP_CUDA_LIB_DIR)".into());
            }
            // SAFETY: takes no arguments.
            Ok(unsafe { lt::cublasLtGetVersion() })
        })?);
        if p.cublaslt.unwrap_or_default() < MIN_CUBLASLT {
            return Err(format!(
                "cuBLASLt {:?} is older than {MIN_CUBLASLT}",
                p.cublaslt
            ));
        }
        p.devices = Some(guarded("CUDA driver", || {
            cudarc::driver::result::init().map_err(|e| format!("cuInit: {e:?}"))?;
            cudarc::driver::CudaContext::device_count().map_err(|e| format!("{e:?}"))
        })?);
        if p.devices == Some(0) {
            return Err("the driver reports no CUDA device".into());
        }
        Ok(())
    })();
    (p, res)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC comes from the `nvidia-cuda-nvrtc` wheel (scripts/test.sh installs it and sets
    /// SAMP_CUDA_LIB_DIR). Without it these tests skip loudly, unless SAMP_REQUIRE_NVRTC=1
    /// (CI), where a missing NVRTC is a failure.
    fn nvrtc_or_skip(test: &str) -> bool {
        let dirs = crate::backend::device::lib_dirs(
            std::env::var_os("SAMP_CUDA_LIB_DIR")
                .as_deref()
                .map(std::path::Path::new),
        );
        preload(&dirs);
        match nvrtc_version() {
            Ok(_) => true,
            Err(e) if std::env::var("SAMP_REQUIRE_NVRTC").as_deref() == Ok("1") => {
                panic!("{test}: NVRTC required (SAMP_REQUIRE_NVRTC=1) but unusable: {e}")
            }
            Err(e) => {
                eprintln!("SKIPPED {test}: NVRTC unavailable ({e})");
                false
            }
        }
    }

    #[test]
    fn every_kernel_compiles_to_cubin_and_ptx() {
        if !nvrtc_or_skip("every_kernel_compiles_to_cubin_and_ptx") {
            return;
        }
        let (major, minor) = nvrtc_version().unwrap();
        eprintln!("NVRTC {major}.{minor}");
        for arch in [80, 90] {
            let cubin = compile(Target::Cubin(arch)).unwrap_or_else(|e| panic!("sm_{arch}: {e}"));
            assert_eq!(&cubin[..4], b"\x7fELF", "sm_{arch}: a cubin is an ELF file");
            let ptx = compile(Target::Ptx(arch)).unwrap_or_else(|e| panic!("compute_{arch}: {e}"));
            let ptx = String::from_utf8_lossy(&ptx);
            for k in KERNELS {
                assert!(
                    ptx.contains(&format!(".entry {k}(")),
                    "compute_{arch}: kernel {k} missing from the PTX"
                );
            }
        }
    }

    #[test]
    fn a_compile_error_comes_back_with_the_log() {
        if !nvrtc_or_skip("a_compile_error_comes_back_with_the_log") {
            return;
        }
        let src = "extern \"C\" __global__ void broken() { undefined_name(); }";
        let err = compile_source(src, Target::Ptx(90)).unwrap_err();
        assert!(err.contains("undefined_name"), "{err}");
    }

    #[test]
    fn probe_without_a_driver_is_an_error_not_a_panic() {
        // This machine (CI) has no NVIDIA driver; a GPU machine passes the probe instead.
        let (p, res) = probe(&[]);
        match res {
            Ok(()) => assert!(p.devices.unwrap_or(0) > 0),
            Err(e) => {
                assert!(!e.is_empty());
                eprintln!("probe: {e}");
            }
        }
    }
}
