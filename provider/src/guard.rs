//! Panic barriers for the `extern "C"` entry points: no panic may unwind into ORT.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::Once;

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

/// Replaces the default panic report (a full backtrace when RUST_BACKTRACE is set) with one
/// line: the panic is also reported through the returned status. The hook belongs to this
/// library's own Rust runtime, so the host process is unaffected.
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
            eprintln!("[QuiltExecutionProvider] internal error (panic){place}: {}", panic_message(info.payload()));
        }))
    });
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

/// Runs `f`, turning a panic into `Error::Panic` (for callers that handle errors themselves).
pub fn result<T>(place: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| Err(Error::Panic { place, msg: panic_message(p.as_ref()) }))
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
