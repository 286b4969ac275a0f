//! The pipeline's ONNX models as ORT sessions (one per model, reused for every size), with the
//! export variants adapted from each model's declared inputs: `input_ids` int32/int64,
//! `attention_mask` when the text encoder takes it, timestep int64/float32/float16 of rank 0 or 1.

use std::path::{Path, PathBuf};

use half::f16;
use ort::environment::Environment;
use ort::session::Session;

use crate::runtime::{declared_inputs, run, DeclaredInput, QuiltSessionError, Runtime};
use crate::error::{ModelsError, Result};
use crate::tensor::{HostData, HostTensor};

/// Which execution provider runs the models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ep {
    /// quilt; nodes it declines fall back to ORT's CPU EP (reported).
    Quilt,
    /// ORT's own CPU EP (the reference).
    Cpu,
}

impl Ep {
    pub fn parse(s: &str) -> Result<Ep> {
        match s {
            "quilt" => Ok(Ep::Quilt),
            "cpu" => Ok(Ep::Cpu),
            other => Err(ModelsError::Usage(format!("--ep `{other}`: expected quilt or cpu"))),
        }
    }
}

/// One model: its session, file and declared inputs.
pub struct Model {
    pub path: PathBuf,
    pub session: Session,
    pub inputs: Vec<DeclaredInput>,
    pub outputs: Vec<String>,
    /// quilt declined some nodes, which run on ORT's CPU EP.
    pub fell_back: bool,
    /// The EP the session was built for.
    pub ep: Ep,
    /// The environment the session lives in (ORT's `CopyTensors` takes it).
    pub env: Environment,
}

impl Model {
    pub fn load(runtime: &Runtime, path: &Path, ep: Ep) -> Result<Model> {
        Self::load_with_options(runtime, path, ep, &[])
    }

    /// `options`: quilt EP options (`precision`, `dump_plans`, …) for `Ep::Quilt`.
    pub fn load_with_options(runtime: &Runtime, path: &Path, ep: Ep, options: &[(String, String)]) -> Result<Model> {
        let options: Vec<(&str, &str)> = options.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (session, fell_back) = match ep {
            Ep::Cpu => (runtime.cpu_session(path)?, false),
            Ep::Quilt => match runtime.quilt_session(path, &options, false) {
                Ok(s) => (s, false),
                Err(QuiltSessionError::Declined(_)) => (runtime.quilt_session(path, &options, true).map_err(crate::error::ModelsError::from)?, true),
                Err(QuiltSessionError::Other(e)) => return Err(e),
            },
        };
        let inputs = declared_inputs(&session);
        let outputs = session.outputs().iter().map(|o| o.name().to_string()).collect();
        Ok(Model { path: path.to_path_buf(), session, inputs, outputs, fell_back, ep, env: runtime.env().clone() })
    }

    pub fn input(&self, name: &str) -> Result<&DeclaredInput> {
        self.inputs.iter().find(|i| i.name == name).ok_or_else(|| {
            ModelsError::pipeline(
                &self.path,
                format!("expected an input named `{name}`; the model declares {}", self.inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")),
            )
        })
    }

    pub fn has_input(&self, name: &str) -> bool {
        self.inputs.iter().any(|i| i.name == name)
    }

    /// Runs the model; returns the output named `preferred` (else the first one) as f32.
    pub fn run_f32(&mut self, inputs: Vec<(String, HostTensor)>, preferred: &[&str]) -> Result<(Vec<i64>, Vec<f32>)> {
        let outputs = run(&mut self.session, &inputs).map_err(|e| ModelsError::pipeline(&self.path, e.to_string()))?;
        let pick = preferred.iter().find_map(|p| outputs.iter().position(|(n, _)| n == p)).unwrap_or(0);
        let (name, tensor) = outputs.into_iter().nth(pick).ok_or_else(|| ModelsError::pipeline(&self.path, "the model has no outputs"))?;
        let data = match tensor.data {
            HostData::F32(v) => v,
            HostData::F16(v) => v.into_iter().map(f16::to_f32).collect(),
            other => return Err(ModelsError::pipeline(&self.path, format!("output `{name}` is {}, expected float32 or float16", other.dtype_name()))),
        };
        Ok((tensor.shape, data))
    }
}

/// Token ids (and mask) as the text encoder declares them: int32 or int64.
pub fn ids_tensor(model: &Model, name: &str, rows: &[Vec<i64>]) -> Result<HostTensor> {
    let decl = model.input(name)?;
    let shape = vec![rows.len() as i64, rows.first().map_or(0, |r| r.len()) as i64];
    let flat = rows.iter().flatten().copied();
    let data = match decl.dtype.as_str() {
        "int64" => HostData::I64(flat.collect()),
        "int32" => HostData::I32(flat.map(|v| v as i32).collect()),
        other => return Err(ModelsError::pipeline(&model.path, format!("input `{name}` is {other}; expected int32 or int64"))),
    };
    Ok(HostTensor { shape, data })
}

/// A float tensor in the element type the model declares for `name` (float32 or float16).
pub fn float_tensor(model: &Model, name: &str, shape: Vec<i64>, values: Vec<f32>) -> Result<HostTensor> {
    let decl = model.input(name)?;
    let data = match decl.dtype.as_str() {
        "float32" => HostData::F32(values),
        "float16" => HostData::F16(values.into_iter().map(f16::from_f32).collect()),
        other => return Err(ModelsError::pipeline(&model.path, format!("input `{name}` is {other}; expected float32 or float16"))),
    };
    Ok(HostTensor { shape, data })
}

/// The UNet's timestep: rank 0 (current Optimum) or rank 1 of the batch size (older exports), int64,
/// float32 or float16 as declared.
pub fn timestep_tensor(model: &Model, t: f64, batch: usize) -> Result<HostTensor> {
    let decl = model.input("timestep")?;
    let shape: Vec<i64> = match decl.dims.len() {
        0 => vec![],
        1 => vec![match decl.dims[0] {
            Ok(n) => n,
            Err(_) => batch as i64,
        }],
        n => return Err(ModelsError::pipeline(&model.path, format!("input `timestep` has rank {n}; expected 0 or 1"))),
    };
    let count = shape.iter().product::<i64>().max(1) as usize;
    let data = match decl.dtype.as_str() {
        "float32" => HostData::F32(vec![t as f32; count]),
        "float16" => HostData::F16(vec![f16::from_f64(t); count]),
        "int64" => HostData::I64(vec![t.round() as i64; count]),
        other => return Err(ModelsError::pipeline(&model.path, format!("input `timestep` is {other}; expected int64, float32 or float16"))),
    };
    Ok(HostTensor { shape, data })
}
