//! Binding the plan's symbols from the actual input shapes, and evaluating every buffer's shape
//! (shared by the CPU and CUDA backends, so both accept and reject the same inputs).

use std::collections::HashMap;

use quilt_rewrites::plan::{BufferKind, Step};
use quilt_rewrites::sym::shape_string;
use quilt_rewrites::{DType, Plan, SymDim, Tensor};

use crate::error::{Error, Result};
use crate::plan_check::view_error;

/// Symbol values for one run.
#[derive(Default, Debug)]
pub struct Bindings(HashMap<String, i64>);

impl Bindings {
    pub fn eval(&self, d: &SymDim) -> std::result::Result<i64, String> {
        d.eval(&|s| self.0.get(s).copied())
    }
}

/// Checks every input's dtype, rank and element count, binds each symbol that appears as a bare
/// dim, then checks every input dim (constants and expressions) against the actual size.
pub(crate) fn bind_inputs(plan: &Plan, inputs: &[Tensor]) -> Result<Bindings> {
    check_input_count(plan, inputs.len())?;
    for (v, t) in plan.inputs.iter().zip(inputs) {
        let numel: usize = t.shape.iter().product();
        if numel != t.data.len() {
            return Err(Error::Input {
                name: v.name.clone(),
                msg: format!("shape {:?} has {numel} elements but the data holds {}", t.shape, t.data.len()),
            });
        }
    }
    let described: Vec<(DType, &[usize])> = inputs.iter().map(|t| (t.dtype(), t.shape.as_slice())).collect();
    bind_shapes(plan, &described)
}

fn check_input_count(plan: &Plan, given: usize) -> Result<()> {
    if given != plan.inputs.len() {
        let names: Vec<&str> = plan.inputs.iter().map(|v| v.name.as_str()).collect();
        return Err(Error::Plan(format!("expected {} inputs ({}), got {given}", plan.inputs.len(), names.join(", "))));
    }
    Ok(())
}

/// [`bind_inputs`] for inputs known only by dtype and shape (the CUDA backend's device-resident
/// inputs): the same checks and the same messages.
pub(crate) fn bind_shapes(plan: &Plan, inputs: &[(DType, &[usize])]) -> Result<Bindings> {
    check_input_count(plan, inputs.len())?;
    let mut bindings = Bindings::default();
    let mut bound_by: HashMap<String, (String, usize)> = HashMap::new();
    for (v, &(dtype, shape)) in plan.inputs.iter().zip(inputs) {
        let err = |msg: String| Error::Input { name: v.name.clone(), msg };
        let ty = &plan.buffers[v.buffer].ty;
        if dtype != ty.dtype {
            return Err(err(format!("dtype {dtype} given, the model expects {}", ty.dtype)));
        }
        if shape.len() != ty.rank() {
            return Err(err(format!("rank {} given (shape {shape:?}), the model expects rank {} ({ty})", shape.len(), ty.rank())));
        }
        for (axis, (d, &actual)) in ty.shape.iter().zip(shape).enumerate() {
            if let SymDim::Sym(s) = d {
                match bindings.0.get(&**s) {
                    None => {
                        bindings.0.insert(s.to_string(), actual as i64);
                        bound_by.insert(s.to_string(), (v.name.clone(), axis));
                    }
                    Some(&prev) if prev != actual as i64 => {
                        let (first, first_axis) = &bound_by[&**s];
                        return Err(err(format!(
                            "axis {axis} is {actual}, but symbol '{s}' is {prev} (from input '{first}' axis {first_axis})"
                        )));
                    }
                    Some(_) => {}
                }
            }
        }
    }
    for (v, &(_, shape)) in plan.inputs.iter().zip(inputs) {
        let ty = &plan.buffers[v.buffer].ty;
        for (axis, (d, &actual)) in ty.shape.iter().zip(shape).enumerate() {
            let expected = bindings.eval(d).map_err(|e| Error::Input { name: v.name.clone(), msg: format!("axis {axis} ({d}): {e}") })?;
            if expected != actual as i64 {
                return Err(Error::Input {
                    name: v.name.clone(),
                    msg: format!("axis {axis} is {actual}, expected {d} = {expected} (shape {shape:?} given, {ty} expected)"),
                });
            }
        }
    }
    Ok(bindings)
}

/// Every buffer's concrete shape; errors name the step that writes the buffer, or the view's
/// node. A view must have as many elements as the buffer it views (the plan knows that only
/// symbolically; this is where the sizes are known).
pub(crate) fn buffer_shapes(plan: &Plan, bindings: &Bindings, producer: &[Option<usize>]) -> Result<Vec<Vec<usize>>> {
    let shapes = plan
        .buffers
        .iter()
        .enumerate()
        .map(|(b, buf)| {
            let err = |msg: String| match (producer[b], &buf.kind) {
                (Some(i), _) => {
                    let Step::Op(s) = &plan.steps[i];
                    Error::Step { node: s.node.clone(), op: s.op.name(), msg }
                }
                (None, BufferKind::View { node, .. }) => view_error(node, format!("view %{b}: {msg}")),
                (None, BufferKind::Weight(_)) => Error::Plan(format!("weight buffer %{b}: {msg}")),
                _ => Error::Plan(format!("buffer %{b}: {msg}")),
            };
            buf.ty
                .shape
                .iter()
                .enumerate()
                .map(|(axis, d)| {
                    let v = bindings.eval(d).map_err(|e| err(format!("output shape axis {axis} ({d}): {e}")))?;
                    usize::try_from(v).map_err(|_| err(format!("output shape axis {axis} ({d}) is {v}, negative")))
                })
                .collect()
        })
        .collect::<Result<Vec<Vec<usize>>>>()?;
    for (b, buf) in plan.buffers.iter().enumerate() {
        if let BufferKind::View { of, node } = &buf.kind {
            let Some(theirs) = shapes.get(*of) else {
                return Err(view_error(node, format!("view %{b} of %{of}, which does not exist")));
            };
            let mine = &shapes[b];
            let (n, m) = (mine.iter().product::<usize>(), theirs.iter().product::<usize>());
            if n != m {
                return Err(view_error(
                    node,
                    format!("view %{b} {} = {mine:?} has {n} elements, the buffer it views (%{of}, {theirs:?}) has {m}", shape_string(&buf.ty.shape)),
                ));
            }
        }
    }
    Ok(shapes)
}
