//! The check the CLI and the integration tests share: feed the same seeded random inputs to a quilt
//! session and a CPU EP session and compare every output.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ort::session::Session;

use crate::compare::{compare, Comparison, Tolerance};
use crate::error::{ModelsError, Result};
use crate::manifest::{Dim, InputSpec, ModelEntry};
use crate::runtime::{declared_inputs, run};
use crate::tensor::HostTensor;

/// Input specs from the manifest entry if there is one, else from what the session declares
/// (dynamic dims keep their symbol names, to be bound by `--dims`).
pub fn input_specs(entry: Option<&ModelEntry>, session: &Session) -> Result<Vec<(String, InputSpec)>> {
    if let Some(entry) = entry {
        return Ok(entry.inputs.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    }
    declared_inputs(session)
        .into_iter()
        .map(|input| {
            let shape = input
                .dims
                .iter()
                .enumerate()
                .map(|(axis, d)| match d {
                    Ok(n) => Ok(Dim::Fixed(*n)),
                    Err(sym) if !sym.is_empty() => Ok(Dim::Symbol(sym.clone())),
                    Err(_) => Err(ModelsError::Input {
                        input: input.name.clone(),
                        message: format!("axis {axis} is dynamic and unnamed; add the model to the manifest"),
                    }),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((input.name.clone(), InputSpec { dtype: input.dtype.clone(), shape, range: None }))
        })
        .collect()
}

pub fn make_inputs(specs: &[(String, InputSpec)], dims: &BTreeMap<String, i64>, seed: u64) -> Result<Vec<(String, HostTensor)>> {
    specs
        .iter()
        .map(|(name, spec)| {
            let shape = spec.concrete_shape(name, dims)?;
            Ok((name.clone(), HostTensor::random(name, &spec.dtype, &shape, spec.range, seed)?))
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct CaseReport {
    pub outputs: Vec<(String, Comparison)>,
    pub quilt_time: Duration,
    pub cpu_time: Duration,
}

impl CaseReport {
    pub fn passed(&self) -> bool {
        self.outputs.iter().all(|(_, c)| c.passed())
    }

    /// Failure lines, one per failing output, naming it.
    pub fn failures(&self) -> Vec<String> {
        self.outputs
            .iter()
            .filter(|(_, c)| !c.passed())
            .map(|(name, c)| format!("output `{name}`: {}", c.describe()))
            .collect()
    }
}

/// Runs both sessions on `inputs` and compares output by output (matched by name).
pub fn compare_sessions(quilt: &mut Session, cpu: &mut Session, inputs: &[(String, HostTensor)], tol: Tolerance) -> Result<CaseReport> {
    let start = Instant::now();
    let got = run(quilt, inputs).map_err(|e| ModelsError::ort("running with quilt", e))?;
    let quilt_time = start.elapsed();
    let start = Instant::now();
    let want = run(cpu, inputs).map_err(|e| ModelsError::ort("running with the CPU EP", e))?;
    let cpu_time = start.elapsed();
    let outputs = want
        .iter()
        .map(|(name, reference)| {
            let (_, ours) = got.iter().find(|(n, _)| n == name).ok_or_else(|| ModelsError::Output {
                output: name.clone(),
                message: "quilt's session did not produce it".into(),
            })?;
            Ok((name.clone(), compare(ours, reference, tol)))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(CaseReport { outputs, quilt_time, cpu_time })
}

/// `batch=1,height=8,width=8`
pub fn dims_label(dims: &BTreeMap<String, i64>) -> String {
    if dims.is_empty() {
        return "(static shapes)".into();
    }
    dims.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}
