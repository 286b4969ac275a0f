//! The ORT function tables quilt calls through. Every ORT function comes from the `OrtApiBase`
//! handed to `CreateEpFactories`; the library links no libonnxruntime.

use std::ffi::{c_char, CStr, CString};
use std::ptr;

use ort_sys::{OrtApi, OrtApiBase, OrtErrorCode, OrtStatus, OrtStatusPtr};

use crate::abi::{OrtEpApi, ORT_VERSION_SUPPORTED};
use crate::error::{Error, Result};

/// `OrtApi` (requested at version 29, so ORT 1.29–1.31 all work) plus its `OrtEpApi`.
///
/// quilt only touches `OrtApi` members that exist in API 29; the ort-sys struct declares later
/// ones too, which are never read.
#[derive(Clone, Copy)]
pub struct Api {
    pub ort: &'static OrtApi,
    pub ep: &'static OrtEpApi,
}

// The tables are immutable statics inside ORT.
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

/// Calls an `OrtApi` member and turns its status into a `Result`, naming the call on failure:
/// `ort_call!(api, GetDimensionsCount(info, &mut n))?`.
#[macro_export]
macro_rules! ort_call {
    ($api:expr, $f:ident ( $($arg:expr),* $(,)? )) => {{
        let api: $crate::api::Api = $api;
        #[allow(unused_unsafe)]
        let status = unsafe { (api.ort.$f)($($arg),*) };
        api.check(stringify!($f), status)
    }};
}

impl Api {
    /// Gets API version 29 from `base`. On failure the `Err` carries a status already made with
    /// the oldest API table (every ORT has `GetApi(1)`), ready to return to ORT.
    ///
    /// # Safety
    /// `base` must be the pointer ORT passed to `CreateEpFactories` (or NULL).
    pub unsafe fn from_base(base: *const OrtApiBase) -> std::result::Result<Api, OrtStatusPtr> {
        if base.is_null() {
            // Without an API table no status can be made; the caller reports zero factories.
            return Err(OrtStatusPtr(ptr::null_mut::<OrtStatus>()));
        }
        let base = &*base;
        let api = (base.GetApi)(ORT_VERSION_SUPPORTED);
        if api.is_null() {
            let version = CStr::from_ptr((base.GetVersionString)()).to_string_lossy().into_owned();
            let msg = format!(
                "quilt needs ONNX Runtime API {ORT_VERSION_SUPPORTED} (ONNX Runtime 1.{ORT_VERSION_SUPPORTED} or newer); \
                 this ONNX Runtime is {version}"
            );
            let old = (base.GetApi)(1);
            if old.is_null() {
                return Err(OrtStatusPtr(ptr::null_mut()));
            }
            let c = CString::new(msg).unwrap_or_default();
            return Err(((*old).CreateStatus)(OrtErrorCode::ORT_NOT_IMPLEMENTED, c.as_ptr()));
        }
        let ort: &'static OrtApi = &*api;
        let ep = (ort.GetEpApi)() as *const OrtEpApi;
        if ep.is_null() {
            let c = c"ONNX Runtime returned no OrtEpApi";
            return Err((ort.CreateStatus)(OrtErrorCode::ORT_EP_FAIL, c.as_ptr()));
        }
        Ok(Api { ort, ep: &*ep })
    }

    /// Turns a status returned by ORT into a `Result` and releases it.
    pub fn check(self, call: &'static str, status: OrtStatusPtr) -> Result<()> {
        if status.0.is_null() {
            return Ok(());
        }
        let msg = unsafe {
            let m = (self.ort.GetErrorMessage)(status.0);
            let s = if m.is_null() { String::from("(no message)") } else { CStr::from_ptr(m).to_string_lossy().into_owned() };
            (self.ort.ReleaseStatus)(status.0);
            s
        };
        Err(Error::Ort { call, msg })
    }

    /// Discards a status ORT returned (used where a failure is expected, e.g. size probes).
    pub fn release(self, status: OrtStatusPtr) {
        if !status.0.is_null() {
            unsafe { (self.ort.ReleaseStatus)(status.0) }
        }
    }

    /// A new status for ORT to own.
    pub fn status(self, code: OrtErrorCode, msg: &str) -> OrtStatusPtr {
        // Interior NULs would truncate the message; replace them.
        let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
        unsafe { (self.ort.CreateStatus)(code, c.as_ptr()) }
    }

    pub fn error_status(self, e: &Error) -> OrtStatusPtr {
        self.status(e.code(), &format!("[QuiltExecutionProvider] {e}"))
    }
}

/// A C string ORT owns, as an owned Rust string ("" for NULL).
///
/// # Safety
/// `p` must be NULL or a valid NUL-terminated string.
pub unsafe fn string_from(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}
