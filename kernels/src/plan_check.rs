//! The structural checks every backend makes once per plan, before it runs anything: plan inputs
//! bound to input buffers, weights of the declared type and shape and actually loaded, every buffer
//! reference in range, every intermediate written exactly once before it is read (directly or
//! through a view), views of an existing buffer of their dtype with no cycle, outputs written.

use quilt_rewrites::plan::{BufferKind, OpStep, Step};
use quilt_rewrites::Plan;

use crate::error::{Error, Result};

/// Checks `plan`'s structure; `step_check` adds a backend's own per-step checks (run after the
/// step's buffer checks; its message is reported against the step's node and op). Returns, per
/// buffer, the index of the step that writes it.
pub(crate) fn check_structure(plan: &Plan, step_check: impl Fn(&OpStep) -> std::result::Result<(), String>) -> Result<Vec<Option<usize>>> {
    let n = plan.buffers.len();
    let mut producer: Vec<Option<usize>> = vec![None; n];
    for (i, v) in plan.inputs.iter().enumerate() {
        match plan.buffers.get(v.buffer).map(|b| &b.kind) {
            Some(BufferKind::Input(j)) if *j == i => {}
            _ => return Err(Error::Plan(format!("input '{}' is not bound to an input buffer with index {i}", v.name))),
        }
    }
    for (b, buf) in plan.buffers.iter().enumerate() {
        match &buf.kind {
            BufferKind::Input(i) if *i >= plan.inputs.len() => {
                return Err(Error::Plan(format!("buffer %{b} is input {i}, but the plan has {} inputs", plan.inputs.len())))
            }
            BufferKind::Weight(t) => {
                let declared: Option<Vec<usize>> = buf.ty.shape.iter().map(|d| d.as_const().map(|c| c as usize)).collect();
                if t.dtype() != buf.ty.dtype || declared.as_deref() != Some(&t.shape[..]) || t.numel() != t.data.len() {
                    return Err(Error::Plan(format!(
                        "weight buffer %{b} holds {}{:?}, its type says {}",
                        t.dtype(),
                        t.shape,
                        buf.ty
                    )));
                }
            }
            BufferKind::View { of, node } => check_view(plan, b, *of).map_err(|msg| view_error(node, msg))?,
            _ => {}
        }
    }
    // Every read below is of a buffer's owner's memory (views checked above, so `owner` ends).
    for (index, step) in plan.steps.iter().enumerate() {
        let Step::Op(s) = step;
        let fail = |msg: String| Error::Step { node: s.node.clone(), op: s.op.name(), msg };
        for (slot, b) in s.inputs.iter().enumerate() {
            let Some(b) = *b else { continue };
            if b >= n {
                return Err(fail(format!("input {slot} refers to buffer %{b}, which does not exist")));
            }
            let owner = plan.owner(b);
            let through = if owner == b { String::new() } else { format!(" (through view %{b})") };
            match &plan.buffers[owner].kind {
                BufferKind::MissingWeight(name) => {
                    return Err(fail(format!("input {slot} is weight '{name}'{through}, whose data was not loaded")))
                }
                BufferKind::Intermediate if producer[owner].is_none() => {
                    return Err(fail(format!("input {slot} (buffer %{owner}{through}) is read before any step writes it")))
                }
                _ => {}
            }
        }
        for &b in &s.outputs {
            match plan.buffers.get(b).map(|x| &x.kind) {
                Some(BufferKind::Intermediate) if producer[b].is_none() => producer[b] = Some(index),
                Some(BufferKind::Intermediate) => return Err(fail(format!("buffer %{b} is written twice"))),
                Some(BufferKind::View { of, .. }) => return Err(fail(format!("writes buffer %{b}, which is a view of %{of} (views are never written)"))),
                Some(_) => return Err(fail(format!("writes buffer %{b}, which is an input or weight"))),
                None => return Err(fail(format!("writes buffer %{b}, which does not exist"))),
            }
        }
        step_check(s).map_err(fail)?;
    }
    for v in &plan.outputs {
        if v.buffer >= n {
            return Err(Error::Plan(format!("output '{}' refers to buffer %{}, which does not exist", v.name, v.buffer)));
        }
        let owner = plan.owner(v.buffer);
        match &plan.buffers[owner].kind {
            BufferKind::Intermediate if producer[owner].is_none() => {
                return Err(Error::Plan(format!("output '{}' (buffer %{owner}) is never written", v.name)))
            }
            BufferKind::MissingWeight(w) => {
                return Err(Error::Plan(format!("output '{}' is weight '{w}', whose data was not loaded", v.name)))
            }
            _ => {}
        }
    }
    Ok(producer)
}

/// A view's error: named by the view's node (`op` "view": Reshape, Identity and the like).
pub(crate) fn view_error(node: &str, msg: String) -> Error {
    Error::Step { node: node.to_string(), op: "view".into(), msg }
}

/// View `b` of `of`: `of` exists, has `b`'s dtype, and following views from `b` reaches a
/// buffer that is not a view (no cycle).
fn check_view(plan: &Plan, b: usize, of: usize) -> std::result::Result<(), String> {
    let Some(source) = plan.buffers.get(of) else {
        return Err(format!("buffer %{b} is a view of %{of}, which does not exist"));
    };
    if source.ty.dtype != plan.buffers[b].ty.dtype {
        return Err(format!("buffer %{b} ({}) is a view of %{of} ({}): a view keeps the dtype", plan.buffers[b].ty, source.ty));
    }
    if matches!(plan.buffers[plan.owner(b)].kind, BufferKind::View { .. }) {
        return Err(format!("buffer %{b} is a view, and following views from it reaches no buffer that owns memory (a cycle)"));
    }
    Ok(())
}
