//! quilt's GPU device in ORT (`shared/docs/research/ort-plugin-ep.md` §4, §5).
//!
//! - `discovery`: ORT hardware device ↔ CUDA ordinal (PCI bus id)
//! - `allocator`: `OrtAllocator` over device memory (`cuMemAlloc`) and pinned host memory
//! - `data_transfer`: `OrtDataTransferImpl` for CPU→GPU, GPU→CPU and GPU→GPU copies
//! - `stream`: `OrtSyncStreamImpl` (a real `CUstream`) and its event-based notifications
//!
//! [`Gpus`] is the factory's view of the GPUs it offers: for each, the CUDA ordinal, the two
//! `OrtMemoryInfo`s registered on its `OrtEpDevice` (device memory and pinned host memory), and
//! the `CudaDevice` (context + stream), opened on first use and shared by the allocators, copies,
//! ORT streams and every subgraph compiled for it. Where libcuda is absent, there are no GPUs
//! and nothing here runs.

pub mod allocator;
pub mod data_transfer;
pub mod discovery;
pub mod stream;

use std::ffi::CString;
use std::ptr;
use std::sync::{Arc, Mutex};

use ort_sys::{OrtAllocatorType, OrtDeviceMemoryType, OrtHardwareDevice, OrtMemoryInfo, OrtMemoryInfoDeviceType};
use quilt_kernels::cuda::{CudaDevice, GpuInfo};

use crate::abi::{
    OrtMemoryDevice, NVIDIA_VENDOR_ID, ORT_DEVICE_MEMORY_TYPE_DEFAULT, ORT_DEVICE_MEMORY_TYPE_HOST_ACCESSIBLE,
    ORT_MEMORY_DEVICE_TYPE_GPU,
};
use crate::api::Api;
use crate::error::{Error, Result};
use crate::ort_call;

/// The names of the memory infos quilt registers (ORT keys allocators by device, not by name).
pub const DEVICE_MEMORY_NAME: &str = "QuiltCuda";
pub const PINNED_MEMORY_NAME: &str = "QuiltCudaPinned";

/// Which of a GPU's two memories an `OrtMemoryInfo`/`OrtMemoryDevice` means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    Device,
    Pinned,
}

/// An `OrtMemoryInfo` quilt created and releases.
pub struct MemoryInfo(*mut OrtMemoryInfo);

impl MemoryInfo {
    pub fn ptr(&self) -> *const OrtMemoryInfo {
        self.0
    }
}

/// One GPU quilt offers.
pub struct Gpu {
    pub info: GpuInfo,
    pub device_memory: MemoryInfo,
    pub pinned_memory: MemoryInfo,
    device: Mutex<Option<Arc<CudaDevice>>>,
}

impl Gpu {
    pub fn ordinal(&self) -> usize {
        self.info.ordinal
    }

    /// The GPU's context and stream, opened on first use.
    pub fn device(&self) -> Result<Arc<CudaDevice>> {
        let mut slot = self.device.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = slot.as_ref() {
            return Ok(d.clone());
        }
        let d = CudaDevice::new(self.info.ordinal)?;
        *slot = Some(d.clone());
        Ok(d)
    }

    pub fn memory_info(&self, kind: MemoryKind) -> *const OrtMemoryInfo {
        match kind {
            MemoryKind::Device => self.device_memory.ptr(),
            MemoryKind::Pinned => self.pinned_memory.ptr(),
        }
    }
}

/// The GPUs quilt offers, and the hardware devices it had to create for them.
pub struct Gpus {
    api: Api,
    pub gpus: Vec<Gpu>,
    /// Hardware devices made with `CreateHardwareDevice` (ORT reported no NVIDIA GPU); the
    /// factory owns them, and ORT releases the OrtEpDevices that use them first.
    created_hardware: Mutex<Vec<usize>>,
}

// The raw pointers are ORT objects quilt owns; ORT's API is thread-safe for them.
unsafe impl Send for Gpus {}
unsafe impl Sync for Gpus {}

impl Gpus {
    /// No GPUs (no driver, no device, or discovery failed).
    pub fn none(api: Api) -> Gpus {
        Gpus { api, gpus: Vec::new(), created_hardware: Mutex::new(Vec::new()) }
    }

    /// Memory infos for each GPU in `infos` (ordinal order).
    pub fn new(api: Api, infos: Vec<GpuInfo>) -> Result<Gpus> {
        let mut gpus = Gpus::none(api);
        for info in infos {
            let device_memory = create_memory_info(api, DEVICE_MEMORY_NAME, info.ordinal, MemoryKind::Device)?;
            let pinned_memory = create_memory_info(api, PINNED_MEMORY_NAME, info.ordinal, MemoryKind::Pinned)?;
            gpus.gpus.push(Gpu { info, device_memory, pinned_memory, device: Mutex::new(None) });
        }
        Ok(gpus)
    }

    pub fn is_empty(&self) -> bool {
        self.gpus.is_empty()
    }

    pub fn by_ordinal(&self, ordinal: usize) -> Option<&Gpu> {
        self.gpus.iter().find(|g| g.info.ordinal == ordinal)
    }

    /// Keeps a hardware device quilt created, to release it with the factory.
    pub fn adopt_hardware_device(&self, device: *mut OrtHardwareDevice) {
        self.created_hardware.lock().unwrap_or_else(|p| p.into_inner()).push(device as usize);
    }

    /// The GPU and memory an ORT memory device denotes, if it is one of quilt's.
    ///
    /// # Safety
    /// `device` must be NULL or a live `OrtMemoryDevice`.
    pub unsafe fn classify(&self, device: *const OrtMemoryDevice) -> Option<(&Gpu, MemoryKind)> {
        let d = describe_memory_device(self.api, device)?;
        if d.device_type != ORT_MEMORY_DEVICE_TYPE_GPU || d.vendor_id != NVIDIA_VENDOR_ID {
            return None;
        }
        let kind = match d.memory_type {
            ORT_DEVICE_MEMORY_TYPE_DEFAULT => MemoryKind::Device,
            ORT_DEVICE_MEMORY_TYPE_HOST_ACCESSIBLE => MemoryKind::Pinned,
            _ => return None,
        };
        Some((self.by_ordinal(d.device_id as usize)?, kind))
    }
}

impl Drop for Gpus {
    fn drop(&mut self) {
        for g in &self.gpus {
            unsafe {
                (self.api.ort.ReleaseMemoryInfo)(g.device_memory.0);
                (self.api.ort.ReleaseMemoryInfo)(g.pinned_memory.0);
            }
        }
        if let Some(release) = self.api.ep.ReleaseHardwareDevice {
            for &d in self.created_hardware.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                unsafe { release(d as *mut OrtHardwareDevice) };
            }
        }
    }
}

/// What ORT says about a memory device, read as integers.
#[derive(Clone, Copy, Debug)]
pub struct MemoryDeviceDesc {
    pub device_type: i32,
    pub memory_type: i32,
    pub vendor_id: u32,
    pub device_id: u32,
}

/// # Safety
/// `device` must be NULL or a live `OrtMemoryDevice`.
pub unsafe fn describe_memory_device(api: Api, device: *const OrtMemoryDevice) -> Option<MemoryDeviceDesc> {
    if device.is_null() {
        return None;
    }
    let e = api.ep;
    Some(MemoryDeviceDesc {
        device_type: (e.MemoryDevice_GetDeviceType?)(device),
        memory_type: (e.MemoryDevice_GetMemoryType?)(device),
        vendor_id: (e.MemoryDevice_GetVendorId?)(device),
        device_id: (e.MemoryDevice_GetDeviceId?)(device),
    })
}

fn create_memory_info(api: Api, name: &str, ordinal: usize, kind: MemoryKind) -> Result<MemoryInfo> {
    let c = CString::new(name).map_err(|_| Error::Gpu(format!("memory info name {name:?}")))?;
    let memory_type = match kind {
        MemoryKind::Device => OrtDeviceMemoryType::OrtDeviceMemoryType_DEFAULT,
        MemoryKind::Pinned => OrtDeviceMemoryType::OrtDeviceMemoryType_HOST_ACCESSIBLE,
    };
    let mut info: *mut OrtMemoryInfo = ptr::null_mut();
    ort_call!(
        api,
        CreateMemoryInfo_V2(
            c.as_ptr(),
            OrtMemoryInfoDeviceType::OrtMemoryInfoDeviceType_GPU,
            NVIDIA_VENDOR_ID,
            ordinal as i32,
            memory_type,
            0,
            OrtAllocatorType::OrtDeviceAllocator,
            &mut info,
        )
    )?;
    if info.is_null() {
        return Err(Error::Gpu(format!("CreateMemoryInfo_V2 returned no memory info for {name}")));
    }
    Ok(MemoryInfo(info))
}
