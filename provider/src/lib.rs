//! quilt's ONNX Runtime plugin-EP glue: the EP ABI structs ort-sys lacks (`abi`), the factory and
//! its devices (`factory`), the GPU device's memory, allocators, copies and streams (`gpu`), the
//! per-session EP (`ep`) with GetCapability (`capability`), Compile (`compile`) and Compute
//! (`compute`), the OrtGraph → SourceGraph conversion (`ort_graph`) and session options
//! (`options`). `quilt-capi` exports [`create_ep_factories`] and [`release_ep_factory`] as the
//! library's two C symbols.

// `ort_call!`'s arguments are the raw pointers of the OrtApi call it wraps: they belong inside
// its unsafe block.
#![allow(clippy::macro_metavars_in_unsafe)]

pub mod abi;
pub mod api;
pub mod capability;
pub mod compile;
pub mod compute;
pub mod ep;
pub mod error;
pub mod factory;
pub mod gpu;
pub mod guard;
pub mod log;
pub mod options;
pub mod ort_graph;
pub mod tensor_io;

pub use error::{Error, Result};
pub use factory::{create_ep_factories, release_ep_factory, EP_NAME};
