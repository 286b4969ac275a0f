//! The GPU this backend runs on: a CUDA context and one stream (cudarc, libcuda loaded at run
//! time), device memory with RAII, host↔device copies and kernel launches.
//!
//! Pointers are raw `CUdeviceptr`s rather than cudarc's tracked slices: one stream orders all
//! work, and the executor (later an arena carved from one allocation) decides lifetimes.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext, CudaStream};

use crate::error::{Error, Result};

fn dev_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Device(format!("{what}: {e}"))
}

/// One GPU: its context, the stream every step is queued on, and what codegen needs to know.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Compute capability, e.g. (9, 0) for Hopper; NVRTC targets `sm_{major}{minor}`.
    pub arch: (i32, i32),
    pub name: String,
}

impl CudaDevice {
    /// Opens GPU `ordinal`. Fails with a clear message (never a panic) when the driver library
    /// is missing or there is no such GPU.
    pub fn new(ordinal: usize) -> Result<Arc<CudaDevice>> {
        // SAFETY: only probes whether libcuda can be opened.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::Device("the CUDA driver library (libcuda.so) could not be loaded: no NVIDIA driver here".into()));
        }
        result::init().map_err(|e| dev_err("cuInit", e))?;
        let count = result::device::get_count().map_err(|e| dev_err("cuDeviceGetCount", e))?;
        if ordinal as i32 >= count {
            return Err(Error::Device(format!("GPU {ordinal} requested, {count} present")));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| dev_err("creating the context", e))?;
        // One stream orders everything, so cudarc's per-allocation event tracking is not needed.
        // SAFETY: no cudarc-tracked allocations exist on this context yet.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| dev_err("creating a stream", e))?;
        let arch = ctx.compute_capability().map_err(|e| dev_err("compute capability", e))?;
        let name = ctx.name().map_err(|e| dev_err("device name", e))?;
        Ok(Arc::new(CudaDevice { ctx, stream, arch, name }))
    }

    /// Makes this device's context current on the calling thread (ORT may call from any thread).
    pub fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| dev_err("binding the context", e))
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| dev_err("stream synchronize (an earlier launch failed)", e))
    }

    /// `bytes` of uninitialised device memory (stream-ordered allocation).
    pub fn alloc(self: &Arc<Self>, bytes: usize) -> Result<DeviceBuffer> {
        if bytes == 0 {
            return Ok(DeviceBuffer { ptr: 0, bytes: 0, device: self.clone() });
        }
        // SAFETY: the context is current (callers bind first); the pointer is freed on drop.
        let ptr = unsafe { result::malloc_async(self.cu_stream(), bytes) }
            .map_err(|e| dev_err(&format!("allocating {bytes} bytes"), e))?;
        Ok(DeviceBuffer { ptr, bytes, device: self.clone() })
    }

    /// A device copy of `data`.
    pub fn upload(self: &Arc<Self>, data: &[u8]) -> Result<DeviceBuffer> {
        let buf = self.alloc(data.len())?;
        if !data.is_empty() {
            // SAFETY: `buf` holds `data.len()` bytes; the copy is complete before `data` can go
            // away because we synchronise (pageable host memory is staged synchronously anyway).
            unsafe { result::memcpy_htod_async(buf.ptr, data, self.cu_stream()) }.map_err(|e| dev_err("copy to device", e))?;
            self.synchronize()?;
        }
        Ok(buf)
    }

    /// Copies `data` into the start of `dst` (which must be large enough).
    pub fn write(&self, dst: &DeviceBuffer, data: &[u8]) -> Result<()> {
        if data.len() > dst.bytes {
            return Err(Error::Device(format!("writing {} bytes into a {}-byte buffer", data.len(), dst.bytes)));
        }
        if !data.is_empty() {
            // SAFETY: bounds checked above; synchronised before `data` can be dropped.
            unsafe { result::memcpy_htod_async(dst.ptr, data, self.cu_stream()) }.map_err(|e| dev_err("copy to device", e))?;
            self.synchronize()?;
        }
        Ok(())
    }

    /// The first `bytes` bytes of `src`, copied to the host (waits for all queued work).
    pub fn download(&self, src: &DeviceBuffer, bytes: usize) -> Result<Vec<u8>> {
        let mut out = vec![0u8; bytes];
        if bytes > src.bytes {
            return Err(Error::Device(format!("reading {bytes} bytes from a {}-byte buffer", src.bytes)));
        }
        if bytes > 0 {
            // SAFETY: bounds checked; synchronised before `out` is returned.
            unsafe { result::memcpy_dtoh_async(&mut out[..], src.ptr, self.cu_stream()) }.map_err(|e| dev_err("copy to host", e))?;
        }
        self.synchronize()?;
        Ok(out)
    }

    pub fn memset_zero(&self, dst: u64, bytes: usize) -> Result<()> {
        if bytes > 0 {
            // SAFETY: callers pass a live device pointer with at least `bytes` bytes.
            unsafe { result::memset_d8_async(dst, 0, bytes, self.cu_stream()) }.map_err(|e| dev_err("memset", e))?;
        }
        Ok(())
    }

    pub fn copy_d2d(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes > 0 {
            // SAFETY: callers pass live device pointers with at least `bytes` bytes each.
            unsafe { result::memcpy_dtod_async(dst, src, bytes, self.cu_stream()) }.map_err(|e| dev_err("device copy", e))?;
        }
        Ok(())
    }

    /// Loads a cubin and looks up its kernels by name.
    pub fn load_module(&self, cubin: &[u8], names: &[&str]) -> Result<Vec<Function>> {
        let mut image = cubin.to_vec();
        image.push(0);
        // SAFETY: `image` is a complete cubin image; the module stays loaded for the process
        // (modules are cached per source and few).
        let module = unsafe { result::module::load_data(image.as_ptr() as *const c_void) }.map_err(|e| dev_err("loading a cubin", e))?;
        names
            .iter()
            .map(|n| {
                let cname = std::ffi::CString::new(*n).map_err(|_| Error::Device(format!("kernel name {n:?}")))?;
                // SAFETY: `module` is loaded above.
                unsafe { result::module::get_function(module, cname) }
                    .map(Function)
                    .map_err(|e| dev_err(&format!("kernel '{n}' not in the module"), e))
            })
            .collect()
    }

    /// Launches `f` with a params struct by value followed by device pointers.
    pub fn launch(&self, f: &Function, grid: u32, block: u32, params: &Params, ptrs: &[u64]) -> Result<()> {
        let mut ptrs = ptrs.to_vec();
        let mut args: Vec<*mut c_void> = Vec::with_capacity(1 + ptrs.len());
        args.push(params as *const Params as *mut c_void);
        for p in ptrs.iter_mut() {
            args.push(p as *mut u64 as *mut c_void);
        }
        // SAFETY: the argument list matches the generated signature `(QParams, T* ...)`: codegen
        // and the launch plan are produced together per step.
        unsafe { result::launch_kernel(f.0, (grid, 1, 1), (block, 1, 1), 0, self.cu_stream(), &mut args) }
            .map_err(|e| dev_err("kernel launch", e))
    }
}

/// A kernel in a loaded module.
#[derive(Clone, Copy)]
pub struct Function(sys::CUfunction);
// SAFETY: CUfunction handles are usable from any thread once the context is current.
unsafe impl Send for Function {}
unsafe impl Sync for Function {}

/// The scalar arguments of every generated kernel, passed by value (CUDA-graph friendly):
/// sizes, strides and offsets as i64, floats as f64 bit patterns.
pub const PARAM_SLOTS: usize = 48;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Params(pub [i64; PARAM_SLOTS]);

/// Device memory, freed (stream-ordered) when dropped.
pub struct DeviceBuffer {
    pub ptr: u64,
    pub bytes: usize,
    device: Arc<CudaDevice>,
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.ptr != 0 {
            // SAFETY: `ptr` came from malloc_async on this stream; work using it was queued
            // before, so the stream-ordered free happens after it.
            let _ = unsafe { result::free_async(self.ptr, self.device.cu_stream()) };
        }
    }
}
