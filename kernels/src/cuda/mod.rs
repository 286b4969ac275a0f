//! The CUDA backend: executes a `Plan` (lowered or optimized) on an NVIDIA GPU, one launch
//! sequence per step; the optimizer's fused ops (Silu, QuickGelu, GeGlu, Attention) included.
//!
//! - `device`: context, stream, memory, launches (cudarc; libcuda loaded at run time)
//! - `codegen`: CUDA C per step with symbolic sizes as kernel arguments, and its launch plan
//! - `nvrtc`: CUDA C → cubin for the device's own architecture, cached by source
//! - `gemm`, `conv`: MatMul/Gemm through cuBLAS/cuBLASLt; Conv through cuDNN (im2col + cuBLAS
//!   without it)
//! - `sdpa`: large attention problems through cuDNN's fused SDPA engines (the flash kernel as
//!   the fallback); `cudnn_backend`: the cuDNN graph-API pieces `conv` and `sdpa` share
//! - `executor`: `CudaExecutable`, the GPU counterpart of `cpu::CpuExecutable`; `run_device`
//!   runs on caller-owned device tensors on the caller's stream (the EP's GPU device); per
//!   shape signature a prepared schedule, no allocation or host sync inside a run
//! - `arena`: liveness packing of a run's buffers into one grow-only device block
//! - `graph`: CUDA graph capture and replay of a run
//!
//! Nothing here needs a CUDA toolkit at build time; without a GPU, `CudaExecutable::new`
//! returns `Error::Device`, and the code generator and NVRTC still work (CI compiles every
//! fixture's kernels for sm_90 that way).

pub mod arena;
pub mod codegen;
pub mod conv;
pub mod cudnn_backend;
pub mod env;
pub mod device;
pub mod executor;
pub mod gemm;
pub mod graph;
pub mod kernel_cache;
pub mod nvrtc;
pub mod sdpa;

/// The driver's stream handle, as callers of `run_device` pass it.
pub use cudarc::driver::sys::CUstream;
pub use device::{list_gpus, CudaDevice, DeviceBuffer, Event, GpuInfo, RawStream};
pub use executor::{CudaExecutable, DeviceTensor, QueueTimes, RunStats, StepTiming};
