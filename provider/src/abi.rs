//! The plugin-EP structs that `ort-sys` does not define (or defines as opaque), transcribed from
//! the ORT 1.29 `onnxruntime_ep_c_api.h` layout (see `shared/docs/research/ort-plugin-ep.md` §2).
//!
//! Every struct quilt fills in sets `ort_version_supported = 29` ([`ORT_VERSION_SUPPORTED`]);
//! ORT gates every member added after 1.23 on that number, so it never reads past what is
//! declared here. C enums are passed as `i32`/`u32`, never as Rust enums. Unused members are `None`.

#![allow(non_snake_case)] // Member names follow the C header.

use std::ffi::{c_char, c_int, c_void};
use std::mem::size_of;

use ort_sys::{
    OrtAllocator, OrtEpDevice, OrtHardwareDevice, OrtKernelContext, OrtKeyValuePairs, OrtLogger, OrtMemoryInfo,
    OrtNode, OrtRunOptions, OrtSessionOptions, OrtStatusPtr, OrtSyncStream, OrtValue,
};

/// The ABI version quilt implements (and the `GetApi` version it asks for).
pub const ORT_VERSION_SUPPORTED: u32 = 29;

macro_rules! opaque {
    ($($name:ident),* $(,)?) => {$(
        #[repr(C)]
        pub struct $name {
            _unused: [u8; 0],
        }
    )*};
}

// Types only ever seen behind pointers.
opaque!(
    OrtEpGraphSupportInfo,
    OrtNodeComputeContext,
    OrtMemoryDevice,
    OrtDeviceEpIncompatibilityDetails,
    OrtExternalResourceImporterImpl,
    OrtCustomOpDomain,
    OrtGraphicsInteropConfig,
    OrtKernelRegistry,
    OrtEpProfilerImpl,
    OrtResourceCount,
);

/// `OrtEpDataLayout`.
pub const ORT_EP_DATA_LAYOUT_NCHW: i32 = 0;

/// `OrtHardwareDeviceType`.
pub const ORT_HARDWARE_DEVICE_TYPE_CPU: i32 = 0;
pub const ORT_HARDWARE_DEVICE_TYPE_GPU: i32 = 1;

/// `OrtMemoryInfoDeviceType` (what `MemoryDevice_GetDeviceType` returns).
pub const ORT_MEMORY_DEVICE_TYPE_CPU: i32 = 0;
pub const ORT_MEMORY_DEVICE_TYPE_GPU: i32 = 1;

/// `OrtDeviceMemoryType`.
pub const ORT_DEVICE_MEMORY_TYPE_DEFAULT: i32 = 0;
pub const ORT_DEVICE_MEMORY_TYPE_HOST_ACCESSIBLE: i32 = 5;

/// The PCI vendor id of NVIDIA, which ORT's device discovery and memory infos use.
pub const NVIDIA_VENDOR_ID: u32 = 0x10DE;

/// `OrtAllocator` as ort-sys declares it with API 31 (version, Alloc, Free, Info, Reserve,
/// GetStats, AllocOnStream, Shrink): the layout ORT 1.25+ reads.
const _: () = assert!(size_of::<OrtAllocator>() == 64);

/// How ORT copies tensors between devices (`OrtDataTransferImpl`, since 1.23).
#[repr(C)]
pub struct OrtDataTransferImpl {
    pub ort_version_supported: u32,
    pub Release: Option<unsafe extern "C" fn(this: *mut OrtDataTransferImpl)>,
    pub CanCopy: Option<
        unsafe extern "C" fn(this: *const OrtDataTransferImpl, src: *const OrtMemoryDevice, dst: *const OrtMemoryDevice) -> bool,
    >,
    pub CopyTensors: Option<
        unsafe extern "C" fn(
            this: *mut OrtDataTransferImpl,
            src: *const *const OrtValue,
            dst: *mut *mut OrtValue,
            streams: *mut *mut OrtSyncStream,
            num_tensors: usize,
        ) -> OrtStatusPtr,
    >,
}
const _: () = assert!(size_of::<OrtDataTransferImpl>() == 32);

/// A device stream as ORT sees it (`OrtSyncStreamImpl`, since 1.23).
#[repr(C)]
pub struct OrtSyncStreamImpl {
    pub ort_version_supported: u32,
    pub Release: Option<unsafe extern "C" fn(this: *mut OrtSyncStreamImpl)>,
    /// The native handle (a `CUstream`).
    pub GetHandle: Option<unsafe extern "C" fn(this: *mut OrtSyncStreamImpl) -> *mut c_void>,
    pub CreateNotification:
        Option<unsafe extern "C" fn(this: *mut OrtSyncStreamImpl, out: *mut *mut OrtSyncNotificationImpl) -> OrtStatusPtr>,
    pub Flush: Option<unsafe extern "C" fn(this: *mut OrtSyncStreamImpl) -> OrtStatusPtr>,
    pub OnSessionRunEnd: Option<unsafe extern "C" fn(this: *mut OrtSyncStreamImpl) -> OrtStatusPtr>,
}
const _: () = assert!(size_of::<OrtSyncStreamImpl>() == 48);

/// A point in a stream that other streams or the host can wait for (`OrtSyncNotificationImpl`).
#[repr(C)]
pub struct OrtSyncNotificationImpl {
    pub ort_version_supported: u32,
    pub Release: Option<unsafe extern "C" fn(this: *mut OrtSyncNotificationImpl)>,
    pub Activate: Option<unsafe extern "C" fn(this: *mut OrtSyncNotificationImpl) -> OrtStatusPtr>,
    pub WaitOnDevice:
        Option<unsafe extern "C" fn(this: *mut OrtSyncNotificationImpl, consumer: *mut OrtSyncStream) -> OrtStatusPtr>,
    pub WaitOnHost: Option<unsafe extern "C" fn(this: *mut OrtSyncNotificationImpl) -> OrtStatusPtr>,
}
const _: () = assert!(size_of::<OrtSyncNotificationImpl>() == 40);

/// The factory an EP library returns from `CreateEpFactories` (v29: 20 members after the version).
#[repr(C)]
pub struct OrtEpFactory {
    pub ort_version_supported: u32,
    pub GetName: Option<unsafe extern "C" fn(this: *const OrtEpFactory) -> *const c_char>,
    pub GetVendor: Option<unsafe extern "C" fn(this: *const OrtEpFactory) -> *const c_char>,
    pub GetSupportedDevices: Option<
        unsafe extern "C" fn(
            this: *mut OrtEpFactory,
            devices: *const *const OrtHardwareDevice,
            num_devices: usize,
            ep_devices: *mut *mut OrtEpDevice,
            max_ep_devices: usize,
            num_ep_devices: *mut usize,
        ) -> OrtStatusPtr,
    >,
    pub CreateEp: Option<
        unsafe extern "C" fn(
            this: *mut OrtEpFactory,
            devices: *const *const OrtHardwareDevice,
            ep_metadata_pairs: *const *const OrtKeyValuePairs,
            num_devices: usize,
            session_options: *const OrtSessionOptions,
            logger: *const OrtLogger,
            ep: *mut *mut OrtEp,
        ) -> OrtStatusPtr,
    >,
    pub ReleaseEp: Option<unsafe extern "C" fn(this: *mut OrtEpFactory, ep: *mut OrtEp)>,
    pub GetVendorId: Option<unsafe extern "C" fn(this: *const OrtEpFactory) -> u32>,
    pub GetVersion: Option<unsafe extern "C" fn(this: *const OrtEpFactory) -> *const c_char>,
    pub ValidateCompiledModelCompatibilityInfo: Option<
        unsafe extern "C" fn(
            this: *mut OrtEpFactory,
            devices: *const *const OrtHardwareDevice,
            num_devices: usize,
            compatibility_info: *const c_char,
            out: *mut i32,
        ) -> OrtStatusPtr,
    >,
    pub CreateAllocator: Option<
        unsafe extern "C" fn(
            this: *mut OrtEpFactory,
            memory_info: *const OrtMemoryInfo,
            allocator_options: *const OrtKeyValuePairs,
            allocator: *mut *mut OrtAllocator,
        ) -> OrtStatusPtr,
    >,
    pub ReleaseAllocator: Option<unsafe extern "C" fn(this: *mut OrtEpFactory, allocator: *mut OrtAllocator)>,
    pub CreateDataTransfer:
        Option<unsafe extern "C" fn(this: *mut OrtEpFactory, out: *mut *mut OrtDataTransferImpl) -> OrtStatusPtr>,
    pub IsStreamAware: Option<unsafe extern "C" fn(this: *const OrtEpFactory) -> bool>,
    pub CreateSyncStreamForDevice: Option<
        unsafe extern "C" fn(
            this: *mut OrtEpFactory,
            memory_device: *const OrtMemoryDevice,
            stream_options: *const OrtKeyValuePairs,
            out: *mut *mut OrtSyncStreamImpl,
        ) -> OrtStatusPtr,
    >,
    pub GetHardwareDeviceIncompatibilityDetails: Option<
        unsafe extern "C" fn(
            this: *mut OrtEpFactory,
            device: *const OrtHardwareDevice,
            details: *mut OrtDeviceEpIncompatibilityDetails,
        ) -> OrtStatusPtr,
    >,
    pub CreateExternalResourceImporterForDevice: Option<
        unsafe extern "C" fn(
            this: *mut OrtEpFactory,
            ep_device: *const OrtEpDevice,
            out: *mut *mut OrtExternalResourceImporterImpl,
        ) -> OrtStatusPtr,
    >,
    pub GetNumCustomOpDomains: Option<unsafe extern "C" fn(this: *mut OrtEpFactory, num: *mut usize) -> OrtStatusPtr>,
    pub GetCustomOpDomains: Option<
        unsafe extern "C" fn(this: *mut OrtEpFactory, domains: *mut *mut OrtCustomOpDomain, num: usize) -> OrtStatusPtr,
    >,
    pub InitGraphicsInterop: Option<
        unsafe extern "C" fn(
            this: *mut OrtEpFactory,
            ep_device: *const OrtEpDevice,
            config: *const OrtGraphicsInteropConfig,
        ) -> OrtStatusPtr,
    >,
    pub DeinitGraphicsInterop:
        Option<unsafe extern "C" fn(this: *mut OrtEpFactory, ep_device: *const OrtEpDevice) -> OrtStatusPtr>,
    pub SelectBestModelCandidate: Option<
        unsafe extern "C" fn(
            this: *mut OrtEpFactory,
            device: *const OrtHardwareDevice,
            candidates: *const *const OrtKeyValuePairs,
            num_candidates: usize,
            session_options: *const OrtSessionOptions,
            selected_index: *mut usize,
        ) -> OrtStatusPtr,
    >,
}
const _: () = assert!(size_of::<OrtEpFactory>() == 168);

/// One EP instance per session (v29: 25 members after the version).
#[repr(C)]
pub struct OrtEp {
    pub ort_version_supported: u32,
    pub GetName: Option<unsafe extern "C" fn(this: *const OrtEp) -> *const c_char>,
    pub GetCapability: Option<
        unsafe extern "C" fn(this: *mut OrtEp, graph: *const ort_sys::OrtGraph, info: *mut OrtEpGraphSupportInfo) -> OrtStatusPtr,
    >,
    pub Compile: Option<
        unsafe extern "C" fn(
            this: *mut OrtEp,
            graphs: *const *const ort_sys::OrtGraph,
            fused_nodes: *const *const OrtNode,
            count: usize,
            node_compute_infos: *mut *mut OrtNodeComputeInfo,
            ep_context_nodes: *mut *mut OrtNode,
        ) -> OrtStatusPtr,
    >,
    pub ReleaseNodeComputeInfos:
        Option<unsafe extern "C" fn(this: *mut OrtEp, infos: *mut *mut OrtNodeComputeInfo, num: usize)>,
    pub GetPreferredDataLayout: Option<unsafe extern "C" fn(this: *mut OrtEp, layout: *mut i32) -> OrtStatusPtr>,
    pub ShouldConvertDataLayoutForOp: Option<
        unsafe extern "C" fn(
            this: *mut OrtEp,
            domain: *const c_char,
            op_type: *const c_char,
            target_layout: i32,
            should_convert: *mut c_int,
        ) -> OrtStatusPtr,
    >,
    pub SetDynamicOptions: Option<
        unsafe extern "C" fn(
            this: *mut OrtEp,
            keys: *const *const c_char,
            values: *const *const c_char,
            num: usize,
        ) -> OrtStatusPtr,
    >,
    pub OnRunStart: Option<unsafe extern "C" fn(this: *mut OrtEp, run_options: *const OrtRunOptions) -> OrtStatusPtr>,
    pub OnRunEnd: Option<
        unsafe extern "C" fn(this: *mut OrtEp, run_options: *const OrtRunOptions, sync_stream: bool) -> OrtStatusPtr,
    >,
    pub CreateAllocator: Option<
        unsafe extern "C" fn(
            this: *mut OrtEp,
            memory_info: *const OrtMemoryInfo,
            allocator: *mut *mut OrtAllocator,
        ) -> OrtStatusPtr,
    >,
    pub CreateSyncStreamForDevice: Option<
        unsafe extern "C" fn(
            this: *mut OrtEp,
            memory_device: *const OrtMemoryDevice,
            out: *mut *mut OrtSyncStreamImpl,
        ) -> OrtStatusPtr,
    >,
    pub GetCompiledModelCompatibilityInfo:
        Option<unsafe extern "C" fn(this: *mut OrtEp, graph: *const ort_sys::OrtGraph) -> *const c_char>,
    pub GetKernelRegistry:
        Option<unsafe extern "C" fn(this: *mut OrtEp, out: *mut *const OrtKernelRegistry) -> OrtStatusPtr>,
    pub IsConcurrentRunSupported: Option<unsafe extern "C" fn(this: *mut OrtEp, out: *mut bool) -> OrtStatusPtr>,
    pub Sync: Option<unsafe extern "C" fn(this: *mut OrtEp) -> OrtStatusPtr>,
    pub CreateProfiler: Option<unsafe extern "C" fn(this: *mut OrtEp, out: *mut *mut OrtEpProfilerImpl) -> OrtStatusPtr>,
    pub IsGraphCaptureEnabled: Option<unsafe extern "C" fn(this: *const OrtEp) -> bool>,
    pub IsGraphCaptured: Option<unsafe extern "C" fn(this: *const OrtEp, graph_annotation_id: c_int) -> bool>,
    pub ReplayGraph: Option<unsafe extern "C" fn(this: *mut OrtEp, graph_annotation_id: c_int) -> OrtStatusPtr>,
    pub GetGraphCaptureNodeAssignmentPolicy: Option<unsafe extern "C" fn(this: *const OrtEp) -> i32>,
    pub GetAvailableResource:
        Option<unsafe extern "C" fn(this: *const OrtEp, out: *mut OrtResourceCount) -> OrtStatusPtr>,
    pub OnSessionInitializationEnd: Option<unsafe extern "C" fn(this: *mut OrtEp) -> OrtStatusPtr>,
    pub GetDefaultMemoryDevice:
        Option<unsafe extern "C" fn(this: *const OrtEp, out: *mut *const OrtMemoryDevice) -> OrtStatusPtr>,
    pub ReleaseCapturedGraph: Option<unsafe extern "C" fn(this: *mut OrtEp, graph_annotation_id: c_int) -> OrtStatusPtr>,
    pub GetWeightlessSupport: Option<unsafe extern "C" fn(this: *const OrtEp, out: *mut i32) -> OrtStatusPtr>,
}
const _: () = assert!(size_of::<OrtEp>() == 208);

/// One per compiled (fused) node; ORT calls these at run time.
#[repr(C)]
pub struct OrtNodeComputeInfo {
    pub ort_version_supported: u32,
    pub CreateState: Option<
        unsafe extern "C" fn(
            this: *mut OrtNodeComputeInfo,
            compute_context: *mut OrtNodeComputeContext,
            compute_state: *mut *mut c_void,
        ) -> OrtStatusPtr,
    >,
    pub Compute: Option<
        unsafe extern "C" fn(
            this: *mut OrtNodeComputeInfo,
            compute_state: *mut c_void,
            kernel_context: *mut OrtKernelContext,
        ) -> OrtStatusPtr,
    >,
    pub ReleaseState: Option<unsafe extern "C" fn(this: *mut OrtNodeComputeInfo, compute_state: *mut c_void)>,
}
const _: () = assert!(size_of::<OrtNodeComputeInfo>() == 32);

/// Passed to `EpGraphSupportInfo_AddNodesToFuse`.
#[repr(C)]
pub struct OrtNodeFusionOptions {
    pub ort_version_supported: u32,
    pub drop_constant_initializers: bool,
}
const _: () = assert!(size_of::<OrtNodeFusionOptions>() == 8);

/// The ORT-implemented EP function table (`OrtApi::GetEpApi`). Only slots 0–17 are declared;
/// the runtime table is longer, and quilt never reads past slot 17.
#[repr(C)]
pub struct OrtEpApi {
    pub CreateEpDevice: Option<
        unsafe extern "C" fn(
            factory: *mut OrtEpFactory,
            hardware_device: *const OrtHardwareDevice,
            ep_metadata: *const OrtKeyValuePairs,
            ep_options: *const OrtKeyValuePairs,
            out: *mut *mut OrtEpDevice,
        ) -> OrtStatusPtr,
    >,
    pub ReleaseEpDevice: Option<unsafe extern "C" fn(device: *mut OrtEpDevice)>,
    pub EpGraphSupportInfo_AddNodesToFuse: Option<
        unsafe extern "C" fn(
            info: *mut OrtEpGraphSupportInfo,
            nodes: *const *const OrtNode,
            num_nodes: usize,
            options: *const OrtNodeFusionOptions,
        ) -> OrtStatusPtr,
    >,
    pub EpGraphSupportInfo_AddSingleNode:
        Option<unsafe extern "C" fn(info: *mut OrtEpGraphSupportInfo, node: *const OrtNode) -> OrtStatusPtr>,
    pub NodeComputeContext_NodeName: Option<unsafe extern "C" fn(context: *const OrtNodeComputeContext) -> *const c_char>,
    pub EpDevice_AddAllocatorInfo:
        Option<unsafe extern "C" fn(device: *mut OrtEpDevice, info: *const OrtMemoryInfo) -> OrtStatusPtr>,
    pub MemoryInfo_GetMemoryDevice: Option<unsafe extern "C" fn(info: *const OrtMemoryInfo) -> *const OrtMemoryDevice>,
    pub Value_GetMemoryDevice: Option<unsafe extern "C" fn(value: *const OrtValue) -> *const OrtMemoryDevice>,
    pub MemoryDevice_AreEqual: Option<unsafe extern "C" fn(a: *const OrtMemoryDevice, b: *const OrtMemoryDevice) -> bool>,
    pub MemoryDevice_GetDeviceType: Option<unsafe extern "C" fn(device: *const OrtMemoryDevice) -> i32>,
    pub MemoryDevice_GetMemoryType: Option<unsafe extern "C" fn(device: *const OrtMemoryDevice) -> i32>,
    pub MemoryDevice_GetVendorId: Option<unsafe extern "C" fn(device: *const OrtMemoryDevice) -> u32>,
    pub MemoryDevice_GetDeviceId: Option<unsafe extern "C" fn(device: *const OrtMemoryDevice) -> u32>,
    pub SyncStream_GetImpl: Option<unsafe extern "C" fn(stream: *const OrtSyncStream) -> *const OrtSyncStreamImpl>,
    pub SyncStream_GetSyncId: Option<unsafe extern "C" fn(stream: *const OrtSyncStream) -> u64>,
    pub GetSyncIdForLastWaitOnSyncStream:
        Option<unsafe extern "C" fn(producer: *const OrtSyncStream, consumer: *const OrtSyncStream) -> u64>,
    pub CreateHardwareDevice: Option<
        unsafe extern "C" fn(
            device_type: i32,
            vendor_id: u32,
            device_id: u32,
            vendor_name: *const c_char,
            metadata: *const OrtKeyValuePairs,
            out: *mut *mut OrtHardwareDevice,
        ) -> OrtStatusPtr,
    >,
    pub ReleaseHardwareDevice: Option<unsafe extern "C" fn(device: *mut OrtHardwareDevice)>,
}
const _: () = assert!(size_of::<OrtEpApi>() == 18 * 8);
