//! ORT's streams on quilt's GPU: an `OrtSyncStreamImpl` owning a real `CUstream`, and
//! notifications that are CUDA events recorded on it.
//!
//! ORT creates one stream per session and device, hands its handle to Compute
//! (`KernelContext_GetGPUComputeStream`) and to the data transfer, and orders work between
//! streams with notifications: `Activate` records the event on the producing stream,
//! `WaitOnDevice` makes a consuming stream wait for it (without blocking the host) and
//! `WaitOnHost` blocks until it has passed. At the end of a run the stream is drained, so device
//! outputs are complete when `Run` returns.

use std::ffi::c_void;
use std::ptr;
use std::sync::Arc;

use ort_sys::{OrtStatusPtr, OrtSyncStream};
use quilt_kernels::cuda::{CUstream, CudaDevice, Event, RawStream};

use crate::abi::{OrtSyncNotificationImpl, OrtSyncStreamImpl, ORT_VERSION_SUPPORTED};
use crate::api::Api;
use crate::error::{Error, Result};
use crate::guard;

/// `OrtSyncStreamImpl` first, so ORT's `this` pointer casts back.
#[repr(C)]
pub struct Stream {
    base: OrtSyncStreamImpl,
    api: Api,
    stream: RawStream,
}

impl Stream {
    /// A new stream on `device` for ORT to own (ORT calls `Release`).
    pub fn new_raw(api: Api, device: &Arc<CudaDevice>) -> Result<*mut OrtSyncStreamImpl> {
        let stream = device.new_raw_stream()?;
        let s = Box::new(Stream {
            base: OrtSyncStreamImpl {
                ort_version_supported: ORT_VERSION_SUPPORTED,
                Release: Some(release_stream),
                GetHandle: Some(get_handle),
                CreateNotification: Some(create_notification),
                Flush: Some(flush),
                OnSessionRunEnd: Some(on_session_run_end),
            },
            api,
            stream,
        });
        Ok(Box::into_raw(s) as *mut OrtSyncStreamImpl)
    }
}

/// The `CUstream` behind an ORT stream, if the stream is one of quilt's (another EP's stream
/// handle would mean nothing to CUDA).
///
/// # Safety
/// `stream` must be NULL or a live `OrtSyncStream`.
pub unsafe fn cuda_stream_of(api: Api, stream: *mut OrtSyncStream) -> Option<CUstream> {
    if stream.is_null() {
        return None;
    }
    let imp = (api.ep.SyncStream_GetImpl?)(stream);
    if imp.is_null() {
        return None;
    }
    let ours: unsafe extern "C" fn(*mut OrtSyncStreamImpl) = release_stream;
    if !(*imp).Release.is_some_and(|f| std::ptr::fn_addr_eq(f, ours)) {
        return None;
    }
    Some((*(imp as *const Stream)).stream.raw())
}

unsafe fn this_stream<'a>(this: *mut OrtSyncStreamImpl) -> &'a Stream {
    &*(this as *const Stream)
}

unsafe extern "C" fn release_stream(this: *mut OrtSyncStreamImpl) {
    if !this.is_null() {
        guard::value("OrtSyncStreamImpl::Release", (), || drop(Box::from_raw(this as *mut Stream)));
    }
}

unsafe extern "C" fn get_handle(this: *mut OrtSyncStreamImpl) -> *mut c_void {
    this_stream(this).stream.raw() as *mut c_void
}

unsafe extern "C" fn create_notification(this: *mut OrtSyncStreamImpl, out: *mut *mut OrtSyncNotificationImpl) -> OrtStatusPtr {
    let s = this_stream(this);
    guard::status(s.api, "OrtSyncStreamImpl::CreateNotification", || {
        if out.is_null() {
            return Err(Error::Gpu("CreateNotification: no output pointer".into()));
        }
        *out = ptr::null_mut();
        let device = s.stream.device().clone();
        let event = device.event()?;
        let n = Box::new(Notification {
            base: OrtSyncNotificationImpl {
                ort_version_supported: ORT_VERSION_SUPPORTED,
                Release: Some(release_notification),
                Activate: Some(activate),
                WaitOnDevice: Some(wait_on_device),
                WaitOnHost: Some(wait_on_host),
            },
            api: s.api,
            device,
            producer: s.stream.raw(),
            event,
        });
        *out = Box::into_raw(n) as *mut OrtSyncNotificationImpl;
        Ok(())
    })
}

/// Work is submitted as it is queued; nothing to flush.
unsafe extern "C" fn flush(_this: *mut OrtSyncStreamImpl) -> OrtStatusPtr {
    OrtStatusPtr(ptr::null_mut())
}

unsafe extern "C" fn on_session_run_end(this: *mut OrtSyncStreamImpl) -> OrtStatusPtr {
    let s = this_stream(this);
    guard::status(s.api, "OrtSyncStreamImpl::OnSessionRunEnd", || Ok(s.stream.synchronize()?))
}

/// `OrtSyncNotificationImpl` first, so ORT's `this` pointer casts back.
#[repr(C)]
pub struct Notification {
    base: OrtSyncNotificationImpl,
    api: Api,
    device: Arc<CudaDevice>,
    /// The stream whose work this notification marks.
    producer: CUstream,
    event: Event,
}

// The CUstream handle is usable from any thread once the context is bound.
unsafe impl Send for Notification {}
unsafe impl Sync for Notification {}

unsafe fn notification<'a>(this: *mut OrtSyncNotificationImpl) -> &'a Notification {
    &*(this as *const Notification)
}

unsafe extern "C" fn release_notification(this: *mut OrtSyncNotificationImpl) {
    if !this.is_null() {
        guard::value("OrtSyncNotificationImpl::Release", (), || drop(Box::from_raw(this as *mut Notification)));
    }
}

unsafe extern "C" fn activate(this: *mut OrtSyncNotificationImpl) -> OrtStatusPtr {
    let n = notification(this);
    guard::status(n.api, "OrtSyncNotificationImpl::Activate", || {
        n.device.bind()?;
        Ok(n.event.record(n.producer)?)
    })
}

unsafe extern "C" fn wait_on_device(this: *mut OrtSyncNotificationImpl, consumer: *mut OrtSyncStream) -> OrtStatusPtr {
    let n = notification(this);
    guard::status(n.api, "OrtSyncNotificationImpl::WaitOnDevice", || {
        n.device.bind()?;
        match cuda_stream_of(n.api, consumer) {
            Some(s) => Ok(n.event.make_wait(s)?),
            // Not a CUDA stream quilt knows: the only safe wait is on the host.
            None => Ok(n.event.synchronize()?),
        }
    })
}

unsafe extern "C" fn wait_on_host(this: *mut OrtSyncNotificationImpl) -> OrtStatusPtr {
    let n = notification(this);
    guard::status(n.api, "OrtSyncNotificationImpl::WaitOnHost", || {
        n.device.bind()?;
        Ok(n.event.synchronize()?)
    })
}
