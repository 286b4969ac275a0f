//! ONNX Runtime with quilt registered: one process-wide environment (ORT allows one), sessions
//! placed on quilt's reference device or on ORT's own CPU EP, and host-tensor in/out.

use std::path::{Path, PathBuf};

use half::{bf16, f16};
use ort::environment::Environment;
use ort::memory::DeviceType;
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

use crate::error::{ModelsError, Result};
use crate::tensor::{HostData, HostTensor};

/// The EP name quilt's factory reports.
pub const EP_NAME: &str = "QuiltExecutionProvider";
/// The registration name we give the library.
pub const REGISTRATION_NAME: &str = "quilt";
/// The error ORT raises when `session.disable_cpu_ep_fallback=1` and some node went to the CPU EP,
/// i.e. quilt declined at least one node.
const FALLBACK_DISABLED_MARKER: &str = "fallback to CPU EP has been explicitly disabled";

/// Where the two shared libraries are.
#[derive(Debug, Clone)]
pub struct RuntimePaths {
    pub ort_lib: PathBuf,
    pub ep_lib: PathBuf,
}

impl RuntimePaths {
    /// Explicit paths win; then `ORT_DYLIB_PATH` / `QUILT_ORT_LIB` and `QUILT_EP_LIB`; the EP
    /// defaults to `target/release/libquilt_ep.so`. Both files must exist.
    pub fn resolve(ort_lib: Option<PathBuf>, ep_lib: Option<PathBuf>) -> Result<RuntimePaths> {
        let env_path = |key: &str| std::env::var_os(key).filter(|v| !v.is_empty()).map(PathBuf::from);
        let ort_lib = ort_lib.or_else(|| env_path("ORT_DYLIB_PATH")).or_else(|| env_path("QUILT_ORT_LIB")).ok_or_else(|| {
            ModelsError::Usage(
                "no ONNX Runtime library: pass --ort-lib or set ORT_DYLIB_PATH (`source scripts/setup.sh` sets it)".into(),
            )
        })?;
        let ep_lib = ep_lib
            .or_else(|| env_path("QUILT_EP_LIB"))
            .unwrap_or_else(|| PathBuf::from("target/release/libquilt_ep.so"));
        for (what, path, hint) in [
            ("ONNX Runtime library", &ort_lib, "run `bash scripts/setup.sh`"),
            ("quilt EP library", &ep_lib, "run `cargo build --release -p quilt-capi`"),
        ] {
            if !path.is_file() {
                return Err(ModelsError::Usage(format!("{what} {} does not exist ({hint})", path.display())));
            }
        }
        Ok(RuntimePaths { ort_lib, ep_lib })
    }
}

/// ORT loaded, its environment built, quilt registered with its reference device enabled.
pub struct Runtime {
    env: Environment,
    pub paths: RuntimePaths,
}

/// Why a quilt session could not be built.
#[derive(Debug)]
pub enum QuiltSessionError {
    /// Fallback was disabled and quilt did not take every node.
    Declined(String),
    Other(ModelsError),
}

impl std::fmt::Display for QuiltSessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuiltSessionError::Declined(msg) => write!(f, "quilt declined some node(s): {msg}"),
            QuiltSessionError::Other(e) => write!(f, "{e}"),
        }
    }
}

impl From<QuiltSessionError> for ModelsError {
    fn from(e: QuiltSessionError) -> ModelsError {
        match e {
            QuiltSessionError::Declined(msg) => ModelsError::ort("building the quilt session (quilt declined some node)", msg),
            QuiltSessionError::Other(e) => e,
        }
    }
}

impl Runtime {
    /// Loads ORT from `paths.ort_lib` and registers quilt. Only one per process (an ORT rule that
    /// the `ort` crate enforces); share it, e.g. through a `OnceLock`.
    pub fn new(paths: RuntimePaths) -> Result<Runtime> {
        // quilt offers its CPU reference device only when this is set at registration time.
        // SAFETY (edition-2021 safe API, but still process-global): set before any ORT thread exists.
        std::env::set_var("QUILT_REFERENCE_DEVICE", "1");
        let builder = ort::init_from(&paths.ort_lib)
            .map_err(|e| ModelsError::ort(format!("loading {}", paths.ort_lib.display()), e))?;
        let env = builder.with_name("quilt").with_telemetry(false).build().map_err(|e| ModelsError::ort("creating the ORT environment", e))?;
        env.register_ep_library(REGISTRATION_NAME, &paths.ep_lib)
            .map_err(|e| ModelsError::ort(format!("registering {}", paths.ep_lib.display()), e))?;
        let runtime = Runtime { env, paths };
        if runtime.device_count(EP_NAME) == 0 {
            return Err(ModelsError::ort(
                format!("registering {}", runtime.paths.ep_lib.display()),
                format!("{EP_NAME} offers no device even with QUILT_REFERENCE_DEVICE=1"),
            ));
        }
        Ok(runtime)
    }

    /// The ORT environment (for calls that take it, e.g. `CopyTensors`).
    pub fn env(&self) -> &Environment {
        &self.env
    }

    pub fn device_count(&self, ep: &str) -> usize {
        self.env.devices().filter(|d| d.ep().is_ok_and(|n| n == ep)).count()
    }

    /// Whether quilt offers a GPU device (an NVIDIA GPU with a working driver); its sessions then run
    /// there, otherwise on quilt's CPU reference device.
    pub fn quilt_has_gpu(&self) -> bool {
        self.quilt_devices().any(|d| d.hardware_device().ty() == DeviceType::GPU)
    }

    /// Every device quilt offers.
    fn quilt_devices(&self) -> impl Iterator<Item = ort::device::Device<'_>> + '_ {
        self.env.devices().filter(|d| d.ep().is_ok_and(|n| n == EP_NAME))
    }

    /// A session with every node on quilt's GPU devices when it offers any, else on its reference
    /// device. `options` are quilt option keys without a prefix
    /// (`dump_plans`, `log_level`). With `allow_fallback == false`, a node quilt declines makes this fail
    /// with [`QuiltSessionError::Declined`].
    pub fn quilt_session(&self, model: &Path, options: &[(&str, &str)], allow_fallback: bool) -> Result<Session, QuiltSessionError> {
        let context = format!("building a quilt session for {}", model.display());
        let err = |e: &dyn std::fmt::Display| QuiltSessionError::Other(ModelsError::ort(&context, e));
        let prefixed: Vec<(String, String)> = options.iter().map(|(k, v)| (format!("{EP_NAME}.{k}"), v.to_string())).collect();
        let mut builder = Session::builder(&self.env).map_err(|e| err(&e))?;
        if !allow_fallback {
            builder = builder.with_config_entry("session.disable_cpu_ep_fallback", "1").map_err(|e| err(&e))?;
        }
        let on_gpu = self.quilt_has_gpu();
        let devices = self.quilt_devices().filter(|d| !on_gpu || d.hardware_device().ty() == DeviceType::GPU);
        let mut builder = builder.with_devices(devices, Some(&prefixed)).map_err(|e| err(&e))?;
        builder.commit_from_file(model).map_err(|e| {
            let message = e.to_string();
            if !allow_fallback && message.contains(FALLBACK_DISABLED_MARKER) {
                QuiltSessionError::Declined(message)
            } else {
                err(&message)
            }
        })
    }

    /// The reference: the same model on ORT's own CPU EP (chosen explicitly, so the session's
    /// device policy can never pick quilt's reference device instead).
    pub fn cpu_session(&self, model: &Path) -> Result<Session> {
        let context = format!("building a CPU EP session for {}", model.display());
        let devices = self.env.devices().filter(|d| d.ep().is_ok_and(|n| n == "CPUExecutionProvider"));
        Session::builder(&self.env)
            .map_err(|e| ModelsError::ort(&context, e))?
            .with_devices(devices, None)
            .map_err(|e| ModelsError::ort(&context, e))?
            .commit_from_file(model)
            .map_err(|e| ModelsError::ort(&context, e))
    }
}

/// A graph input as the session declares it: element type and dims, `-1` dims with their symbol.
#[derive(Debug, Clone)]
pub struct DeclaredInput {
    pub name: String,
    pub dtype: String,
    /// `Ok(size)` for fixed dims, `Err(symbol)` for dynamic ones (symbol may be empty).
    pub dims: Vec<Result<i64, String>>,
}

pub fn declared_inputs(session: &Session) -> Vec<DeclaredInput> {
    session
        .inputs()
        .iter()
        .map(|outlet| {
            let (dtype, dims) = match outlet.dtype() {
                ValueType::Tensor { ty, shape, dimension_symbols } => (
                    dtype_name(*ty).to_string(),
                    shape
                        .iter()
                        .zip(dimension_symbols.iter())
                        .map(|(&d, sym)| if d >= 0 { Ok(d) } else { Err(sym.clone()) })
                        .collect(),
                ),
                other => (format!("{other:?}"), Vec::new()),
            };
            DeclaredInput { name: outlet.name().to_string(), dtype, dims }
        })
        .collect()
}

pub fn dtype_name(ty: TensorElementType) -> &'static str {
    match ty {
        TensorElementType::Float32 => "float32",
        TensorElementType::Float64 => "float64",
        TensorElementType::Float16 => "float16",
        TensorElementType::Bfloat16 => "bfloat16",
        TensorElementType::Int64 => "int64",
        TensorElementType::Int32 => "int32",
        TensorElementType::Int8 => "int8",
        TensorElementType::Uint8 => "uint8",
        TensorElementType::Bool => "bool",
        _ => "unsupported",
    }
}

fn to_value(name: &str, tensor: &HostTensor) -> Result<DynValue> {
    let shape = tensor.shape.clone();
    let made = match &tensor.data {
        HostData::F32(v) => Tensor::from_array((shape, v.clone())).map(|t| t.into_dyn()),
        HostData::F64(v) => Tensor::from_array((shape, v.clone())).map(|t| t.into_dyn()),
        HostData::F16(v) => Tensor::from_array((shape, v.clone())).map(|t| t.into_dyn()),
        HostData::BF16(v) => Tensor::from_array((shape, v.clone())).map(|t| t.into_dyn()),
        HostData::I64(v) => Tensor::from_array((shape, v.clone())).map(|t| t.into_dyn()),
        HostData::I32(v) => Tensor::from_array((shape, v.clone())).map(|t| t.into_dyn()),
        HostData::I8(v) => Tensor::from_array((shape, v.clone())).map(|t| t.into_dyn()),
        HostData::U8(v) => Tensor::from_array((shape, v.clone())).map(|t| t.into_dyn()),
        HostData::Bool(v) => Tensor::from_array((shape, v.clone())).map(|t| t.into_dyn()),
    };
    made.map_err(|e| ModelsError::Input { input: name.to_string(), message: e.to_string() })
}

fn from_value(name: &str, value: &DynValue) -> Result<HostTensor> {
    let err = |message: String| ModelsError::Output { output: name.to_string(), message };
    let ty = match value.dtype() {
        ValueType::Tensor { ty, .. } => *ty,
        other => return Err(err(format!("not a tensor: {other:?}"))),
    };
    macro_rules! extract {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(|e| err(e.to_string()))?;
            HostTensor { shape: shape.to_vec(), data: HostData::$variant(data.to_vec()) }
        }};
    }
    Ok(match ty {
        TensorElementType::Float32 => extract!(f32, F32),
        TensorElementType::Float64 => extract!(f64, F64),
        TensorElementType::Float16 => extract!(f16, F16),
        TensorElementType::Bfloat16 => extract!(bf16, BF16),
        TensorElementType::Int64 => extract!(i64, I64),
        TensorElementType::Int32 => extract!(i32, I32),
        TensorElementType::Int8 => extract!(i8, I8),
        TensorElementType::Uint8 => extract!(u8, U8),
        TensorElementType::Bool => extract!(bool, Bool),
        other => return Err(err(format!("element type {other:?} is not supported by the runner"))),
    })
}

/// Runs `session` on named host tensors; returns every output in the session's output order.
pub fn run(session: &mut Session, inputs: &[(String, HostTensor)]) -> Result<Vec<(String, HostTensor)>> {
    let values = inputs
        .iter()
        .map(|(name, t)| Ok((name.clone(), to_value(name, t)?)))
        .collect::<Result<Vec<(String, DynValue)>>>()?;
    let output_names: Vec<String> = session.outputs().iter().map(|o| o.name().to_string()).collect();
    let outputs = session.run(values).map_err(|e| ModelsError::ort("running the session", e))?;
    output_names
        .iter()
        .map(|name| {
            let value = outputs.get(name.as_str()).ok_or_else(|| ModelsError::Output {
                output: name.clone(),
                message: "missing from the session's results".into(),
            })?;
            Ok((name.clone(), from_value(name, value)?))
        })
        .collect()
}
