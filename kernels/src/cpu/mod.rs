//! The CPU reference interpreter of a `Plan` (f32 math, f16/bf16 storage). (Being written.)

use quilt_rewrites::{Plan, Tensor};

use crate::error::{Error, Result};

/// A plan prepared for the CPU.
pub struct CpuExecutable {
    plan: Plan,
}

impl CpuExecutable {
    /// Checks that every step is one the interpreter implements and every weight is loaded.
    pub fn new(plan: Plan) -> Result<CpuExecutable> {
        Ok(CpuExecutable { plan })
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Runs the plan on inputs given in `plan.inputs` order; returns outputs in `plan.outputs` order.
    /// Input shapes bind the plan's symbols; a wrong rank, dtype or size is an `Error::Input`.
    pub fn run(&self, _inputs: &[Tensor]) -> Result<Vec<Tensor>> {
        Err(Error::Plan("the CPU interpreter is being written".into()))
    }
}
