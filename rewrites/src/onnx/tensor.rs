//! `TensorProto` → `Tensor`: raw bytes, the typed repeated fields, and external data files.

use std::path::Path;

use onnx_protobuf::tensor_proto::DataLocation;
use onnx_protobuf::TensorProto;

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::{Tensor, TensorData};

fn value_err(t: &TensorProto, msg: impl Into<String>) -> Error {
    let name = if t.name.is_empty() { "<unnamed tensor>".to_string() } else { t.name.clone() };
    Error::Value { name, msg: msg.into() }
}

/// The element type and shape a tensor proto declares, checked.
pub(crate) fn proto_type(t: &TensorProto) -> Result<(DType, Vec<usize>)> {
    let dtype = DType::from_onnx(t.data_type)
        .ok_or_else(|| value_err(t, format!("unsupported tensor element type (ONNX code {})", t.data_type)))?;
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        if d < 0 {
            return Err(value_err(t, format!("negative dimension {d} in {:?}", t.dims)));
        }
        shape.push(d as usize);
    }
    let bytes = shape.iter().try_fold(dtype.size_bytes(), |acc, &d| acc.checked_mul(d));
    if bytes.is_none_or(|b| b > isize::MAX as usize) {
        return Err(value_err(t, format!("dims {:?} are too large", t.dims)));
    }
    Ok((dtype, shape))
}

pub(crate) fn is_external(t: &TensorProto) -> bool {
    t.data_location.enum_value() == Ok(DataLocation::EXTERNAL)
}

/// Whether the proto carries its elements somewhere (inline, typed fields or an external file).
/// Graph-only exports keep `dims` but drop the data.
pub(crate) fn has_data(t: &TensorProto) -> bool {
    is_external(t)
        || !t.raw_data.is_empty()
        || !t.float_data.is_empty()
        || !t.int32_data.is_empty()
        || !t.int64_data.is_empty()
        || !t.double_data.is_empty()
        || !t.uint64_data.is_empty()
        || t.dims.contains(&0)
}

/// Decodes a tensor proto. External data locations are relative to `base_dir`.
pub fn tensor_from_proto(t: &TensorProto, base_dir: Option<&Path>) -> Result<Tensor> {
    let (dtype, shape) = proto_type(t)?;
    let numel: usize = shape.iter().product();
    let data = if is_external(t) {
        let bytes = read_external(t, base_dir, numel * dtype.size_bytes())?;
        TensorData::from_le_bytes(dtype, &bytes).ok_or_else(|| value_err(t, "external data length is not a multiple of the element size"))?
    } else if !t.raw_data.is_empty() {
        TensorData::from_le_bytes(dtype, &t.raw_data).ok_or_else(|| value_err(t, "raw_data length is not a multiple of the element size"))?
    } else {
        typed_data(t, dtype)?
    };
    if data.len() != numel {
        return Err(value_err(t, format!("has {} elements, its dims {:?} need {numel}", data.len(), t.dims)));
    }
    Ok(Tensor::new(shape, data))
}

/// The typed repeated fields: f16/bf16/bool/int8/uint8 travel as their bit patterns in `int32_data`.
fn typed_data(t: &TensorProto, dtype: DType) -> Result<TensorData> {
    let i32s = &t.int32_data;
    Ok(match dtype {
        DType::F32 => TensorData::F32(t.float_data.clone()),
        DType::F64 => TensorData::F64(t.double_data.clone()),
        DType::I64 => TensorData::I64(t.int64_data.clone()),
        DType::I32 => TensorData::I32(i32s.clone()),
        DType::I8 => TensorData::I8(i32s.iter().map(|&v| v as i8).collect()),
        DType::U8 => TensorData::U8(i32s.iter().map(|&v| v as u8).collect()),
        DType::Bool => TensorData::Bool(i32s.iter().map(|&v| v != 0).collect()),
        DType::F16 => TensorData::F16(i32s.iter().map(|&v| half::f16::from_bits(v as u16)).collect()),
        DType::BF16 => TensorData::BF16(i32s.iter().map(|&v| half::bf16::from_bits(v as u16)).collect()),
    })
}

/// Reads `length` bytes (default: what the shape needs) at `offset` of the file named by `location`.
fn read_external(t: &TensorProto, base_dir: Option<&Path>, needed: usize) -> Result<Vec<u8>> {
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for kv in &t.external_data {
        let parse = |v: &str| v.parse::<u64>().map_err(|_| value_err(t, format!("external data key '{}' is not a number: '{v}'", kv.key)));
        match kv.key.as_str() {
            "location" => location = Some(kv.value.clone()),
            "offset" => offset = parse(&kv.value)?,
            "length" => length = Some(parse(&kv.value)? as usize),
            _ => {}
        }
    }
    let location = location.ok_or_else(|| value_err(t, "external data without a 'location' key"))?;
    let base = base_dir.ok_or_else(|| value_err(t, format!("external data in '{location}' but the model was not loaded from a file")))?;
    let path = base.join(&location);
    let length = length.unwrap_or(needed);
    let file_err = |msg: String| Error::File { path: path.display().to_string(), msg };
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(&path).map_err(|e| file_err(format!("external data of '{}': {e}", t.name)))?;
    f.seek(SeekFrom::Start(offset)).map_err(|e| file_err(format!("seek to {offset}: {e}")))?;
    let mut buf = vec![0u8; length];
    f.read_exact(&mut buf).map_err(|e| file_err(format!("reading {length} bytes at {offset} for '{}': {e}", t.name)))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_protobuf::StringStringEntryProto;

    fn proto(dtype: DType, dims: &[i64]) -> TensorProto {
        let mut t = TensorProto::new();
        t.name = "t".into();
        t.data_type = dtype.onnx_code();
        t.dims = dims.to_vec();
        t
    }

    #[test]
    fn raw_and_typed_fields_decode() {
        let mut t = proto(DType::F32, &[2]);
        t.raw_data = [1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(tensor_from_proto(&t, None).unwrap(), Tensor::from_f32s(vec![2], vec![1.5, -2.0]));

        let mut t = proto(DType::F16, &[1, 2]);
        t.int32_data = vec![half::f16::from_f32(0.5).to_bits() as i32, half::f16::from_f32(-3.0).to_bits() as i32];
        let got = tensor_from_proto(&t, None).unwrap();
        assert_eq!(got.data.to_f64_vec(), vec![0.5, -3.0]);
        assert_eq!(got.shape, vec![1, 2]);

        let mut t = proto(DType::Bool, &[3]);
        t.int32_data = vec![1, 0, 1];
        assert_eq!(tensor_from_proto(&t, None).unwrap().data, TensorData::Bool(vec![true, false, true]));

        let mut t = proto(DType::I64, &[]);
        t.int64_data = vec![-7];
        assert_eq!(tensor_from_proto(&t, None).unwrap(), Tensor::scalar_i64(-7));
    }

    #[test]
    fn wrong_element_count_names_the_tensor() {
        let mut t = proto(DType::I64, &[3]);
        t.int64_data = vec![1, 2];
        let e = tensor_from_proto(&t, None).unwrap_err().to_string();
        assert!(e.contains("'t'") && e.contains("2 elements"), "{e}");
        let mut t = proto(DType::I64, &[3]);
        t.data_type = 8; // string
        assert!(tensor_from_proto(&t, None).unwrap_err().to_string().contains("element type"));
        let mut t = proto(DType::F32, &[1 << 40, 1 << 40]);
        t.float_data = vec![1.0];
        assert!(tensor_from_proto(&t, None).unwrap_err().to_string().contains("too large"));
    }

    #[test]
    fn external_data_reads_offset_and_length() {
        let dir = std::env::temp_dir().join(format!("quilt-onnx-ext-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut bytes = vec![0xAAu8; 8];
        bytes.extend([3i32, -4].iter().flat_map(|x| x.to_le_bytes()));
        std::fs::write(dir.join("w.bin"), &bytes).unwrap();
        let mut t = proto(DType::I32, &[2]);
        t.data_location = DataLocation::EXTERNAL.into();
        for (k, v) in [("location", "w.bin"), ("offset", "8"), ("length", "8")] {
            let mut kv = StringStringEntryProto::new();
            kv.key = k.into();
            kv.value = v.into();
            t.external_data.push(kv);
        }
        assert_eq!(tensor_from_proto(&t, Some(&dir)).unwrap().data, TensorData::I32(vec![3, -4]));
        let e = tensor_from_proto(&t, None).unwrap_err().to_string();
        assert!(e.contains("not loaded from a file"), "{e}");
        let e = tensor_from_proto(&t, Some(&dir.join("missing"))).unwrap_err().to_string();
        assert!(e.contains("w.bin"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
