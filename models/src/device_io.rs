//! IO binding in the memory a session runs in (quilt's GPU memory, or host memory on quilt's
//! reference device and ORT's CPU EP), through ORT calls that the `ort` crate (2.0.0-rc.15) does
//! not wrap, or wraps in a way that fails for a plugin EP's memory:
//! - where a session keeps each input and output (`SessionGetMemoryInfoForInputs/Outputs`), and the
//!   host-accessible (pinned) memory of the EpDevice behind an input (`SessionGetEpDeviceForInputs`,
//!   `EpDevice_MemoryInfo`);
//! - tensors from the session's allocator for that memory (`CreateAllocator`,
//!   `CreateTensorAsOrtValue`). `ort::memory::Allocator::new` cannot be used: it clones the memory
//!   info with the legacy `CreateMemoryInfo`, which rejects names it does not know (quilt's
//!   `QuiltCuda`), and `ort` panics on that;
//! - copies between a host tensor and a device tensor with ORT's `CopyTensors`, which goes through
//!   the data transfer the EP registered with the environment (quilt: one `cuMemcpy`). ORT has no
//!   data transfer for host-to-host copies, so host-accessible tensors are written in place;
//! - the binding (`CreateIoBinding`, `BindInput`, `BindOutput`, `RunWithBinding`), raw so that a run
//!   does not fetch the bound outputs back as new values (`ort`'s `run_binding` calls
//!   `GetBoundOutputValues` and creates an allocator per output on every run).
//!
//! Errors are plain messages; callers name the model file.

use std::ffi::{c_void, CStr, CString};
use std::ptr::{self, NonNull};
use std::rc::Rc;

use half::f16;
use ort::environment::Environment;
use ort::session::Session;
use ort::sys;
use ort::value::{TensorElementType, ValueType};
use ort::AsPointer;

use crate::tensor::HostData;

pub type IoResult<T> = std::result::Result<T, String>;

/// `OrtMemoryInfoDeviceType_CPU`.
const MEMORY_DEVICE_CPU: i32 = 0;
/// `OrtDeviceMemoryType_HOST_ACCESSIBLE`.
const DEVICE_MEMORY_HOST_ACCESSIBLE: i32 = 5;

/// Turns an `OrtStatus` into a message (and releases it).
///
/// # Safety
/// `status` must be null or a status ORT returned.
unsafe fn check(status: sys::OrtStatusPtr, what: &str) -> IoResult<()> {
    if status.0.is_null() {
        return Ok(());
    }
    let api = ort::api();
    let message = CStr::from_ptr((api.GetErrorMessage)(status.0)).to_string_lossy().into_owned();
    (api.ReleaseStatus)(status.0);
    Err(format!("{what}: {message}"))
}

/// The element types the binding moves: the UNet's float inputs and output, and its timestep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element {
    F32,
    F16,
    I64,
}

impl Element {
    /// From a declared dtype name (`runtime::dtype_name`).
    pub fn from_name(dtype: &str) -> Option<Element> {
        match dtype {
            "float32" => Some(Element::F32),
            "float16" => Some(Element::F16),
            "int64" => Some(Element::I64),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Element::F32 => "float32",
            Element::F16 => "float16",
            Element::I64 => "int64",
        }
    }

    fn size(self) -> usize {
        match self {
            Element::F32 => 4,
            Element::F16 => 2,
            Element::I64 => 8,
        }
    }

    fn onnx(self) -> sys::ONNXTensorElementDataType {
        match self {
            Element::F32 => sys::ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
            Element::F16 => sys::ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
            Element::I64 => sys::ONNXTensorElementDataType::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64,
        }
    }
}

/// The element type of the session's output `name`, if it is a tensor the binding can move.
pub fn output_element(session: &Session, name: &str) -> IoResult<Element> {
    let outlet = session.outputs().iter().find(|o| o.name() == name).ok_or_else(|| format!("no output named `{name}`"))?;
    match outlet.dtype() {
        ValueType::Tensor { ty: TensorElementType::Float32, .. } => Ok(Element::F32),
        ValueType::Tensor { ty: TensorElementType::Float16, .. } => Ok(Element::F16),
        other => Err(format!("output `{name}` is {other:?}; the binding moves float32 or float16 outputs")),
    }
}

/// Where a session keeps one input or output: an `OrtMemoryInfo` the session owns (valid while
/// the session lives; a `Placement` never outlives the binding that uses it, which never outlives
/// the session).
#[derive(Debug, Clone)]
pub struct Placement {
    memory: *const sys::OrtMemoryInfo,
    /// The memory info's name (`Cpu`, quilt's `QuiltCuda`, `QuiltCudaPinned`).
    pub name: String,
    pub device_id: i32,
    /// Plain host memory (ORT's CPU device): tensors there come from ORT's default allocator.
    pub cpu: bool,
    /// The host can read and write it (CPU, or a device's pinned host memory).
    pub host_accessible: bool,
}

impl Placement {
    /// # Safety
    /// `memory` must be null or a live `OrtMemoryInfo`.
    unsafe fn from_raw(memory: *const sys::OrtMemoryInfo) -> IoResult<Placement> {
        if memory.is_null() {
            return Err("ORT reported no memory info".into());
        }
        let api = ort::api();
        let mut name = ptr::null();
        check((api.MemoryInfoGetName)(memory, &mut name), "MemoryInfoGetName")?;
        let name = if name.is_null() { String::new() } else { CStr::from_ptr(name).to_string_lossy().into_owned() };
        let mut device_id = 0;
        check((api.MemoryInfoGetId)(memory, &mut device_id), "MemoryInfoGetId")?;
        // C enums read as integers: ORT may add values the Rust enums lack.
        type DeviceTypeFn = unsafe extern "system" fn(*const sys::OrtMemoryInfo, *mut i32);
        type MemTypeFn = unsafe extern "system" fn(*const sys::OrtMemoryInfo) -> i32;
        let device_type_fn: DeviceTypeFn = std::mem::transmute(api.MemoryInfoGetDeviceType);
        let mem_type_fn: MemTypeFn = std::mem::transmute(api.MemoryInfoGetDeviceMemType);
        let mut device_type = -1;
        device_type_fn(memory, &mut device_type);
        let cpu = device_type == MEMORY_DEVICE_CPU;
        let host_accessible = cpu || mem_type_fn(memory) == DEVICE_MEMORY_HOST_ACCESSIBLE;
        Ok(Placement { memory, name, device_id, cpu, host_accessible })
    }

    /// `name:id`, e.g. `QuiltCuda:0`.
    pub fn describe(&self) -> String {
        format!("{}:{}", self.name, self.device_id)
    }

    /// The same memory (name, device, kind): one allocator serves both, one copy call moves both.
    pub fn same_memory(&self, other: &Placement) -> bool {
        self.name == other.name && self.device_id == other.device_id && self.cpu == other.cpu && self.host_accessible == other.host_accessible
    }
}

type SessionIoFn<T> = unsafe extern "system" fn(*const sys::OrtSession, *mut *const T, usize) -> sys::OrtStatusPtr;

fn session_io<T>(session: &Session, f: SessionIoFn<T>, count: usize, what: &str) -> IoResult<Vec<*const T>> {
    let mut out = vec![ptr::null(); count];
    // SAFETY: `out` has room for `count` entries, the session's input or output count.
    unsafe { check(f(session.ptr(), out.as_mut_ptr(), count), what)? };
    Ok(out)
}

/// Where the session keeps each of its inputs, in input order.
pub fn input_placements(session: &Session) -> IoResult<Vec<Placement>> {
    let raw = session_io(session, ort::api().SessionGetMemoryInfoForInputs, session.inputs().len(), "SessionGetMemoryInfoForInputs")?;
    // SAFETY: the pointers are the session's own memory infos (or null, which `from_raw` rejects).
    raw.into_iter().map(|m| unsafe { Placement::from_raw(m) }).collect()
}

/// Where the session puts each of its outputs, in output order.
pub fn output_placements(session: &Session) -> IoResult<Vec<Placement>> {
    let raw = session_io(session, ort::api().SessionGetMemoryInfoForOutputs, session.outputs().len(), "SessionGetMemoryInfoForOutputs")?;
    // SAFETY: as in `input_placements`.
    raw.into_iter().map(|m| unsafe { Placement::from_raw(m) }).collect()
}

/// The host-accessible (pinned) memory of the EpDevice that runs the session's input `index`,
/// where that device declares one (quilt's GPU device does; its reference device and ORT's CPU EP
/// do not), else which step found none. Host→device copies from there need no staging copy
/// inside the driver.
pub fn input_pinned_memory(session: &Session, index: usize) -> IoResult<Result<Placement, String>> {
    let devices = session_io(session, ort::api().SessionGetEpDeviceForInputs, session.inputs().len(), "SessionGetEpDeviceForInputs")?;
    let Some(&device) = devices.get(index) else { return Ok(Err(format!("SessionGetEpDeviceForInputs listed {} devices, none for input {index}", devices.len()))) };
    if device.is_null() {
        return Ok(Err(format!("SessionGetEpDeviceForInputs gave no EP device for input {index}")));
    }
    // SAFETY: `device` is a live OrtEpDevice of the environment; the returned memory info (or
    // null: none declared) lives as long as it does.
    let memory = unsafe { (ort::api().EpDevice_MemoryInfo)(device, sys::OrtDeviceMemoryType::OrtDeviceMemoryType_HOST_ACCESSIBLE) };
    if memory.is_null() {
        return Ok(Err(format!("input {index}'s EP device declares no host-accessible memory")));
    }
    // SAFETY: non-null memory info from ORT.
    let placement = unsafe { Placement::from_raw(memory)? };
    if !placement.host_accessible {
        return Ok(Err(format!("input {index}'s EP device gave {} as its host-accessible memory, which is not", placement.describe())));
    }
    Ok(Ok(placement))
}

/// An allocator for one memory of a session: ORT's default allocator for plain host memory, else
/// the session's own allocator for that memory (`CreateAllocator`, released on drop).
pub struct SessionAllocator {
    ptr: NonNull<sys::OrtAllocator>,
    owned: bool,
    pub placement: Placement,
}

impl SessionAllocator {
    pub fn new(session: &Session, placement: &Placement) -> IoResult<Rc<SessionAllocator>> {
        let api = ort::api();
        let mut raw: *mut sys::OrtAllocator = ptr::null_mut();
        if placement.cpu {
            return SessionAllocator::host();
        }
        // SAFETY: a live session and one of its (or its device's) memory infos.
        unsafe { check((api.CreateAllocator)(session.ptr(), placement.memory, &mut raw), &format!("CreateAllocator for {}", placement.describe()))? };
        let ptr = NonNull::new(raw).ok_or_else(|| format!("ORT returned no allocator for {}", placement.describe()))?;
        Ok(Rc::new(SessionAllocator { ptr, owned: true, placement: placement.clone() }))
    }
}

impl SessionAllocator {
    /// ORT's default allocator (plain host memory), for host staging where the device declares
    /// no pinned memory.
    pub fn host() -> IoResult<Rc<SessionAllocator>> {
        let mut raw: *mut sys::OrtAllocator = ptr::null_mut();
        // SAFETY: ORT's process-wide default allocator (never released).
        unsafe { check((ort::api().GetAllocatorWithDefaultOptions)(&mut raw), "GetAllocatorWithDefaultOptions")? };
        let ptr = NonNull::new(raw).ok_or("ORT returned no default allocator")?;
        let placement = Placement { memory: ptr::null(), name: "Cpu".into(), device_id: 0, cpu: true, host_accessible: true };
        Ok(Rc::new(SessionAllocator { ptr, owned: false, placement }))
    }
}

impl Drop for SessionAllocator {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: created by `CreateAllocator` above; every tensor from it holds an `Rc` to it,
            // so none is left.
            unsafe { (ort::api().ReleaseAllocator)(self.ptr.as_ptr()) };
        }
    }
}

/// A tensor ORT allocated in one memory (`CreateTensorAsOrtValue`), released on drop.
pub struct OrtTensor {
    value: NonNull<sys::OrtValue>,
    element: Element,
    shape: Vec<i64>,
    elements: usize,
    /// The data, for host-accessible memory (may be null for an empty tensor).
    data: *mut c_void,
    allocator: Rc<SessionAllocator>,
}

impl OrtTensor {
    pub fn new(allocator: &Rc<SessionAllocator>, element: Element, shape: &[i64]) -> IoResult<OrtTensor> {
        if shape.iter().any(|&d| d < 0) {
            return Err(format!("cannot allocate a tensor of shape {shape:?}"));
        }
        let api = ort::api();
        let mut raw: *mut sys::OrtValue = ptr::null_mut();
        // SAFETY: a live allocator; `shape` outlives the call.
        unsafe {
            check(
                (api.CreateTensorAsOrtValue)(allocator.ptr.as_ptr(), shape.as_ptr(), shape.len(), element.onnx(), &mut raw),
                &format!("allocating a {} tensor of shape {shape:?} in {}", element.name(), allocator.placement.describe()),
            )?
        };
        let value = NonNull::new(raw).ok_or("CreateTensorAsOrtValue returned no value")?;
        let elements = shape.iter().product::<i64>() as usize;
        let mut tensor = OrtTensor { value, element, shape: shape.to_vec(), elements, data: ptr::null_mut(), allocator: allocator.clone() };
        if allocator.placement.host_accessible {
            let mut data = ptr::null_mut();
            // SAFETY: a live tensor value.
            unsafe { check((api.GetTensorMutableData)(value.as_ptr(), &mut data), "GetTensorMutableData")? };
            if data.is_null() && elements > 0 {
                return Err("ORT returned no data pointer for a host tensor".into());
            }
            tensor.data = data;
        }
        Ok(tensor)
    }

    pub fn placement(&self) -> &Placement {
        &self.allocator.placement
    }

    pub fn shape(&self) -> &[i64] {
        &self.shape
    }

    /// The data pointer, where the host can access it.
    fn host_data(&self) -> IoResult<*mut c_void> {
        if !self.allocator.placement.host_accessible {
            return Err(format!("the tensor is in {} memory, which the host cannot access", self.allocator.placement.describe()));
        }
        Ok(self.data)
    }

    /// Writes `data` (same element type and count) into host-accessible memory.
    pub fn write(&mut self, data: &HostData) -> IoResult<()> {
        if data.len() != self.elements {
            return Err(format!("{} values for a tensor of shape {:?}", data.len(), self.shape));
        }
        let source: *const u8 = match (self.element, data) {
            (Element::F32, HostData::F32(v)) => v.as_ptr().cast(),
            (Element::F16, HostData::F16(v)) => v.as_ptr().cast(),
            (Element::I64, HostData::I64(v)) => v.as_ptr().cast(),
            (e, d) => return Err(format!("{} values for a {} tensor", d.dtype_name(), e.name())),
        };
        let target = self.host_data()?;
        if self.elements > 0 {
            // SAFETY: both hold `elements` values of the same type (f16 is a transparent u16); the
            // target is this tensor's host-accessible data, borrowed mutably through `self`.
            unsafe { ptr::copy_nonoverlapping(source, target.cast::<u8>(), self.elements * self.element.size()) };
        }
        Ok(())
    }

    /// The values of a float tensor in host-accessible memory, as f32.
    pub fn read_f32(&self) -> IoResult<Vec<f32>> {
        let data = self.host_data()?;
        if self.elements == 0 {
            return Ok(Vec::new());
        }
        // SAFETY: host-accessible data of `elements` values of `element` (ORT aligns allocations
        // far beyond the element size), not written while the slice lives.
        unsafe {
            match self.element {
                Element::F32 => Ok(std::slice::from_raw_parts(data as *const f32, self.elements).to_vec()),
                Element::F16 => Ok(std::slice::from_raw_parts(data as *const f16, self.elements).iter().map(|x| x.to_f32()).collect()),
                Element::I64 => Err("reading an int64 tensor as float".into()),
            }
        }
    }
}

impl Drop for OrtTensor {
    fn drop(&mut self) {
        // SAFETY: created by `CreateTensorAsOrtValue`; a binding that holds it keeps its own
        // reference to the data (ORT copies the OrtValue on `BindInput`/`BindOutput`). The
        // allocator `Rc` is dropped after this.
        unsafe { (ort::api().ReleaseValue)(self.value.as_ptr()) };
    }
}

/// Copies each `(source, destination)` pair with ORT's `CopyTensors` (no stream: the EP's data
/// transfer copies synchronously; quilt's synchronizes its context around one `cuMemcpy`). ORT
/// wants one source memory and one destination memory per call, so pairs are grouped by both.
pub fn copy_tensors(env: &Environment, pairs: &[(&OrtTensor, &OrtTensor)]) -> IoResult<()> {
    let mut done = vec![false; pairs.len()];
    for i in 0..pairs.len() {
        if done[i] {
            continue;
        }
        let (src_mem, dst_mem) = (pairs[i].0.placement(), pairs[i].1.placement());
        let mut srcs: Vec<*const sys::OrtValue> = Vec::new();
        let mut dsts: Vec<*const sys::OrtValue> = Vec::new();
        for j in i..pairs.len() {
            let (src, dst) = pairs[j];
            if !done[j] && src.placement().same_memory(src_mem) && dst.placement().same_memory(dst_mem) {
                if src.element != dst.element || src.shape != dst.shape {
                    return Err(format!("copying a {} {:?} tensor into a {} {:?} one", src.element.name(), src.shape, dst.element.name(), dst.shape));
                }
                srcs.push(src.value.as_ptr());
                dsts.push(dst.value.as_ptr());
                done[j] = true;
            }
        }
        // SAFETY: live tensors of equal type and shape; no stream, so the copy is complete when
        // the call returns.
        unsafe {
            check(
                (ort::api().CopyTensors)(env.ptr().cast_mut(), srcs.as_ptr(), dsts.as_mut_ptr(), ptr::null_mut(), srcs.len()),
                &format!("CopyTensors {} -> {}", src_mem.describe(), dst_mem.describe()),
            )?
        };
    }
    Ok(())
}

/// An `OrtIoBinding` of one session.
pub struct Binding {
    ptr: NonNull<sys::OrtIoBinding>,
}

impl Binding {
    pub fn new(session: &mut Session) -> IoResult<Binding> {
        let mut raw: *mut sys::OrtIoBinding = ptr::null_mut();
        // SAFETY: a live session.
        unsafe { check((ort::api().CreateIoBinding)(session.ptr_mut(), &mut raw), "CreateIoBinding")? };
        Ok(Binding { ptr: NonNull::new(raw).ok_or("CreateIoBinding returned no binding")? })
    }

    /// Binds `tensor` to input `name`. ORT keeps its own reference to the data: later writes to
    /// the tensor (in place or by `copy_tensors`) are what the next run reads.
    pub fn bind_input(&mut self, name: &str, tensor: &OrtTensor) -> IoResult<()> {
        let cname = CString::new(name).map_err(|_| format!("input name {name:?}"))?;
        // SAFETY: live binding and value.
        unsafe { check((ort::api().BindInput)(self.ptr.as_ptr(), cname.as_ptr(), tensor.value.as_ptr()), &format!("binding input `{name}`")) }
    }

    /// Binds output `name` to `tensor`: each run writes the output there.
    pub fn bind_output(&mut self, name: &str, tensor: &OrtTensor) -> IoResult<()> {
        let cname = CString::new(name).map_err(|_| format!("output name {name:?}"))?;
        // SAFETY: live binding and value.
        unsafe { check((ort::api().BindOutput)(self.ptr.as_ptr(), cname.as_ptr(), tensor.value.as_ptr()), &format!("binding output `{name}`")) }
    }

    /// Runs `session` (the one the binding was made for) on the bound tensors.
    pub fn run(&self, session: &mut Session) -> IoResult<()> {
        // SAFETY: live session and binding; `&mut Session` keeps runs of this session exclusive.
        unsafe { check((ort::api().RunWithBinding)(session.ptr_mut(), ptr::null(), self.ptr.as_ptr()), "RunWithBinding") }
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        // SAFETY: created by `CreateIoBinding`.
        unsafe { (ort::api().ReleaseIoBinding)(self.ptr.as_ptr()) };
    }
}
