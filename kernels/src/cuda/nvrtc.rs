//! CUDA C → cubin with NVRTC (libnvrtc loaded at run time), for the device's own architecture.
//!
//! A cubin (not PTX) is produced so the driver never JIT-compiles: PTX from an NVRTC newer than
//! the driver would not load, so on the GPU machine the NVRTC of the driver's CUDA version must
//! come first on the library path (see `tests/bench/results/` for what was found there).
//! Compiled cubins are cached in memory by (source hash, arch) and on disk (`kernel_cache`).

use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::nvrtc::{result, sys};

use crate::error::{Error, Result};

/// What one compile produced.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub cubin: Vec<u8>,
    /// NVRTC's log, with ptxas's per-kernel resource report (`--ptxas-options=-v`).
    pub log: String,
}

/// ptxas's resource report for one kernel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelStats {
    pub name: String,
    pub registers: u32,
    pub stack_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
}

/// Whether libnvrtc can be opened here.
pub fn available() -> bool {
    // SAFETY: only probes whether the library loads.
    unsafe { sys::is_culib_present() }
}

/// NVRTC's version, e.g. (13, 0).
pub fn version() -> Result<(i32, i32)> {
    if !available() {
        return Err(not_found());
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters.
    let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(Error::Device(format!("nvrtcVersion: {r:?}")));
    }
    Ok((major, minor))
}

fn not_found() -> Error {
    Error::Device("libnvrtc could not be loaded: put CUDA's NVRTC (libnvrtc.so.13) on LD_LIBRARY_PATH".into())
}

fn source_key(source: &str, arch: (i32, i32)) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    source.hash(&mut h);
    arch.hash(&mut h);
    h.finish()
}

type Cache = Mutex<HashMap<u64, Arc<Compiled>>>;

/// Forgets this process's compiled cubins (the disk cache stays): tests use it to see the disk
/// cache at work.
pub fn clear_memory_cache() {
    cache().lock().unwrap_or_else(|p| p.into_inner()).clear();
}

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Compiles `source` for `sm_{arch.0}{arch.1}`, reusing an earlier compile of the same source
/// (in this process, or on disk through `kernel_cache`).
pub fn compile_cached(source: &str, name: &str, arch: (i32, i32)) -> Result<Arc<Compiled>> {
    let key = source_key(source, arch);
    if let Some(c) = cache().lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(c.clone());
    }
    let nvrtc = version()?;
    let c = match super::kernel_cache::load(source, arch, nvrtc) {
        Some(c) => Arc::new(c),
        None => {
            let c = compile(source, name, arch)?;
            super::kernel_cache::store(source, arch, nvrtc, &c);
            Arc::new(c)
        }
    };
    cache().lock().unwrap_or_else(|p| p.into_inner()).insert(key, c.clone());
    Ok(c)
}

/// Compiles `source` (program name `name`, for messages) to a cubin for `sm_{arch}`.
pub fn compile(source: &str, name: &str, arch: (i32, i32)) -> Result<Compiled> {
    if !available() {
        return Err(not_found());
    }
    let err = |what: &str, e: &dyn std::fmt::Debug| Error::Device(format!("nvrtc {what} ({name}): {e:?}"));
    let src = CString::new(source).map_err(|_| Error::Device(format!("kernel source {name} contains a NUL byte")))?;
    let cname = CString::new(name).unwrap_or_else(|_| CString::new("quilt").unwrap());
    let prog = result::create_program(&src, Some(&cname)).map_err(|e| err("create", &e))?;
    let mut opts = vec![
        format!("--gpu-architecture=sm_{}{}", arch.0, arch.1),
        "--std=c++17".to_string(),
        "--ptxas-options=-v".to_string(),
    ];
    if let Some(inc) = std::env::var_os("QUILT_CUDA_INCLUDE") {
        opts.push(format!("-I{}", inc.to_string_lossy()));
    }
    // SAFETY: `prog` is live until destroyed below; buffers are sized by NVRTC's size queries.
    let out = unsafe {
        let compiled = result::compile_program(prog, &opts);
        let log = result::get_program_log(prog).map(|l| c_chars_to_string(&l)).unwrap_or_default();
        let cubin = match compiled {
            Ok(()) => get_cubin(prog).map_err(|e| err("get cubin", &e)),
            Err(e) => Err(Error::Device(format!("nvrtc could not compile {name} for sm_{}{}: {e:?}\n{log}", arch.0, arch.1))),
        };
        let _ = result::destroy_program(prog);
        cubin.map(|cubin| Compiled { cubin, log })
    };
    out
}

unsafe fn get_cubin(prog: sys::nvrtcProgram) -> std::result::Result<Vec<u8>, sys::nvrtcResult> {
    let mut size = 0usize;
    let r = sys::nvrtcGetCUBINSize(prog, &mut size);
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(r);
    }
    let mut buf = vec![0u8; size];
    let r = sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char);
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(r);
    }
    Ok(buf)
}

fn c_chars_to_string(v: &[c_char]) -> String {
    let bytes: Vec<u8> = v.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Parses ptxas's `-v` report: one entry per compiled kernel.
pub fn kernel_stats(log: &str) -> Vec<KernelStats> {
    let mut out: Vec<KernelStats> = Vec::new();
    let num_before = |line: &str, word: &str| -> Option<u32> {
        let i = line.find(word)?;
        line[..i].split_whitespace().last()?.parse().ok()
    };
    for line in log.lines() {
        if let Some(i) = line.find("Compiling entry function '") {
            let rest = &line[i + "Compiling entry function '".len()..];
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push(KernelStats { name, ..Default::default() });
        } else if let Some(k) = out.last_mut() {
            if let Some(n) = num_before(line, "bytes stack frame") {
                k.stack_bytes = n;
                k.spill_store_bytes = num_before(line, "bytes spill stores").unwrap_or(0);
                k.spill_load_bytes = num_before(line, "bytes spill loads").unwrap_or(0);
            }
            if let Some(n) = num_before(line, "registers") {
                k.registers = n;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_ptxas_report() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'q_add' for 'sm_90'\n\
ptxas info    : Function properties for q_add\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 18 registers, used 0 barriers, 448 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'q_b' for 'sm_90'\n\
ptxas info    : Function properties for q_b\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 7 registers, used 1 barriers, 400 bytes cmem[0]\n";
        let s = kernel_stats(log);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0], KernelStats { name: "q_add".into(), registers: 18, stack_bytes: 8, spill_store_bytes: 4, spill_load_bytes: 12 });
        assert_eq!((s[1].name.as_str(), s[1].registers, s[1].spill_load_bytes), ("q_b", 7, 0));
    }
}
