//! `libquilt_ep.so`: the shared library ONNX Runtime loads with `RegisterExecutionProviderLibrary`.
//! It exports exactly `CreateEpFactories` and `ReleaseEpFactory` (never `GetProvider`, which would
//! make ORT treat it as a provider-bridge library) and links no libonnxruntime: every ORT function
//! comes from the `OrtApiBase` ORT passes in. The work is in `quilt-provider`.

use std::ffi::c_char;

use ort_sys::{OrtApiBase, OrtLogger, OrtStatus};
use quilt_provider::abi::OrtEpFactory;

/// Creates quilt's EP factory (one) in `factories[0]`.
///
/// # Safety
/// Called by ONNX Runtime with the arguments its plugin-EP ABI specifies.
#[no_mangle]
pub unsafe extern "C" fn CreateEpFactories(
    registration_name: *const c_char,
    ort_api_base: *const OrtApiBase,
    default_logger: *const OrtLogger,
    factories: *mut *mut OrtEpFactory,
    max_factories: usize,
    num_factories: *mut usize,
) -> *mut OrtStatus {
    quilt_provider::create_ep_factories(registration_name, ort_api_base, default_logger, factories, max_factories, num_factories).0
}

/// Frees a factory made by `CreateEpFactories`.
///
/// # Safety
/// `factory` must come from `CreateEpFactories` and not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn ReleaseEpFactory(factory: *mut OrtEpFactory) -> *mut OrtStatus {
    quilt_provider::release_ep_factory(factory).0
}
