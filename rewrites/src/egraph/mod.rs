//! The equality-saturation optimizer: an `egg` language over IR ops ([`lang`]), per-class
//! types and facts ([`analysis`]), conversion to and from `ir::Graph` ([`convert`]), rewrite
//! rules in stages ([`rules`], [`runner`]) and cost-based extraction ([`cost`]).
//! `crate::optimize` drives it.

pub mod analysis;
pub mod convert;
pub mod cost;
pub mod lang;
pub mod rules;
pub mod runner;

pub use analysis::{EGraph, GraphAnalysis};
pub use runner::{Limits, StageReport};
