//! The `OrtDataTransferImpl` ORT uses to move tensors to, from and between quilt's GPUs: session
//! inputs in CPU memory before a fused node runs, outputs the user did not bind to the device
//! afterwards, and `OrtValue` copies the application asks for (e.g. Python's
//! `OrtValue.ortvalue_from_numpy(a, "gpu", 0, 0x10DE)`, IO binding).
//!
//! Every copy is one `cuMemcpy`: with unified addressing the driver tells device, pinned and
//! pageable host addresses apart. A copy with one of quilt's streams is queued on it; one
//! without a stream (ORT's single-tensor path, session setup) is synchronous.

use std::ffi::c_void;
use std::ptr;
use std::sync::Arc;

use ort_sys::{OrtStatusPtr, OrtSyncStream, OrtValue};

use super::stream::cuda_stream_of;
use super::{describe_memory_device, Gpu, Gpus, MemoryKind};
use crate::abi::{OrtDataTransferImpl, OrtMemoryDevice, ORT_MEMORY_DEVICE_TYPE_CPU, ORT_VERSION_SUPPORTED};
use crate::api::Api;
use crate::error::{Error, Result};
use crate::{guard, ort_call};

/// `OrtDataTransferImpl` first, so ORT's `this` pointer casts back.
#[repr(C)]
pub struct DataTransfer {
    base: OrtDataTransferImpl,
    api: Api,
    gpus: Arc<Gpus>,
}

/// Where one side of a copy lives.
#[derive(Clone, Copy)]
enum Place<'a> {
    Cpu,
    Gpu(&'a Gpu, MemoryKind),
}

impl DataTransfer {
    /// A new data transfer for ORT to own (ORT calls `Release`).
    pub fn new_raw(api: Api, gpus: Arc<Gpus>) -> *mut OrtDataTransferImpl {
        let t = Box::new(DataTransfer {
            base: OrtDataTransferImpl {
                ort_version_supported: ORT_VERSION_SUPPORTED,
                Release: Some(release),
                CanCopy: Some(can_copy),
                CopyTensors: Some(copy_tensors),
            },
            api,
            gpus,
        });
        Box::into_raw(t) as *mut OrtDataTransferImpl
    }

    unsafe fn place(&self, device: *const OrtMemoryDevice) -> Option<Place<'_>> {
        if let Some((gpu, kind)) = self.gpus.classify(device) {
            return Some(Place::Gpu(gpu, kind));
        }
        let d = describe_memory_device(self.api, device)?;
        (d.device_type == ORT_MEMORY_DEVICE_TYPE_CPU).then_some(Place::Cpu)
    }

    /// The GPU whose context performs a copy between `src` and `dst`, if quilt can do it: at
    /// least one side is quilt's GPU memory (device or pinned), the other CPU or quilt's.
    fn copier<'a>(src: Place<'a>, dst: Place<'a>) -> Option<&'a Gpu> {
        match (src, dst) {
            (Place::Gpu(g, MemoryKind::Device), _) | (_, Place::Gpu(g, MemoryKind::Device)) => Some(g),
            (Place::Gpu(g, _), _) | (_, Place::Gpu(g, _)) => Some(g),
            (Place::Cpu, Place::Cpu) => None,
        }
    }

    unsafe fn copy_one(&self, src: *const OrtValue, dst: *mut OrtValue, stream: *mut OrtSyncStream) -> Result<()> {
        let api = self.api;
        let value_device = |v: *const OrtValue| api.ep.Value_GetMemoryDevice.map_or(ptr::null(), |f| f(v));
        let (Some(from), Some(to)) = (self.place(value_device(src)), self.place(value_device(dst))) else {
            return Err(Error::Gpu("a tensor to copy is in memory quilt does not know".into()));
        };
        let gpu = Self::copier(from, to).ok_or_else(|| Error::Gpu("a CPU-to-CPU copy was asked of quilt".into()))?;
        let (mut src_bytes, mut dst_bytes) = (0usize, 0usize);
        ort_call!(api, GetTensorSizeInBytes(src, &mut src_bytes))?;
        ort_call!(api, GetTensorSizeInBytes(dst, &mut dst_bytes))?;
        if src_bytes != dst_bytes {
            return Err(Error::Gpu(format!("copying {src_bytes} bytes into a tensor of {dst_bytes} bytes")));
        }
        if src_bytes == 0 {
            return Ok(());
        }
        let mut s: *const c_void = ptr::null();
        let mut d: *mut c_void = ptr::null_mut();
        ort_call!(api, GetTensorData(src, &mut s))?;
        ort_call!(api, GetTensorMutableData(dst, &mut d))?;
        if s.is_null() || d.is_null() {
            return Err(Error::Gpu("ORT returned no data pointer for a tensor to copy".into()));
        }
        let device = gpu.device()?;
        // SAFETY: both ranges are live tensors of `src_bytes` bytes; with a stream, ORT keeps
        // them alive until that stream has passed the copy.
        device.copy_any(d as u64, s as u64, src_bytes, cuda_stream_of(api, stream))?;
        Ok(())
    }
}

unsafe fn transfer<'a>(this: *const OrtDataTransferImpl) -> &'a DataTransfer {
    &*(this as *const DataTransfer)
}

unsafe extern "C" fn release(this: *mut OrtDataTransferImpl) {
    if !this.is_null() {
        guard::value("OrtDataTransferImpl::Release", (), || drop(Box::from_raw(this as *mut DataTransfer)));
    }
}

unsafe extern "C" fn can_copy(this: *const OrtDataTransferImpl, src: *const OrtMemoryDevice, dst: *const OrtMemoryDevice) -> bool {
    guard::value("OrtDataTransferImpl::CanCopy", false, || {
        let t = transfer(this);
        match (t.place(src), t.place(dst)) {
            (Some(a), Some(b)) => DataTransfer::copier(a, b).is_some(),
            _ => false,
        }
    })
}

unsafe extern "C" fn copy_tensors(
    this: *mut OrtDataTransferImpl,
    src: *const *const OrtValue,
    dst: *mut *mut OrtValue,
    streams: *mut *mut OrtSyncStream,
    num_tensors: usize,
) -> OrtStatusPtr {
    let t = transfer(this);
    guard::status(t.api, "OrtDataTransferImpl::CopyTensors", || {
        if num_tensors > 0 && (src.is_null() || dst.is_null()) {
            return Err(Error::Gpu("CopyTensors: no tensors".into()));
        }
        for i in 0..num_tensors {
            let stream = if streams.is_null() { ptr::null_mut() } else { *streams.add(i) };
            t.copy_one(*src.add(i), *dst.add(i), stream).map_err(|e| Error::Gpu(format!("copy {i} of {num_tensors}: {e}")))?;
        }
        Ok(())
    })
}
