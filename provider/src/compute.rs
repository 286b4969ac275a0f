//! Compute: kernel-context inputs → the compiled executable → kernel-context outputs.
//!
//! On the reference device everything is in CPU memory and goes through `Tensor`s. On a GPU
//! device the inputs are already in quilt's device memory: their pointers and shapes go straight
//! to `CudaExecutable::run_device`, which asks for each output (ORT allocates it on the device
//! from the shape) before queuing any work, on ORT's stream for this session. No tensor data
//! crosses to the host.

use std::cell::RefCell;
use std::ffi::c_void;
use std::ptr;

use ort_sys::{OrtKernelContext, OrtStatusPtr, OrtValue};
use quilt_kernels::cpu::CpuExecutable;
use quilt_kernels::cuda::{CUstream, CudaExecutable, DeviceTensor};
use quilt_rewrites::{DType, Tensor};

use crate::abi::{OrtNodeComputeContext, OrtNodeComputeInfo, ORT_MEMORY_DEVICE_TYPE_CPU};
use crate::api::Api;
use crate::compile::{ComputeInfo, Executable, FusedKernel};
use crate::error::{Error, Result};
use crate::gpu::describe_memory_device;
use crate::guard;
use crate::ort_call;
use crate::tensor_io::{read_tensor, sizes, value_type_and_dims};

/// No per-session state: the executable is immutable and its `run` is re-entrant.
///
/// # Safety
/// Called by ORT: `state` is null or points to a writable pointer.
pub unsafe extern "C" fn create_state(
    _this: *mut OrtNodeComputeInfo,
    _context: *mut OrtNodeComputeContext,
    state: *mut *mut c_void,
) -> OrtStatusPtr {
    if !state.is_null() {
        *state = ptr::null_mut();
    }
    OrtStatusPtr(ptr::null_mut())
}

/// # Safety
/// Called by ORT; touches nothing.
pub unsafe extern "C" fn release_state(_this: *mut OrtNodeComputeInfo, _state: *mut c_void) {}

/// Runs the fused node's executable on the kernel context's inputs and outputs.
///
/// # Safety
/// Called by ORT: `this` is the `ComputeInfo` quilt created for this node, `context` a live kernel context.
pub unsafe extern "C" fn compute(this: *mut OrtNodeComputeInfo, _state: *mut c_void, context: *mut OrtKernelContext) -> OrtStatusPtr {
    let info = &*(this as *const ComputeInfo);
    guard::status(info.api, "Compute", || run(info.api, &info.kernel, context).map_err(|e| e.in_fused_node(&info.kernel.name)))
}

unsafe fn run(api: Api, kernel: &FusedKernel, context: *mut OrtKernelContext) -> Result<()> {
    match &kernel.exec {
        Executable::Cpu(exec) => run_cpu(api, kernel, exec, context),
        Executable::Cuda(exec) => run_cuda(api, kernel, exec, context),
    }
}

/// Kernel-context input `slot`, checked to exist.
unsafe fn input_value(api: Api, context: *mut OrtKernelContext, slot: usize, count: usize, name: &str) -> Result<*const OrtValue> {
    let input_error = |msg: String| Error::Input { name: name.to_string(), msg };
    if slot >= count {
        return Err(input_error(format!("ORT passed {count} inputs; this one is #{slot}")));
    }
    let mut value: *const OrtValue = ptr::null();
    ort_call!(api, KernelContext_GetInput(context, slot, &mut value))?;
    if value.is_null() {
        return Err(input_error("ORT passed no value".into()));
    }
    Ok(value)
}

/// Allocates kernel-context output `index` with `shape` and checks its element type.
unsafe fn output_value(api: Api, context: *mut OrtKernelContext, index: usize, shape: &[usize], dtype: DType, name: &str) -> Result<*mut OrtValue> {
    let output_error = |msg: String| Error::Output { name: name.to_string(), msg };
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let mut value: *mut OrtValue = ptr::null_mut();
    ort_call!(api, KernelContext_GetOutput(context, index, dims.as_ptr(), dims.len(), &mut value))?;
    if value.is_null() {
        return Err(output_error("ORT allocated no value".into()));
    }
    let (code, _) = value_type_and_dims(api, value)?;
    if DType::from_onnx(code) != Some(dtype) {
        return Err(output_error(format!("ORT expects element type {code}, quilt computed {dtype}")));
    }
    Ok(value)
}

unsafe fn run_cpu(api: Api, kernel: &FusedKernel, exec: &CpuExecutable, context: *mut OrtKernelContext) -> Result<()> {
    let mut count = 0usize;
    ort_call!(api, KernelContext_GetInputCount(context, &mut count))?;
    let mut inputs: Vec<Tensor> = Vec::with_capacity(kernel.inputs.len());
    for (slot, name) in &kernel.inputs {
        let input_error = |msg: String| Error::Input { name: name.clone(), msg };
        let value = input_value(api, context, *slot, count, name)?;
        inputs.push(read_tensor(api, value, &input_error)?);
    }

    let outputs = exec.run(&inputs)?;

    for (index, (plan_index, name)) in kernel.outputs.iter().enumerate() {
        let output_error = |msg: String| Error::Output { name: name.clone(), msg };
        let t = outputs.get(*plan_index).ok_or_else(|| output_error("the executable did not return it".into()))?;
        let value = output_value(api, context, index, &t.shape, t.dtype(), name)?;
        let bytes = t.data.to_le_bytes();
        if !bytes.is_empty() {
            let mut data: *mut c_void = ptr::null_mut();
            ort_call!(api, GetTensorMutableData(value, &mut data))?;
            if data.is_null() {
                return Err(output_error("ORT returned no buffer".into()));
            }
            ptr::copy_nonoverlapping(bytes.as_ptr(), data as *mut u8, bytes.len());
        }
    }
    Ok(())
}

unsafe fn run_cuda(api: Api, kernel: &FusedKernel, exec: &CudaExecutable, context: *mut OrtKernelContext) -> Result<()> {
    let mut count = 0usize;
    ort_call!(api, KernelContext_GetInputCount(context, &mut count))?;
    let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(kernel.inputs.len());
    let mut described: Vec<(u64, DType)> = Vec::with_capacity(kernel.inputs.len());
    for (slot, name) in &kernel.inputs {
        let input_error = |msg: String| Error::Input { name: name.clone(), msg };
        let value = input_value(api, context, *slot, count, name)?;
        // ORT places fused-node inputs on the EP's device; a CPU pointer here would be read by
        // kernels as a device address.
        let on_cpu = api.ep.Value_GetMemoryDevice.and_then(|f| describe_memory_device(api, f(value))).is_some_and(|d| d.device_type == ORT_MEMORY_DEVICE_TYPE_CPU);
        if on_cpu {
            return Err(input_error("ORT passed it in CPU memory, not in quilt's GPU memory".into()));
        }
        let (code, dims) = value_type_and_dims(api, value)?;
        let dtype = DType::from_onnx(code).ok_or_else(|| input_error(format!("element type {code} is not supported by quilt")))?;
        shapes.push(sizes(&dims, || input_error(format!("negative dimension in {dims:?}")))?);
        let mut data: *const c_void = ptr::null();
        ort_call!(api, GetTensorData(value, &mut data))?;
        described.push((data as u64, dtype));
    }
    let inputs: Vec<DeviceTensor> =
        described.iter().zip(&shapes).map(|(&(ptr, dtype), shape)| DeviceTensor { ptr, shape, dtype }).collect();

    // Plan output → kernel-context output.
    let plan = exec.plan();
    let mut context_index: Vec<Option<usize>> = vec![None; plan.outputs.len()];
    for (index, (plan_index, _)) in kernel.outputs.iter().enumerate() {
        if let Some(slot) = context_index.get_mut(*plan_index) {
            slot.get_or_insert(index);
        }
    }
    // An ORT failure inside the callback keeps its own error; the executor only learns "failed".
    let failure: RefCell<Option<Error>> = RefCell::new(None);
    let mut allocate = |j: usize, shape: &[usize]| -> quilt_kernels::Result<u64> {
        let v = &plan.outputs[j];
        let result = (|| -> Result<u64> {
            let index = context_index[j].ok_or_else(|| Error::Output { name: v.name.clone(), msg: "is not an output of the fused node".into() })?;
            let value = output_value(api, context, index, shape, plan.buffers[v.buffer].ty.dtype, &v.name)?;
            let mut data: *mut c_void = ptr::null_mut();
            ort_call!(api, GetTensorMutableData(value, &mut data))?;
            Ok(data as u64)
        })();
        result.map_err(|e| {
            let msg = e.to_string();
            *failure.borrow_mut() = Some(e);
            quilt_kernels::Error::Plan(msg)
        })
    };
    let mut stream: *mut c_void = ptr::null_mut();
    ort_call!(api, KernelContext_GetGPUComputeStream(context, &mut stream))?;
    let stream = (!stream.is_null()).then_some(stream as CUstream);
    let result = exec.run_device(&inputs, &mut allocate, stream);
    match (result, failure.into_inner()) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(e)) => Err(e),
        (Err(e), None) => Err(e.into()),
    }
}
