//! The GPU this backend runs on: a CUDA context and one stream (cudarc, libcuda loaded at run
//! time), device memory with RAII, host↔device copies and kernel launches; plus what the EP's
//! allocator, data transfer and ORT streams need: GPU listing without a context (`list_gpus`),
//! raw and pinned allocations, copies between any two addresses, events and extra streams.
//!
//! Pointers are raw `CUdeviceptr`s rather than cudarc's tracked slices: one stream orders all
//! work (runs take `lock_stream`), and the executor (its arena, `arena.rs`) decides lifetimes.

use std::ffi::c_void;
use std::sync::{Arc, Mutex, MutexGuard};

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
    /// Held while a run queues its work on `stream` (see [`CudaDevice::lock_stream`]).
    stream_lock: Mutex<()>,
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
        Ok(Arc::new(CudaDevice { ctx, stream, arch, name, stream_lock: Mutex::new(()) }))
    }

    /// Makes this device's context current on the calling thread (ORT may call from any thread).
    pub fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| dev_err("binding the context", e))
    }

    /// Serialises runs on the device's stream: executables share it, a run's memory reuse
    /// relies on its work being queued contiguously, and a stream capture must not record
    /// another thread's work. Held from the first to the last call that queues a run's work.
    pub fn lock_stream(&self) -> MutexGuard<'_, ()> {
        self.stream_lock.lock().unwrap_or_else(|p| p.into_inner())
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
            return Ok(DeviceBuffer { ptr: 0, bytes: 0, device: self.clone(), owned: true });
        }
        // SAFETY: the context is current (callers bind first); the pointer is freed on drop.
        let ptr = unsafe { result::malloc_async(self.cu_stream(), bytes) }
            .map_err(|e| dev_err(&format!("allocating {bytes} bytes"), e))?;
        Ok(DeviceBuffer { ptr, bytes, device: self.clone(), owned: true })
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

    /// Makes the device's own stream wait for everything queued on `other` so far (a no-op
    /// when `other` is the device's stream). Used to run on behalf of a caller's stream.
    pub fn wait_for(&self, other: sys::CUstream) -> Result<()> {
        if other != self.cu_stream() {
            let e = self.event()?;
            e.record(other)?;
            e.make_wait(self.cu_stream())?;
        }
        Ok(())
    }

    /// Makes `other` wait for everything queued on the device's own stream so far.
    pub fn signal_to(&self, other: sys::CUstream) -> Result<()> {
        if other != self.cu_stream() {
            let e = self.event()?;
            e.record(self.cu_stream())?;
            e.make_wait(other)?;
        }
        Ok(())
    }

    /// A new event (no timing) in this context.
    pub fn event(&self) -> Result<Event> {
        self.bind()?;
        result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).map(Event).map_err(|e| dev_err("cuEventCreate", e))
    }

    /// A new event that records a timestamp, for profiled runs (`Event::ms_since`).
    pub fn timing_event(&self) -> Result<Event> {
        self.bind()?;
        result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).map(Event).map_err(|e| dev_err("cuEventCreate", e))
    }

    /// A new non-blocking stream in this context, destroyed (after draining) on drop.
    pub fn new_raw_stream(self: &Arc<Self>) -> Result<RawStream> {
        self.bind()?;
        let raw = result::stream::create(result::stream::StreamKind::NonBlocking).map_err(|e| dev_err("cuStreamCreate", e))?;
        Ok(RawStream { raw, device: self.clone() })
    }

    /// `bytes` of device memory outside any stream order (`cuMemAlloc`), for callers that
    /// manage lifetimes themselves (ORT's allocator interface). Free with [`CudaDevice::free_raw`].
    pub fn malloc_raw(&self, bytes: usize) -> Result<u64> {
        self.bind()?;
        // SAFETY: the context is current.
        unsafe { result::malloc_sync(bytes.max(1)) }.map_err(|e| dev_err(&format!("cuMemAlloc of {bytes} bytes"), e))
    }

    /// Frees memory from [`CudaDevice::malloc_raw`]. `cuMemFree` waits for work using it.
    ///
    /// # Safety
    /// `ptr` must come from `malloc_raw` on this device and not be used afterwards.
    pub unsafe fn free_raw(&self, ptr: u64) -> Result<()> {
        self.bind()?;
        result::free_sync(ptr).map_err(|e| dev_err("cuMemFree", e))
    }

    /// `bytes` of page-locked host memory, mapped for the device (`cuMemHostAlloc`).
    pub fn malloc_pinned(&self, bytes: usize) -> Result<*mut c_void> {
        self.bind()?;
        // SAFETY: the context is current. Flags 0: plain page-locked memory of this (primary) context.
        unsafe { result::malloc_host(bytes.max(1), 0) }.map_err(|e| dev_err(&format!("cuMemHostAlloc of {bytes} bytes"), e))
    }

    /// # Safety
    /// `ptr` must come from [`CudaDevice::malloc_pinned`] and not be used afterwards.
    pub unsafe fn free_pinned(&self, ptr: *mut c_void) -> Result<()> {
        self.bind()?;
        result::free_host(ptr).map_err(|e| dev_err("cuMemFreeHost", e))
    }

    /// Copies `bytes` from `src` to `dst`, each of which may be device, pinned or pageable host
    /// memory (the driver tells them apart by unified addressing). With a stream the copy is
    /// queued on it; without one it is synchronous: it waits for all work queued in this
    /// context, copies, and returns once the copy is complete.
    ///
    /// # Safety
    /// Both ranges must be live for `bytes` bytes until the copy completes.
    pub unsafe fn copy_any(&self, dst: u64, src: u64, bytes: usize, stream: Option<sys::CUstream>) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.bind()?;
        match stream {
            Some(s) => sys::cuMemcpyAsync(dst, src, bytes, s).result().map_err(|e| dev_err("cuMemcpyAsync", e)),
            None => {
                result::ctx::synchronize().map_err(|e| dev_err("cuCtxSynchronize before a copy (an earlier launch failed)", e))?;
                sys::cuMemcpy(dst, src, bytes).result().map_err(|e| dev_err("cuMemcpy", e))?;
                result::ctx::synchronize().map_err(|e| dev_err("cuCtxSynchronize after a copy", e))
            }
        }
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

/// Device memory, freed (stream-ordered) when dropped, or a borrowed view of memory someone
/// else owns (an ORT input or output tensor), which is left alone.
pub struct DeviceBuffer {
    pub ptr: u64,
    pub bytes: usize,
    device: Arc<CudaDevice>,
    owned: bool,
}

impl DeviceBuffer {
    /// A view of `bytes` bytes at `ptr` that this process does not own (never freed here).
    pub fn borrowed(device: &Arc<CudaDevice>, ptr: u64, bytes: usize) -> DeviceBuffer {
        DeviceBuffer { ptr, bytes, device: device.clone(), owned: false }
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.owned && self.ptr != 0 {
            // SAFETY: `ptr` came from malloc_async on this stream; work using it was queued
            // before, so the stream-ordered free happens after it.
            let _ = unsafe { result::free_async(self.ptr, self.device.cu_stream()) };
        }
    }
}

/// A CUDA event (no timing), destroyed on drop (the driver keeps a pending one alive until it
/// completes).
pub struct Event(sys::CUevent);
// SAFETY: CUevent handles may be used from any thread of the process.
unsafe impl Send for Event {}
unsafe impl Sync for Event {}

// Contract of every method here that takes a `CUstream`: a live stream of this event's context
// (the device's own, or one ORT handed to the EP). The driver dereferences the handle, so a
// stale one is undefined behaviour; marking these `unsafe` would carry that into every run on a
// caller's stream (`CudaExecutable::run_device` and the provider's stream callbacks), where the
// handle comes straight from ORT, so the contract is stated once here instead.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
impl Event {
    /// Captures the work queued on `stream` so far.
    pub fn record(&self, stream: sys::CUstream) -> Result<()> {
        // SAFETY: a live event and a stream of the same context.
        unsafe { result::event::record(self.0, stream) }.map_err(|e| dev_err("cuEventRecord", e))
    }

    /// Makes `stream` wait (on the device) for the recorded work.
    pub fn make_wait(&self, stream: sys::CUstream) -> Result<()> {
        // SAFETY: a live event and stream.
        unsafe { result::stream::wait_event(stream, self.0, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT) }
            .map_err(|e| dev_err("cuStreamWaitEvent", e))
    }

    /// Whether the recorded work is complete (never blocks).
    pub fn is_complete(&self) -> Result<bool> {
        // SAFETY: a live event.
        match unsafe { result::event::query(self.0) } {
            Ok(()) => Ok(true),
            Err(e) if e.0 == sys::cudaError_enum::CUDA_ERROR_NOT_READY => Ok(false),
            Err(e) => Err(dev_err("cuEventQuery (an earlier launch failed)", e)),
        }
    }

    /// Blocks the calling thread until the recorded work is complete.
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: a live event.
        unsafe { result::event::synchronize(self.0) }.map_err(|e| dev_err("cuEventSynchronize (an earlier launch failed)", e))
    }

    /// Device time in ms between `start`'s recorded work and this event's (both complete, both
    /// made by `Device::timing_event`).
    pub fn ms_since(&self, start: &Event) -> Result<f64> {
        // SAFETY: two live timing events of one context, both complete.
        unsafe { result::event::elapsed(start.0, self.0) }.map(f64::from).map_err(|e| dev_err("cuEventElapsedTime", e))
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: not used after this.
        let _ = unsafe { result::event::destroy(self.0) };
    }
}

/// A stream created for someone else's use (ORT's `OrtSyncStreamImpl`), drained and destroyed
/// on drop.
pub struct RawStream {
    raw: sys::CUstream,
    device: Arc<CudaDevice>,
}
// SAFETY: CUstream handles may be used from any thread once the context is current.
unsafe impl Send for RawStream {}
unsafe impl Sync for RawStream {}

impl RawStream {
    pub fn raw(&self) -> sys::CUstream {
        self.raw
    }

    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.device
    }

    pub fn synchronize(&self) -> Result<()> {
        self.device.bind()?;
        // SAFETY: a live stream.
        unsafe { result::stream::synchronize(self.raw) }.map_err(|e| dev_err("cuStreamSynchronize (an earlier launch failed)", e))
    }
}

impl Drop for RawStream {
    fn drop(&mut self) {
        let _ = self.synchronize();
        // SAFETY: drained above and not used after this.
        let _ = unsafe { result::stream::destroy(self.raw) };
    }
}

/// What the driver says about one GPU, read without creating a context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    /// The CUDA device ordinal.
    pub ordinal: usize,
    pub name: String,
    /// `domain:bus:device.function` as the driver formats it (e.g. `0000:00:06.0`).
    pub pci_bus_id: String,
}

/// The GPUs the CUDA driver sees. Empty, not an error, when there is no driver library or no
/// GPU, so callers on GPU-less machines need no special case.
pub fn list_gpus() -> Result<Vec<GpuInfo>> {
    // SAFETY: only probes whether libcuda can be opened; nothing below runs without it.
    if !unsafe { sys::is_culib_present() } {
        return Ok(Vec::new());
    }
    match result::init() {
        Ok(()) => {}
        Err(e) if e.0 == sys::cudaError_enum::CUDA_ERROR_NO_DEVICE => return Ok(Vec::new()),
        Err(e) => return Err(dev_err("cuInit", e)),
    }
    let count = result::device::get_count().map_err(|e| dev_err("cuDeviceGetCount", e))?;
    (0..count.max(0))
        .map(|ordinal| {
            let dev = result::device::get(ordinal).map_err(|e| dev_err("cuDeviceGet", e))?;
            let name = result::device::get_name(dev).map_err(|e| dev_err("cuDeviceGetName", e))?;
            let mut buf = [0 as std::ffi::c_char; 32];
            // SAFETY: `buf` has room for the 13-character id plus NUL with plenty to spare.
            unsafe { sys::cuDeviceGetPCIBusId(buf.as_mut_ptr(), buf.len() as i32, dev) }
                .result()
                .map_err(|e| dev_err("cuDeviceGetPCIBusId", e))?;
            // SAFETY: the driver NUL-terminates within `buf`.
            let pci_bus_id = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
            Ok(GpuInfo { ordinal: ordinal as usize, name, pci_bus_id })
        })
        .collect()
}
