//! Compute: kernel-context inputs → `Tensor`s → the compiled executable → kernel-context outputs.
//! Everything is in CPU memory (the reference device registers no device memory).

use std::ffi::c_void;
use std::ptr;

use ort_sys::{OrtKernelContext, OrtStatusPtr, OrtValue};
use quilt_rewrites::{DType, Tensor};

use crate::abi::{OrtNodeComputeContext, OrtNodeComputeInfo};
use crate::api::Api;
use crate::compile::{ComputeInfo, FusedKernel};
use crate::error::{Error, Result};
use crate::guard;
use crate::ort_call;
use crate::tensor_io::{read_tensor, value_type_and_dims};

/// No per-session state: the executable is immutable and its `run` is re-entrant.
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

pub unsafe extern "C" fn release_state(_this: *mut OrtNodeComputeInfo, _state: *mut c_void) {}

pub unsafe extern "C" fn compute(this: *mut OrtNodeComputeInfo, _state: *mut c_void, context: *mut OrtKernelContext) -> OrtStatusPtr {
    let info = &*(this as *const ComputeInfo);
    guard::status(info.api, "Compute", || run(info.api, &info.kernel, context).map_err(|e| e.in_fused_node(&info.kernel.name)))
}

unsafe fn run(api: Api, kernel: &FusedKernel, context: *mut OrtKernelContext) -> Result<()> {
    let mut count = 0usize;
    ort_call!(api, KernelContext_GetInputCount(context, &mut count))?;
    let mut inputs: Vec<Tensor> = Vec::with_capacity(kernel.inputs.len());
    for (slot, name) in &kernel.inputs {
        let input_error = |msg: String| Error::Input { name: name.clone(), msg };
        if *slot >= count {
            return Err(input_error(format!("ORT passed {count} inputs; this one is #{slot}")));
        }
        let mut value: *const OrtValue = ptr::null();
        ort_call!(api, KernelContext_GetInput(context, *slot, &mut value))?;
        if value.is_null() {
            return Err(input_error("ORT passed no value".into()));
        }
        inputs.push(read_tensor(api, value, &input_error)?);
    }

    let outputs = kernel.exec.run(&inputs)?;

    for (index, (plan_index, name)) in kernel.outputs.iter().enumerate() {
        let output_error = |msg: String| Error::Output { name: name.clone(), msg };
        let t = outputs.get(*plan_index).ok_or_else(|| output_error("the executable did not return it".into()))?;
        let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        let mut value: *mut OrtValue = ptr::null_mut();
        ort_call!(api, KernelContext_GetOutput(context, index, dims.as_ptr(), dims.len(), &mut value))?;
        if value.is_null() {
            return Err(output_error("ORT allocated no value".into()));
        }
        let (code, _) = value_type_and_dims(api, value)?;
        if DType::from_onnx(code) != Some(t.dtype()) {
            return Err(output_error(format!("ORT expects element type {code}, quilt computed {}", t.dtype())));
        }
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
