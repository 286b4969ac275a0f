//! CUDA graphs: a run's launches recorded once by stream capture and replayed with one
//! `cuGraphLaunch`.
//!
//! Capture uses `CU_STREAM_CAPTURE_MODE_THREAD_LOCAL`: a call on the capturing thread that is
//! not allowed while capturing (a synchronous copy, `cuMemAlloc`, a stream synchronize) fails the
//! capture instead of silently running, while other threads (ORT's allocator, say) are not
//! affected. A failed capture leaves the stream usable; the caller then runs uncaptured.
//!
//! What a graph bakes in: every kernel's arguments (device addresses included), cuBLAS's and
//! cuDNN's choices and workspaces, memset targets. The executor therefore captures only work
//! whose addresses stay fixed across runs (its arena, weights, per-shape constants, the
//! workspaces) and copies the caller's inputs and outputs in and out around the replay.

use cudarc::driver::{result, sys};

use super::device::CudaDevice;
use crate::error::{Error, Result};

fn graph_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Device(format!("{what}: {e}"))
}

/// An instantiated graph, destroyed on drop.
pub struct CudaGraph {
    exec: sys::CUgraphExec,
    /// Nodes in the captured graph (kernels, library kernels, memsets, copies).
    pub nodes: usize,
}

// SAFETY: a graph exec may be launched from any thread with its context current; the executor
// launches it under the device's stream lock.
unsafe impl Send for CudaGraph {}
unsafe impl Sync for CudaGraph {}

impl CudaGraph {
    /// Records what `record` queues on the device's stream into a graph and instantiates it.
    /// Nothing `record` queues runs now. `record`'s own error wins over the capture's.
    pub fn capture(device: &CudaDevice, record: impl FnOnce() -> Result<()>) -> Result<CudaGraph> {
        let stream = device.cu_stream();
        // SAFETY: the device's stream is a live non-blocking stream of the current context
        // (capture is not allowed on the legacy default stream).
        unsafe { result::stream::begin_capture(stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL) }
            .map_err(|e| graph_err("cuStreamBeginCapture", e))?;
        let recorded = record();
        // Always end the capture, so the stream is usable again whatever happened.
        // SAFETY: ends the capture begun above on the same stream.
        let ended = unsafe { result::stream::end_capture(stream) };
        let graph = match (recorded, ended) {
            (Err(e), Ok(g)) => {
                // SAFETY: a graph returned by end_capture, not used after this.
                let _ = unsafe { result::graph::destroy(g) };
                return Err(e);
            }
            (Err(e), Err(_)) => return Err(e),
            (Ok(()), Err(e)) => return Err(graph_err("stream capture (a call not allowed while capturing?)", e)),
            (Ok(()), Ok(g)) => g,
        };
        let mut nodes = 0usize;
        // SAFETY: a live graph; a null node array asks for the count only.
        let counted = unsafe { sys::cuGraphGetNodes(graph, std::ptr::null_mut(), &mut nodes) }.result();
        // SAFETY: a live graph; the exec does not depend on it once instantiated.
        let exec = unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) };
        // SAFETY: not used after this.
        let _ = unsafe { result::graph::destroy(graph) };
        counted.map_err(|e| graph_err("cuGraphGetNodes", e))?;
        let exec = exec.map_err(|e| graph_err("cuGraphInstantiate", e))?;
        Ok(CudaGraph { exec, nodes })
    }

    /// Queues one replay on the device's stream.
    pub fn launch(&self, device: &CudaDevice) -> Result<()> {
        // SAFETY: a live exec of the device's context; the stream belongs to it.
        unsafe { result::graph::launch(self.exec, device.cu_stream()) }.map_err(|e| graph_err("cuGraphLaunch", e))
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: not used after this. Owners drain the stream before dropping a graph that may
        // still be running (the driver keeps a running exec's resources until it completes).
        let _ = unsafe { result::graph::exec_destroy(self.exec) };
    }
}
