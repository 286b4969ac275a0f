//! Panic barriers for the `extern "C"` entry points: no panic may unwind into ORT.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use ort_sys::OrtStatusPtr;

use crate::api::Api;
use crate::error::{Error, Result};

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Runs `f` for an entry point that returns `OrtStatus*`: `Ok` → NULL, `Err` → a status naming
/// the error, panic → an `ORT_EP_FAIL` status naming `place`.
pub fn status(api: Api, place: &'static str, f: impl FnOnce() -> Result<()>) -> OrtStatusPtr {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => OrtStatusPtr(ptr::null_mut()),
        Ok(Err(e)) => api.error_status(&e),
        Err(p) => api.error_status(&Error::Panic { place, msg: panic_message(p.as_ref()) }),
    }
}

/// Runs `f` for an entry point that returns a plain value; a panic yields `fallback` and is
/// reported on stderr (there is nowhere else to report it).
pub fn value<T>(place: &'static str, fallback: T, f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(p) => {
            eprintln!("[QuiltExecutionProvider] internal error (panic) in {place}: {}", panic_message(p.as_ref()));
            fallback
        }
    }
}
