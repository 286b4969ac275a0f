//! The `OrtEpFactory`: names the EP, offers devices, and creates one `QuiltEp` per session.
//!
//! Today the only device is the *reference device*: ORT's CPU `OrtHardwareDevice`, running the CPU
//! interpreter with I/O in CPU memory (so no allocator, data transfer or stream is registered).
//! It is offered only if `QUILT_REFERENCE_DEVICE=1` when the library is registered, so ORT's
//! automatic device policies never prefer quilt over ORT's own CPU EP.

use std::ffi::{c_char, CStr};
use std::ptr;

use ort_sys::{
    OrtApiBase, OrtEpDevice, OrtHardwareDevice, OrtKeyValuePairs, OrtLogger, OrtSessionOptions, OrtStatusPtr,
};

use crate::abi::{OrtDataTransferImpl, OrtEp, OrtEpFactory, ORT_HARDWARE_DEVICE_TYPE_CPU, ORT_VERSION_SUPPORTED};
use crate::api::{string_from, Api};
use crate::ep::QuiltEp;
use crate::error::{Error, Result};
use crate::guard;
use crate::log::{Log, LogLevel};
use crate::options::Options;
use crate::ort_call;

pub const EP_NAME: &CStr = c"QuiltExecutionProvider";
pub const VENDOR: &CStr = c"quilt";
/// ORT parses this as SemVer when it creates an OrtEpDevice.
pub const VERSION: &CStr = match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
    Ok(s) => s,
    Err(_) => panic!("package version contains a NUL"),
};
/// The environment variable that turns the reference device on (value `1`).
pub const REFERENCE_DEVICE_ENV: &str = "QUILT_REFERENCE_DEVICE";

/// `OrtEpFactory` first, so ORT's `this` pointer casts back to `Factory`.
#[repr(C)]
pub struct Factory {
    base: OrtEpFactory,
    api: Api,
    log: Log,
}

impl Factory {
    fn new(api: Api, default_logger: *const OrtLogger) -> Box<Factory> {
        Box::new(Factory {
            base: OrtEpFactory {
                ort_version_supported: ORT_VERSION_SUPPORTED,
                GetName: Some(get_name),
                GetVendor: Some(get_vendor),
                GetSupportedDevices: Some(get_supported_devices),
                CreateEp: Some(create_ep),
                ReleaseEp: Some(release_ep),
                GetVendorId: Some(get_vendor_id),
                GetVersion: Some(get_version),
                ValidateCompiledModelCompatibilityInfo: None,
                CreateAllocator: None,
                ReleaseAllocator: None,
                // ORT 1.31 calls these two at registration without a NULL check (a NULL member
                // crashed it); the reference device needs neither, so they say "none".
                CreateDataTransfer: Some(create_data_transfer),
                IsStreamAware: Some(is_stream_aware),
                CreateSyncStreamForDevice: None,
                GetHardwareDeviceIncompatibilityDetails: None,
                CreateExternalResourceImporterForDevice: None,
                GetNumCustomOpDomains: None,
                GetCustomOpDomains: None,
                InitGraphicsInterop: None,
                DeinitGraphicsInterop: None,
                SelectBestModelCandidate: None,
            },
            api,
            log: Log::new(api, default_logger, LogLevel::Warning),
        })
    }
}

/// `CreateEpFactories`: one factory per call.
///
/// # Safety
/// Arguments as ORT passes them (`factories` has `max_factories` slots).
pub unsafe fn create_ep_factories(
    _registration_name: *const c_char,
    api_base: *const OrtApiBase,
    default_logger: *const OrtLogger,
    factories: *mut *mut OrtEpFactory,
    max_factories: usize,
    num_factories: *mut usize,
) -> OrtStatusPtr {
    if !num_factories.is_null() {
        *num_factories = 0;
    }
    guard::install_panic_hook();
    let api = match Api::from_base(api_base) {
        Ok(api) => api,
        Err(status) => return status,
    };
    guard::status(api, "CreateEpFactories", || {
        if factories.is_null() || num_factories.is_null() || max_factories < 1 {
            return Err(Error::Graph("CreateEpFactories: no room for a factory".into()));
        }
        *factories = Box::into_raw(Factory::new(api, default_logger)) as *mut OrtEpFactory;
        *num_factories = 1;
        Ok(())
    })
}

/// `ReleaseEpFactory`.
///
/// # Safety
/// `factory` must come from [`create_ep_factories`] and not be used afterwards.
pub unsafe fn release_ep_factory(factory: *mut OrtEpFactory) -> OrtStatusPtr {
    if !factory.is_null() {
        guard::value("ReleaseEpFactory", (), || drop(Box::from_raw(factory as *mut Factory)));
    }
    OrtStatusPtr(ptr::null_mut())
}

unsafe fn factory<'a>(this: *const OrtEpFactory) -> &'a Factory {
    &*(this as *const Factory)
}

unsafe extern "C" fn get_name(_this: *const OrtEpFactory) -> *const c_char {
    EP_NAME.as_ptr()
}

unsafe extern "C" fn get_vendor(_this: *const OrtEpFactory) -> *const c_char {
    VENDOR.as_ptr()
}

unsafe extern "C" fn get_vendor_id(_this: *const OrtEpFactory) -> u32 {
    0
}

unsafe extern "C" fn get_version(_this: *const OrtEpFactory) -> *const c_char {
    VERSION.as_ptr()
}

/// No data transfer: the reference device keeps all I/O in CPU memory.
unsafe extern "C" fn create_data_transfer(_this: *mut OrtEpFactory, out: *mut *mut OrtDataTransferImpl) -> OrtStatusPtr {
    if !out.is_null() {
        *out = ptr::null_mut();
    }
    OrtStatusPtr(ptr::null_mut())
}

/// No streams: the CPU backend runs synchronously.
unsafe extern "C" fn is_stream_aware(_this: *const OrtEpFactory) -> bool {
    false
}

fn reference_device_requested() -> bool {
    std::env::var(REFERENCE_DEVICE_ENV).is_ok_and(|v| v == "1")
}

/// `HardwareDevice_Type`, read as an integer: ORT may add device types the Rust enum lacks.
unsafe fn hardware_device_type(api: Api, device: *const OrtHardwareDevice) -> i32 {
    type RawTypeFn = unsafe extern "C" fn(*const OrtHardwareDevice) -> i32;
    let f: RawTypeFn = std::mem::transmute(api.ort.HardwareDevice_Type);
    f(device)
}

unsafe extern "C" fn get_supported_devices(
    this: *mut OrtEpFactory,
    devices: *const *const OrtHardwareDevice,
    num_devices: usize,
    ep_devices: *mut *mut OrtEpDevice,
    max_ep_devices: usize,
    num_ep_devices: *mut usize,
) -> OrtStatusPtr {
    let f = factory(this);
    let api = f.api;
    guard::status(api, "GetSupportedDevices", || {
        *num_ep_devices = 0;
        if !reference_device_requested() {
            f.log.info(&format!("no device offered ({REFERENCE_DEVICE_ENV}=1 enables the CPU reference device)"));
            return Ok(());
        }
        let devices = if devices.is_null() { &[][..] } else { std::slice::from_raw_parts(devices, num_devices) };
        let Some(&cpu) = devices.iter().find(|&&d| hardware_device_type(api, d) == ORT_HARDWARE_DEVICE_TYPE_CPU) else {
            f.log.warning("the reference device was requested, but ONNX Runtime reported no CPU device");
            return Ok(());
        };
        if max_ep_devices < 1 || ep_devices.is_null() {
            return Err(Error::Graph("GetSupportedDevices: no room for a device".into()));
        }
        let ep_device = create_reference_ep_device(api, this, cpu)?;
        *ep_devices = ep_device;
        *num_ep_devices = 1;
        f.log.info("offering the CPU reference device");
        Ok(())
    })
}

unsafe fn create_reference_ep_device(
    api: Api,
    factory: *mut OrtEpFactory,
    cpu: *const OrtHardwareDevice,
) -> Result<*mut OrtEpDevice> {
    let create = api.ep.CreateEpDevice.ok_or_else(|| Error::Graph("OrtEpApi has no CreateEpDevice".into()))?;
    let mut metadata: *mut OrtKeyValuePairs = ptr::null_mut();
    let mut options: *mut OrtKeyValuePairs = ptr::null_mut();
    (api.ort.CreateKeyValuePairs)(&mut metadata);
    (api.ort.CreateKeyValuePairs)(&mut options);
    (api.ort.AddKeyValuePair)(metadata, c"quilt.backend".as_ptr(), c"cpu-reference".as_ptr());
    let mut device: *mut OrtEpDevice = ptr::null_mut();
    let status = create(factory, cpu, metadata, options, &mut device);
    // ORT copies both maps.
    (api.ort.ReleaseKeyValuePairs)(metadata);
    (api.ort.ReleaseKeyValuePairs)(options);
    api.check("CreateEpDevice", status)?;
    Ok(device)
}

/// All session config entries as owned strings.
unsafe fn session_config_entries(api: Api, session_options: *const OrtSessionOptions) -> Result<Vec<(String, String)>> {
    let mut kvp: *mut OrtKeyValuePairs = ptr::null_mut();
    ort_call!(api, GetSessionOptionsConfigEntries(session_options, &mut kvp))?;
    if kvp.is_null() {
        return Ok(Vec::new());
    }
    let mut keys: *const *const c_char = ptr::null();
    let mut values: *const *const c_char = ptr::null();
    let mut n = 0usize;
    (api.ort.GetKeyValuePairs)(kvp, &mut keys, &mut values, &mut n);
    let mut entries = Vec::with_capacity(n);
    for i in 0..n {
        entries.push((string_from(*keys.add(i)), string_from(*values.add(i))));
    }
    (api.ort.ReleaseKeyValuePairs)(kvp);
    Ok(entries)
}

unsafe extern "C" fn create_ep(
    this: *mut OrtEpFactory,
    _devices: *const *const OrtHardwareDevice,
    _ep_metadata_pairs: *const *const OrtKeyValuePairs,
    _num_devices: usize,
    session_options: *const OrtSessionOptions,
    logger: *const OrtLogger,
    ep: *mut *mut OrtEp,
) -> OrtStatusPtr {
    let f = factory(this);
    let api = f.api;
    guard::status(api, "CreateEp", || {
        *ep = ptr::null_mut();
        let entries = session_config_entries(api, session_options)?;
        let options = Options::from_config(entries.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
        let log = Log::new(api, if logger.is_null() { f.log_ptr() } else { logger }, options.log_level);
        log.verbose(|| format!("CreateEp with {options:?}"));
        *ep = QuiltEp::new_raw(api, options, log);
        Ok(())
    })
}

unsafe extern "C" fn release_ep(_this: *mut OrtEpFactory, ep: *mut OrtEp) {
    if !ep.is_null() {
        guard::value("ReleaseEp", (), || QuiltEp::release_raw(ep));
    }
}

impl Factory {
    fn log_ptr(&self) -> *const OrtLogger {
        self.log.logger()
    }
}
