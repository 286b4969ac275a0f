//! The `OrtEpFactory`: names the EP, offers devices, and creates one `QuiltEp` per session.
//!
//! Two kinds of device:
//! - a **GPU device** for each NVIDIA GPU that CUDA sees (`gpu`): bound to ORT's hardware device
//!   of the same PCI bus id (or, when ORT's discovery found no NVIDIA GPU, to one quilt creates),
//!   with device and pinned memory infos, allocators, a data transfer and CUDA streams. Where
//!   libcuda is absent none is offered and nothing else changes.
//! - the **reference device**: ORT's CPU `OrtHardwareDevice`, running the CPU interpreter with I/O
//!   in CPU memory. It is offered only if `QUILT_REFERENCE_DEVICE=1` when the library is
//!   registered, so ORT's automatic device policies never prefer it over ORT's own CPU EP.
//!
//! A session runs on the first quilt device it was given (the device ORT also takes its default
//! memory from); the `device_id` option picks another of the given GPU devices.

use std::ffi::{c_char, CStr, CString};
use std::ptr;
use std::sync::{Arc, OnceLock};

use ort_sys::{
    OrtAllocator, OrtApiBase, OrtEpDevice, OrtHardwareDevice, OrtKeyValuePairs, OrtLogger, OrtMemoryInfo,
    OrtSessionOptions, OrtStatusPtr,
};

use crate::abi::{
    OrtDataTransferImpl, OrtEp, OrtEpFactory, OrtMemoryDevice, OrtSyncStreamImpl, NVIDIA_VENDOR_ID,
    ORT_HARDWARE_DEVICE_TYPE_CPU, ORT_HARDWARE_DEVICE_TYPE_GPU, ORT_VERSION_SUPPORTED,
};
use crate::api::{string_from, Api};
use crate::ep::{Backend, QuiltEp};
use crate::error::{Error, Result};
use crate::gpu::allocator::Allocator;
use crate::gpu::data_transfer::DataTransfer;
use crate::gpu::discovery::{match_ordinals, pci_device_id, PCI_BUS_ID_KEY};
use crate::gpu::stream::Stream;
use crate::gpu::{Gpus, MemoryKind};
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

/// OrtEpDevice metadata: which backend a device runs (`cuda` or `cpu-reference`) and, for a GPU
/// device, its CUDA ordinal (the key ORT's own CUDA plugin EP uses).
pub const BACKEND_KEY: &CStr = c"quilt.backend";
pub const CUDA_DEVICE_ID_KEY: &CStr = c"cuda_device_id";

/// `OrtEpFactory` first, so ORT's `this` pointer casts back to `Factory`.
#[repr(C)]
pub struct Factory {
    base: OrtEpFactory,
    api: Api,
    log: Log,
    /// The GPUs offered, found at the first `GetSupportedDevices`.
    gpus: OnceLock<Arc<Gpus>>,
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
                CreateAllocator: Some(create_allocator),
                ReleaseAllocator: Some(release_allocator),
                // ORT 1.31 calls these two at registration without a NULL check (a NULL member
                // crashed it); without a GPU they say "none".
                CreateDataTransfer: Some(create_data_transfer),
                IsStreamAware: Some(is_stream_aware),
                CreateSyncStreamForDevice: Some(create_sync_stream_for_device),
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
            gpus: OnceLock::new(),
        })
    }

    /// The GPUs offered (none before `GetSupportedDevices` has run).
    fn gpus(&self) -> Option<&Arc<Gpus>> {
        self.gpus.get().filter(|g| !g.is_empty())
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

/// Copies to, from and between quilt's GPUs; none without a GPU (the reference device keeps all
/// I/O in CPU memory).
unsafe extern "C" fn create_data_transfer(this: *mut OrtEpFactory, out: *mut *mut OrtDataTransferImpl) -> OrtStatusPtr {
    let f = factory(this);
    guard::status(f.api, "CreateDataTransfer", || {
        if out.is_null() {
            return Err(Error::Gpu("CreateDataTransfer: no output pointer".into()));
        }
        *out = match f.gpus() {
            Some(gpus) => DataTransfer::new_raw(f.api, gpus.clone()),
            None => ptr::null_mut(),
        };
        Ok(())
    })
}

/// Streams exist only for GPU memory (ORT asks for none for the reference device's CPU I/O).
unsafe extern "C" fn is_stream_aware(this: *const OrtEpFactory) -> bool {
    guard::value("IsStreamAware", false, || factory(this).gpus().is_some())
}

unsafe extern "C" fn create_sync_stream_for_device(
    this: *mut OrtEpFactory,
    memory_device: *const OrtMemoryDevice,
    _stream_options: *const OrtKeyValuePairs,
    out: *mut *mut OrtSyncStreamImpl,
) -> OrtStatusPtr {
    let f = factory(this);
    guard::status(f.api, "CreateSyncStreamForDevice", || {
        if out.is_null() {
            return Err(Error::Gpu("CreateSyncStreamForDevice: no output pointer".into()));
        }
        *out = ptr::null_mut();
        let gpu = f
            .gpus()
            .and_then(|g| g.classify(memory_device))
            .map(|(gpu, _)| gpu)
            .ok_or_else(|| Error::Gpu("a stream was requested for memory that is not one of quilt's GPUs".into()))?;
        *out = Stream::new_raw(f.api, &gpu.device()?)?;
        Ok(())
    })
}

unsafe extern "C" fn create_allocator(
    this: *mut OrtEpFactory,
    memory_info: *const OrtMemoryInfo,
    _allocator_options: *const OrtKeyValuePairs,
    out: *mut *mut OrtAllocator,
) -> OrtStatusPtr {
    let f = factory(this);
    guard::status(f.api, "CreateAllocator", || {
        if out.is_null() {
            return Err(Error::Gpu("CreateAllocator: no output pointer".into()));
        }
        *out = ptr::null_mut();
        let memory_device = f.api.ep.MemoryInfo_GetMemoryDevice.map_or(ptr::null(), |g| g(memory_info));
        let (gpu, kind) = f
            .gpus()
            .and_then(|g| g.classify(memory_device))
            .ok_or_else(|| Error::Gpu("an allocator was requested for memory that is not one of quilt's GPUs".into()))?;
        *out = Allocator::new_raw(kind, gpu.device()?, gpu.memory_info(kind));
        Ok(())
    })
}

unsafe extern "C" fn release_allocator(_this: *mut OrtEpFactory, allocator: *mut OrtAllocator) {
    guard::value("ReleaseAllocator", (), || Allocator::release_raw(allocator))
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
        let devices = if devices.is_null() { &[][..] } else { std::slice::from_raw_parts(devices, num_devices) };
        let out = if ep_devices.is_null() { &mut [][..] } else { std::slice::from_raw_parts_mut(ep_devices, max_ep_devices) };
        let mut offered = 0usize;

        // The reference device first: a session given every quilt device then keeps running on
        // it, as before GPU devices existed.
        if reference_device_requested() {
            match devices.iter().find(|&&d| hardware_device_type(api, d) == ORT_HARDWARE_DEVICE_TYPE_CPU) {
                None => f.log.warning("the reference device was requested, but ONNX Runtime reported no CPU device"),
                Some(&cpu) => {
                    let slot = out.get_mut(offered).ok_or_else(|| Error::Graph("GetSupportedDevices: no room for a device".into()))?;
                    *slot = create_ep_device(api, this, cpu, &[(BACKEND_KEY, c"cpu-reference".into())])?;
                    offered += 1;
                    f.log.info("offering the CPU reference device");
                }
            }
        } else {
            f.log.info(&format!("no reference device ({REFERENCE_DEVICE_ENV}=1 enables the CPU reference device)"));
        }

        for (hardware, ordinal) in gpu_hardware_devices(f, devices) {
            let Some(slot) = out.get_mut(offered) else {
                f.log.warning(&format!("ONNX Runtime has room for {max_ep_devices} devices; GPU {ordinal} is not offered"));
                break;
            };
            match create_gpu_ep_device(f, this, hardware, ordinal) {
                Ok(d) => {
                    *slot = d;
                    offered += 1;
                }
                // A GPU that cannot be offered must not take the reference device down with it.
                Err(e) => f.log.warning(&format!("GPU {ordinal} is not offered: {e}")),
            }
        }
        *num_ep_devices = offered;
        Ok(())
    })
}

/// The hardware device to bind each offered GPU to, with its CUDA ordinal. Discovers the GPUs
/// (once per factory) and, when ORT reported no NVIDIA GPU but CUDA sees some, creates hardware
/// devices for them.
unsafe fn gpu_hardware_devices(f: &Factory, devices: &[*const OrtHardwareDevice]) -> Vec<(*const OrtHardwareDevice, usize)> {
    let api = f.api;
    let gpus = f.gpus.get_or_init(|| {
        let found = quilt_kernels::cuda::list_gpus().map_err(Error::from).and_then(|infos| Gpus::new(api, infos));
        Arc::new(found.unwrap_or_else(|e| {
            f.log.warning(&format!("no GPU device: {e}"));
            Gpus::none(api)
        }))
    });
    if gpus.is_empty() {
        f.log.info("no GPU device (no NVIDIA driver or no GPU visible to CUDA)");
        return Vec::new();
    }
    let nvidia: Vec<*const OrtHardwareDevice> = devices
        .iter()
        .copied()
        .filter(|&d| hardware_device_type(api, d) == ORT_HARDWARE_DEVICE_TYPE_GPU && (api.ort.HardwareDevice_VendorId)(d) == NVIDIA_VENDOR_ID)
        .collect();
    let infos: Vec<_> = gpus.gpus.iter().map(|g| g.info.clone()).collect();
    if nvidia.is_empty() {
        f.log.info("ONNX Runtime reported no NVIDIA GPU; creating hardware devices for the GPUs CUDA sees");
        return infos.iter().filter_map(|g| match create_hardware_device(api, &g.pci_bus_id) {
            Ok(d) => {
                gpus.adopt_hardware_device(d);
                Some((d as *const OrtHardwareDevice, g.ordinal))
            }
            Err(e) => {
                f.log.warning(&format!("GPU {} is not offered: {e}", g.ordinal));
                None
            }
        }).collect();
    }
    let bus_ids: Vec<Option<String>> = nvidia.iter().map(|&d| metadata_value(api, d, PCI_BUS_ID_KEY)).collect();
    let ordinals = match_ordinals(&bus_ids, &infos);
    nvidia
        .iter()
        .zip(ordinals)
        .zip(&bus_ids)
        .filter_map(|((&d, ordinal), bus)| {
            if ordinal.is_none() {
                f.log.info(&format!("ORT's NVIDIA device at {} is not visible to CUDA; not offered", bus.as_deref().unwrap_or("an unknown bus id")));
            }
            ordinal.map(|o| (d, o))
        })
        .collect()
}

/// A metadata value of an ORT hardware device.
unsafe fn metadata_value(api: Api, device: *const OrtHardwareDevice, key: &str) -> Option<String> {
    let kvp = (api.ort.HardwareDevice_Metadata)(device);
    let key = CString::new(key).ok()?;
    if kvp.is_null() {
        return None;
    }
    let v = (api.ort.GetKeyValue)(kvp, key.as_ptr());
    (!v.is_null()).then(|| string_from(v))
}

/// A GPU hardware device for a GPU ORT's discovery missed (§5 of the research note): vendor
/// NVIDIA, the PCI product id from sysfs, and the bus id as ORT's discovery would record it.
unsafe fn create_hardware_device(api: Api, pci_bus_id: &str) -> Result<*mut OrtHardwareDevice> {
    let create = api.ep.CreateHardwareDevice.ok_or_else(|| Error::Gpu("OrtEpApi has no CreateHardwareDevice".into()))?;
    let bus = CString::new(pci_bus_id).map_err(|_| Error::Gpu(format!("PCI bus id {pci_bus_id:?}")))?;
    let mut metadata: *mut OrtKeyValuePairs = ptr::null_mut();
    (api.ort.CreateKeyValuePairs)(&mut metadata);
    (api.ort.AddKeyValuePair)(metadata, c"pci_bus_id".as_ptr(), bus.as_ptr());
    (api.ort.AddKeyValuePair)(metadata, c"Discrete".as_ptr(), c"1".as_ptr());
    let mut device: *mut OrtHardwareDevice = ptr::null_mut();
    let status = create(ORT_HARDWARE_DEVICE_TYPE_GPU, NVIDIA_VENDOR_ID, pci_device_id(pci_bus_id), c"NVIDIA".as_ptr(), metadata, &mut device);
    (api.ort.ReleaseKeyValuePairs)(metadata); // copied by ORT
    api.check("CreateHardwareDevice", status)?;
    if device.is_null() {
        return Err(Error::Gpu("CreateHardwareDevice returned no device".into()));
    }
    Ok(device)
}

/// The OrtEpDevice of GPU `ordinal`, with its device and pinned memory registered.
unsafe fn create_gpu_ep_device(
    f: &Factory,
    factory: *mut OrtEpFactory,
    hardware: *const OrtHardwareDevice,
    ordinal: usize,
) -> Result<*mut OrtEpDevice> {
    let api = f.api;
    let gpu = f.gpus().and_then(|g| g.by_ordinal(ordinal)).ok_or_else(|| Error::Gpu(format!("GPU {ordinal} was not discovered")))?;
    let ordinal_text = CString::new(ordinal.to_string()).unwrap_or_default();
    let name = CString::new(gpu.info.name.replace('\0', " ")).unwrap_or_default();
    let device = create_ep_device(
        api,
        factory,
        hardware,
        &[(BACKEND_KEY, c"cuda".into()), (CUDA_DEVICE_ID_KEY, ordinal_text), (c"quilt.gpu_name", name)],
    )?;
    let add = api.ep.EpDevice_AddAllocatorInfo.ok_or_else(|| Error::Gpu("OrtEpApi has no EpDevice_AddAllocatorInfo".into()))?;
    for kind in [MemoryKind::Device, MemoryKind::Pinned] {
        if let Err(e) = api.check("EpDevice_AddAllocatorInfo", add(device, gpu.memory_info(kind))) {
            if let Some(release) = api.ep.ReleaseEpDevice {
                release(device);
            }
            return Err(e);
        }
    }
    f.log.info(&format!("offering GPU {ordinal} ({}, PCI {})", gpu.info.name, gpu.info.pci_bus_id));
    Ok(device)
}

unsafe fn create_ep_device(
    api: Api,
    factory: *mut OrtEpFactory,
    hardware: *const OrtHardwareDevice,
    metadata_entries: &[(&CStr, CString)],
) -> Result<*mut OrtEpDevice> {
    let create = api.ep.CreateEpDevice.ok_or_else(|| Error::Graph("OrtEpApi has no CreateEpDevice".into()))?;
    let mut metadata: *mut OrtKeyValuePairs = ptr::null_mut();
    let mut options: *mut OrtKeyValuePairs = ptr::null_mut();
    (api.ort.CreateKeyValuePairs)(&mut metadata);
    (api.ort.CreateKeyValuePairs)(&mut options);
    for (k, v) in metadata_entries {
        (api.ort.AddKeyValuePair)(metadata, k.as_ptr(), v.as_ptr());
    }
    let mut device: *mut OrtEpDevice = ptr::null_mut();
    let status = create(factory, hardware, metadata, options, &mut device);
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
    ep_metadata_pairs: *const *const OrtKeyValuePairs,
    num_devices: usize,
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
        let metadata = if ep_metadata_pairs.is_null() || num_devices == 0 {
            &[][..]
        } else {
            std::slice::from_raw_parts(ep_metadata_pairs, num_devices)
        };
        let backend = choose_backend(f, metadata, &options)?;
        log.info(&format!("session runs on {}", backend.describe()));
        *ep = QuiltEp::new_raw(api, options, log, backend);
        Ok(())
    })
}

/// The backend of the session: the first quilt device it was given, or the GPU device the
/// `device_id` option names among those given.
unsafe fn choose_backend(f: &Factory, metadata: &[*const OrtKeyValuePairs], options: &Options) -> Result<Backend> {
    let api = f.api;
    let value = |kvp: *const OrtKeyValuePairs, key: &CStr| -> Option<String> {
        if kvp.is_null() {
            return None;
        }
        let v = (api.ort.GetKeyValue)(kvp, key.as_ptr());
        (!v.is_null()).then(|| string_from(v))
    };
    let ordinal_of = |kvp| -> Option<usize> {
        (value(kvp, BACKEND_KEY).as_deref() == Some("cuda")).then(|| value(kvp, CUDA_DEVICE_ID_KEY)?.parse().ok())?
    };
    let given: Vec<Option<usize>> = metadata.iter().map(|&m| ordinal_of(m)).collect();
    let ordinal = match options.device_id {
        Some(id) => {
            if !given.contains(&Some(id)) {
                let offered: Vec<String> = given.iter().flatten().map(|o| o.to_string()).collect();
                return Err(Error::Option {
                    key: format!("{}device_id", crate::options::PREFIX),
                    msg: format!(
                        "GPU {id} is not among the quilt devices given to this session (their device ids: {})",
                        if offered.is_empty() { "none".to_string() } else { offered.join(", ") }
                    ),
                });
            }
            Some(id)
        }
        None => given.first().copied().flatten(),
    };
    let Some(ordinal) = ordinal else { return Ok(Backend::Reference) };
    let gpu = f.gpus().and_then(|g| g.by_ordinal(ordinal)).ok_or_else(|| Error::Gpu(format!("GPU {ordinal} was not discovered")))?;
    let memory_device = api.ep.MemoryInfo_GetMemoryDevice.map_or(ptr::null(), |g| g(gpu.memory_info(MemoryKind::Device)));
    if memory_device.is_null() {
        return Err(Error::Gpu(format!("GPU {ordinal}: ORT returned no memory device for its memory info")));
    }
    Ok(Backend::Cuda { ordinal, device: gpu.device()?, memory_device })
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
