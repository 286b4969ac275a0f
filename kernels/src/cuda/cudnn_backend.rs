//! cuDNN's backend (graph) API in safe pieces: descriptors that destroy themselves, attribute
//! setters and getters, tensors, operation graphs, heuristic queries and variant packs. Shared by
//! the convolution graphs (`conv::graph_api`) and the fused attention graphs (`sdpa`).

use std::ffi::{c_char, c_void};

use cudarc::cudnn::sys;
use sys::cudnnBackendAttributeName_t as A;
use sys::cudnnBackendAttributeType_t as T;
use sys::cudnnBackendDescriptorType_t as D;

/// A status as an error naming the call, with cuDNN's own last message when it has one.
pub(crate) fn check(status: sys::cudnnStatus_t, what: &dyn Fn() -> String) -> Result<(), String> {
    if status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        return Ok(());
    }
    let mut buf = [0 as c_char; 512];
    // SAFETY: writes at most `buf.len()` bytes, NUL-terminated.
    unsafe { sys::cudnnGetLastErrorString(buf.as_mut_ptr(), buf.len()) };
    // SAFETY: NUL-terminated above (the buffer was zeroed and cuDNN terminates its message).
    let msg = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().trim().to_string();
    Err(if msg.is_empty() { format!("{}: {status:?}", what()) } else { format!("{}: {status:?} ({msg})", what()) })
}

/// One backend descriptor, destroyed on drop.
pub(crate) struct Desc(pub sys::cudnnBackendDescriptor_t);

impl Drop for Desc {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: created by cudnnBackendCreateDescriptor and destroyed once.
            let _ = unsafe { sys::cudnnBackendDestroyDescriptor(self.0) };
        }
    }
}

impl Desc {
    pub fn new(kind: D) -> Result<Desc, String> {
        let mut d = std::ptr::null_mut();
        // SAFETY: creates a descriptor of a valid kind.
        check(unsafe { sys::cudnnBackendCreateDescriptor(kind, &mut d) }, &|| format!("cudnnBackendCreateDescriptor({kind:?})"))?;
        Ok(Desc(d))
    }

    /// Sets `name` to `values`, whose element type must be the C type that `ty` names.
    pub fn set<V: Copy>(&self, name: A, ty: T, values: &[V]) -> Result<(), String> {
        // SAFETY: `values` holds `len` elements of the type `ty` names (the callers below).
        check(unsafe { sys::cudnnBackendSetAttribute(self.0, name, ty, values.len() as i64, values.as_ptr() as *const c_void) }, &|| format!("cudnnBackendSetAttribute({name:?})"))
    }

    pub fn set_i64s(&self, name: A, values: &[i64]) -> Result<(), String> {
        self.set(name, T::CUDNN_TYPE_INT64, values)
    }

    pub fn set_descs(&self, name: A, descs: &[&Desc]) -> Result<(), String> {
        let raw: Vec<sys::cudnnBackendDescriptor_t> = descs.iter().map(|d| d.0).collect();
        self.set(name, T::CUDNN_TYPE_BACKEND_DESCRIPTOR, &raw)
    }

    pub fn finalize(&self, what: &str) -> Result<(), String> {
        // SAFETY: a live descriptor.
        check(unsafe { sys::cudnnBackendFinalize(self.0) }, &|| format!("finalizing the {what}"))
    }

    /// Reads up to `out.len()` elements of `name`; returns how many cuDNN has.
    pub fn get<V: Copy>(&self, name: A, ty: T, out: &mut [V]) -> Result<usize, String> {
        let mut n = 0i64;
        // SAFETY: `out` has room for the requested count of `ty`'s C type.
        check(unsafe { sys::cudnnBackendGetAttribute(self.0, name, ty, out.len() as i64, &mut n, out.as_mut_ptr() as *mut c_void) }, &|| format!("cudnnBackendGetAttribute({name:?})"))?;
        Ok(n.max(0) as usize)
    }

    pub fn get_i64(&self, name: A) -> Result<i64, String> {
        let mut v = [0i64];
        self.get(name, T::CUDNN_TYPE_INT64, &mut v)?;
        Ok(v[0])
    }

    /// Reads descriptor-valued `name` into `count` fresh descriptors of `kind`.
    pub fn get_descs(&self, name: A, kind: D, count: usize) -> Result<Vec<Desc>, String> {
        let descs = (0..count).map(|_| Desc::new(kind)).collect::<Result<Vec<_>, _>>()?;
        let mut raw: Vec<sys::cudnnBackendDescriptor_t> = descs.iter().map(|d| d.0).collect();
        let got = self.get(name, T::CUDNN_TYPE_BACKEND_DESCRIPTOR, &mut raw)?;
        Ok(descs.into_iter().take(got).collect())
    }
}

/// The largest power of two up to 16 dividing every pointer: the byte alignment a graph's
/// tensors declare (cuDNN picks engines by it).
pub(crate) fn byte_alignment(ptrs: impl IntoIterator<Item = u64>) -> u8 {
    1 << ptrs.into_iter().map(|p| p.trailing_zeros()).min().unwrap_or(4).min(4)
}

/// How a tensor of an operation graph is bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Binding {
    /// A device buffer in the variant pack.
    Device,
    /// An intermediate that never leaves the engine (no pointer).
    Virtual,
    /// A scalar passed by value: its variant-pack pointer is a host pointer read at execution.
    ByValue,
}

/// A finalized tensor descriptor: `dims` and element `strides` in the graph's dimension order.
pub(crate) fn tensor(uid: i64, dtype: sys::cudnnDataType_t, dims: &[i64], strides: &[i64], binding: Binding, align: i64) -> Result<Desc, String> {
    let t = Desc::new(D::CUDNN_BACKEND_TENSOR_DESCRIPTOR)?;
    t.set(A::CUDNN_ATTR_TENSOR_DATA_TYPE, T::CUDNN_TYPE_DATA_TYPE, &[dtype])?;
    t.set_i64s(A::CUDNN_ATTR_TENSOR_DIMENSIONS, dims)?;
    t.set_i64s(A::CUDNN_ATTR_TENSOR_STRIDES, strides)?;
    t.set_i64s(A::CUDNN_ATTR_TENSOR_UNIQUE_ID, &[uid])?;
    t.set_i64s(A::CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, &[align])?;
    match binding {
        Binding::Device => {}
        Binding::Virtual => t.set(A::CUDNN_ATTR_TENSOR_IS_VIRTUAL, T::CUDNN_TYPE_BOOLEAN, &[true])?,
        Binding::ByValue => t.set(A::CUDNN_ATTR_TENSOR_IS_BY_VALUE, T::CUDNN_TYPE_BOOLEAN, &[true])?,
    }
    t.finalize(&format!("tensor {uid} {dims:?}"))?;
    Ok(t)
}

/// A finalized operation graph of `ops` on `handle`.
pub(crate) fn operation_graph(handle: sys::cudnnHandle_t, ops: &[&Desc], dynamic: bool) -> Result<Desc, String> {
    let g = Desc::new(D::CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR)?;
    g.set(A::CUDNN_ATTR_OPERATIONGRAPH_HANDLE, T::CUDNN_TYPE_HANDLE, &[handle])?;
    g.set_descs(A::CUDNN_ATTR_OPERATIONGRAPH_OPS, ops)?;
    if dynamic {
        g.set(A::CUDNN_ATTR_OPERATIONGRAPH_IS_DYNAMIC_SHAPE_ENABLED, T::CUDNN_TYPE_BOOLEAN, &[true])?;
    }
    g.finalize("operation graph")?;
    Ok(g)
}

/// The engine configurations cuDNN's heuristics in `mode` propose for `op_graph`, best first.
pub(crate) fn engine_configs(op_graph: &Desc, mode: sys::cudnnBackendHeurMode_t) -> Result<Vec<Desc>, String> {
    let heur = Desc::new(D::CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR)?;
    heur.set_descs(A::CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, &[op_graph])?;
    heur.set(A::CUDNN_ATTR_ENGINEHEUR_MODE, T::CUDNN_TYPE_HEUR_MODE, &[mode])?;
    heur.finalize(&format!("{mode:?} heuristics"))?;
    let mut count = 0i64;
    // SAFETY: asks for the number of results only (no output array).
    check(
        unsafe { sys::cudnnBackendGetAttribute(heur.0, A::CUDNN_ATTR_ENGINEHEUR_RESULTS, T::CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &mut count, std::ptr::null_mut()) },
        &|| "counting heuristic results".into(),
    )?;
    heur.get_descs(A::CUDNN_ATTR_ENGINEHEUR_RESULTS, D::CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, count.max(0) as usize)
}

/// A finalized execution plan of the engine configuration `cfg` on `handle`, through
/// `kernel_cache` when given, and the workspace it needs (bytes).
pub(crate) fn execution_plan(handle: sys::cudnnHandle_t, cfg: &Desc, kernel_cache: Option<&Desc>, what: &str) -> Result<(Desc, usize), String> {
    let plan = Desc::new(D::CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR)?;
    plan.set(A::CUDNN_ATTR_EXECUTION_PLAN_HANDLE, T::CUDNN_TYPE_HANDLE, &[handle])?;
    plan.set_descs(A::CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, &[cfg])?;
    if let Some(cache) = kernel_cache {
        plan.set_descs(A::CUDNN_ATTR_EXECUTION_PLAN_KERNEL_CACHE, &[cache])?;
    }
    plan.finalize(&format!("execution plan of {what}"))?;
    let workspace = plan.get_i64(A::CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE)?.max(0) as usize;
    Ok((plan, workspace))
}

/// A finalized variant pack: `ptrs[i]` for tensor `uids[i]` (host pointers for by-value
/// tensors), and the workspace.
pub(crate) fn variant_pack(uids: &[i64], ptrs: &[*mut c_void], workspace: u64) -> Result<Desc, String> {
    let pack = Desc::new(D::CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR)?;
    pack.set_i64s(A::CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, uids)?;
    pack.set(A::CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, T::CUDNN_TYPE_VOID_PTR, ptrs)?;
    pack.set(A::CUDNN_ATTR_VARIANT_PACK_WORKSPACE, T::CUDNN_TYPE_VOID_PTR, &[workspace as *mut c_void])?;
    pack.finalize("variant pack")?;
    Ok(pack)
}

/// A kernel cache for dynamic-shape graphs like `op_graph`: plans finalized through it share the
/// kernels cuDNN compiles at run time, so a new shape of the class compiles nothing.
pub(crate) fn kernel_cache(op_graph: &Desc) -> Result<Desc, String> {
    let cache = Desc::new(D::CUDNN_BACKEND_KERNEL_CACHE_DESCRIPTOR)?;
    cache.set_descs(A::CUDNN_ATTR_KERNEL_CACHE_OPERATION_GRAPH, &[op_graph])?;
    cache.finalize("kernel cache")?;
    Ok(cache)
}
