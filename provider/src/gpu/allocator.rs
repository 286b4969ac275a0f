//! The `OrtAllocator`s behind quilt's two memory infos: device memory (`cuMemAlloc`) and pinned
//! host memory (`cuMemHostAlloc`). ORT uses the device one for every tensor on quilt's device
//! (fused-node inputs and outputs, IO-bound OrtValues); pooling is left to a later arena.
//!
//! `cuMemAlloc`/`cuMemFree` are outside stream order: `cuMemFree` waits for the device, so a
//! block is never reused while a queued kernel still reads it.

use std::ffi::c_void;
use std::ptr;
use std::sync::Arc;

use ort_sys::{OrtAllocator, OrtMemoryInfo};
use quilt_kernels::cuda::CudaDevice;

use super::MemoryKind;
use crate::abi::ORT_VERSION_SUPPORTED;
use crate::guard;

/// `OrtAllocator` first, so ORT's `this` pointer casts back.
#[repr(C)]
pub struct Allocator {
    base: OrtAllocator,
    kind: MemoryKind,
    device: Arc<CudaDevice>,
    /// The memory info registered on the OrtEpDevice (owned by the factory's `Gpus`).
    info: *const OrtMemoryInfo,
}

impl Allocator {
    /// A new allocator for ORT to own; freed by [`Allocator::release_raw`].
    pub fn new_raw(kind: MemoryKind, device: Arc<CudaDevice>, info: *const OrtMemoryInfo) -> *mut OrtAllocator {
        // SAFETY: `default` only fills in NULL members and the version.
        let mut base = unsafe { OrtAllocator::default() };
        base.version = ORT_VERSION_SUPPORTED;
        base.Alloc = Some(alloc);
        base.Free = Some(free);
        base.Info = Some(info_of);
        base.Reserve = Some(reserve);
        // GetStats, AllocOnStream and Shrink stay NULL: ORT then treats it as a plain device
        // allocator (no arena wrapper, no stream-ordered allocation).
        Box::into_raw(Box::new(Allocator { base, kind, device, info })) as *mut OrtAllocator
    }

    /// # Safety
    /// `a` must come from [`Allocator::new_raw`] and not be used afterwards.
    pub unsafe fn release_raw(a: *mut OrtAllocator) {
        if !a.is_null() {
            drop(Box::from_raw(a as *mut Allocator));
        }
    }

    fn allocate(&self, bytes: usize) -> *mut c_void {
        let result = match self.kind {
            MemoryKind::Device => self.device.malloc_raw(bytes).map(|p| p as *mut c_void),
            MemoryKind::Pinned => self.device.malloc_pinned(bytes),
        };
        result.unwrap_or_else(|e| {
            // ORT reports a NULL block as an allocation failure; say why here.
            eprintln!("[QuiltExecutionProvider] allocating {bytes} bytes of {:?} memory: {e}", self.kind);
            ptr::null_mut()
        })
    }
}

unsafe fn allocator<'a>(this: *const OrtAllocator) -> &'a Allocator {
    &*(this as *const Allocator)
}

unsafe extern "system" fn alloc(this: *mut OrtAllocator, size: usize) -> *mut c_void {
    guard::value("OrtAllocator::Alloc", ptr::null_mut(), || allocator(this).allocate(size))
}

unsafe extern "system" fn reserve(this: *const OrtAllocator, size: usize) -> *mut c_void {
    guard::value("OrtAllocator::Reserve", ptr::null_mut(), || allocator(this).allocate(size))
}

unsafe extern "system" fn free(this: *mut OrtAllocator, p: *mut c_void) {
    if p.is_null() {
        return;
    }
    guard::value("OrtAllocator::Free", (), || {
        let a = allocator(this);
        let r = match a.kind {
            MemoryKind::Device => a.device.free_raw(p as u64),
            MemoryKind::Pinned => a.device.free_pinned(p),
        };
        if let Err(e) = r {
            eprintln!("[QuiltExecutionProvider] freeing {:?} memory: {e}", a.kind);
        }
    })
}

unsafe extern "system" fn info_of(this: *const OrtAllocator) -> *const OrtMemoryInfo {
    allocator(this).info
}
