//! Copying tensors between ORT `OrtValue`s (CPU memory) and quilt `Tensor`s.

use std::ffi::c_void;
use std::ptr;

use ort_sys::{OrtTensorTypeAndShapeInfo, OrtValue};
use quilt_rewrites::{DType, Tensor, TensorData};

use crate::api::Api;
use crate::error::{Error, Result};
use crate::ort_call;

/// Element type code (read as an integer) and dims of a tensor type-and-shape info.
///
/// # Safety
/// `info` is a live `OrtTensorTypeAndShapeInfo` of `api`'s ORT.
pub unsafe fn element_type_and_dims(api: Api, info: *const OrtTensorTypeAndShapeInfo) -> Result<(i32, Vec<i64>)> {
    let mut code: i32 = 0;
    ort_call!(api, GetTensorElementType(info, &mut code as *mut i32 as *mut _))?;
    let mut rank = 0usize;
    ort_call!(api, GetDimensionsCount(info, &mut rank))?;
    let mut dims = vec![0i64; rank];
    if rank > 0 {
        ort_call!(api, GetDimensions(info, dims.as_mut_ptr(), rank))?;
    }
    Ok((code, dims))
}

/// Element type code and dims of a tensor `OrtValue`.
///
/// # Safety
/// `value` is a live tensor `OrtValue` of `api`'s ORT.
pub unsafe fn value_type_and_dims(api: Api, value: *const OrtValue) -> Result<(i32, Vec<i64>)> {
    let mut info: *mut OrtTensorTypeAndShapeInfo = ptr::null_mut();
    ort_call!(api, GetTensorTypeAndShape(value, &mut info))?;
    let r = element_type_and_dims(api, info);
    (api.ort.ReleaseTensorTypeAndShapeInfo)(info);
    r
}

/// Concrete (non-negative) dims as sizes; `what` names the value in the error.
pub fn sizes(dims: &[i64], what: impl Fn() -> Error) -> Result<Vec<usize>> {
    dims.iter().map(|&d| usize::try_from(d).map_err(|_| what())).collect()
}

/// Copies a CPU tensor `OrtValue` into a `Tensor`. Errors (wrong element type, unreadable data)
/// name the value through `name` and become `Error::Input` or `Error::Graph` via `err`.
///
/// # Safety
/// `value` is a live tensor `OrtValue` of `api`'s ORT whose data is in CPU memory.
pub unsafe fn read_tensor(api: Api, value: *const OrtValue, err: &dyn Fn(String) -> Error) -> Result<Tensor> {
    let (code, dims) = value_type_and_dims(api, value)?;
    let dtype = DType::from_onnx(code).ok_or_else(|| err(format!("element type {code} is not supported by quilt")))?;
    let shape = sizes(&dims, || err(format!("negative dimension in {dims:?}")))?;
    let numel: usize = shape.iter().product();
    let nbytes = numel * dtype.size_bytes();
    let bytes: &[u8] = if nbytes == 0 {
        &[]
    } else {
        let mut data: *const c_void = ptr::null();
        ort_call!(api, GetTensorData(value, &mut data))?;
        if data.is_null() {
            return Err(err("ORT returned no tensor data".into()));
        }
        std::slice::from_raw_parts(data as *const u8, nbytes)
    };
    let data = TensorData::from_le_bytes(dtype, bytes).ok_or_else(|| err("tensor data has a partial element".into()))?;
    Ok(Tensor::new(shape, data))
}
