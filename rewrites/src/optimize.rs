//! `optimize`: imported graph → e-graph → staged rewrites → extraction → graph → Plan.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crate::egraph::{convert, cost, runner, Limits, StageReport};
use crate::epilogue::{fuse_residuals, EpilogueReport, EpilogueTargets};
use crate::error::{Error, Result};
use crate::ir::Graph;
use crate::layout::{to_channels_last, LayoutOptions, LayoutReport};
use crate::lower::lower;
use crate::plan::Plan;
use crate::projections::{pack_projections, ProjectionReport};
use crate::stitch::{stitch, StitchOptions, StitchReport};

#[derive(Clone, Debug)]
pub struct OptimizeOptions {
    /// `false`: lower the imported graph one node to one step (provider option `optimize=0`).
    pub enabled: bool,
    /// Limits of each e-graph stage.
    pub limits: Limits,
    /// Fuse memory-bound ops into stitched regions after extraction (`crate::stitch`).
    pub stitch: bool,
    pub stitch_caps: StitchOptions,
    /// Run 2-D convolutions (and the ops around them) on channels-last data (`crate::layout`),
    /// for backends with a channels-last convolution; `None` keeps the model's layout.
    pub channels_last: Option<LayoutOptions>,
    /// Which producers residual adds fold into (`crate::epilogue`).
    pub residual_epilogues: EpilogueTargets,
    /// One MatMul for an attention's q, k, v projections (`crate::projections`).
    pub pack_projections: bool,
}

impl Default for OptimizeOptions {
    fn default() -> OptimizeOptions {
        OptimizeOptions { enabled: true, limits: Limits::default(), stitch: true, stitch_caps: StitchOptions::default(), channels_last: None, residual_epilogues: EpilogueTargets::ALL, pack_projections: true }
    }
}

/// What the optimizer did.
#[derive(Clone, Debug, Default)]
pub struct OptimizeReport {
    pub enabled: bool,
    pub nodes_in: usize,
    pub nodes_out: usize,
    pub stages: Vec<StageReport>,
    /// Graph → e-graph.
    pub load_time: Duration,
    pub extract_time: Duration,
    /// `None` when stitching was off.
    pub stitch: Option<StitchReport>,
    /// `None` when the layout pass was off.
    pub layout: Option<LayoutReport>,
    /// `None` when the residual-epilogue pass was off.
    pub epilogue: Option<EpilogueReport>,
    /// `None` when projections were not packed.
    pub projections: Option<ProjectionReport>,
    pub total_time: Duration,
}

pub struct Optimized {
    pub graph: Graph,
    pub report: OptimizeReport,
}

/// Runs the e-graph stages and extracts the cheapest equivalent graph (the graph itself when
/// `opts.enabled` is false).
pub fn optimize_graph(graph: &Graph, opts: &OptimizeOptions) -> Result<Optimized> {
    let start = Instant::now();
    let mut report = OptimizeReport { enabled: opts.enabled, nodes_in: graph.node_count(), ..OptimizeReport::default() };
    if !opts.enabled {
        report.nodes_out = graph.node_count();
        return Ok(Optimized { graph: graph.clone(), report });
    }
    // Rules are plain Rust over the e-graph; a bug in one must be an error, not an abort.
    let result = catch_unwind(AssertUnwindSafe(|| -> Result<Graph> {
        let mut loaded = convert::load(graph);
        report.load_time = start.elapsed();
        report.stages = runner::run_stages(&mut loaded.egraph, &opts.limits);
        if let Some(conflict) = loaded.egraph.analysis.type_conflicts.first() {
            return Err(Error::Model(format!("optimizer: a rewrite equated values of different types: {conflict}")));
        }
        let t = Instant::now();
        let roots: Vec<egg::Id> = loaded.outputs.iter().map(|(_, id)| *id).chain(loaded.inputs.iter().copied()).collect();
        let chosen = cost::extract(&loaded.egraph, &roots).map_err(|e| Error::Model(format!("optimizer: extraction failed: {e}")))?;
        let out = convert::rebuild_graph(&loaded, &chosen)?;
        report.extract_time = t.elapsed();
        Ok(out)
    }));
    let mut out = match result {
        Ok(r) => r?,
        Err(panic) => {
            let msg = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
            return Err(Error::Model(format!("optimizer: internal error (panic): {msg}")));
        }
    };
    out = after_extraction(out, opts, &mut report)?;
    report.nodes_out = out.node_count();
    report.total_time = start.elapsed();
    Ok(Optimized { graph: out, report })
}

/// The passes after extraction (and after the precision pass, when there is one): the layout
/// pass, residual epilogues, then stitching, as `opts` asks.
pub fn after_extraction(mut graph: Graph, opts: &OptimizeOptions, report: &mut OptimizeReport) -> Result<Graph> {
    if !opts.enabled {
        return Ok(graph);
    }
    if opts.pack_projections {
        let (g, r) = match catch_unwind(AssertUnwindSafe(|| pack_projections(&graph))) {
            Ok(r) => r?,
            Err(_) => return Err(Error::Model("optimizer: internal error (panic) in the projection-packing pass".into())),
        };
        graph = g;
        report.projections = Some(r);
    }
    if let Some(layout) = &opts.channels_last {
        let (g, r) = match catch_unwind(AssertUnwindSafe(|| to_channels_last(&graph, layout))) {
            Ok(r) => r?,
            Err(_) => return Err(Error::Model("optimizer: internal error (panic) in the channels-last layout pass".into())),
        };
        graph = g;
        report.layout = Some(r);
    }
    if opts.residual_epilogues.any() {
        let (g, r) = match catch_unwind(AssertUnwindSafe(|| fuse_residuals(&graph, opts.residual_epilogues))) {
            Ok(r) => r?,
            Err(_) => return Err(Error::Model("optimizer: internal error (panic) in the residual-epilogue pass".into())),
        };
        graph = g;
        report.epilogue = Some(r);
    }
    if opts.stitch {
        let (stitched, r) = match catch_unwind(AssertUnwindSafe(|| stitch(&graph, &opts.stitch_caps))) {
            Ok(r) => r?,
            Err(_) => return Err(Error::Model("optimizer: internal error (panic) while stitching".into())),
        };
        graph = stitched;
        report.stitch = Some(r);
    }
    Ok(graph)
}

/// Optimizes and lowers to a Plan.
pub fn optimize_with(graph: &Graph, opts: &OptimizeOptions) -> Result<Plan> {
    lower(&optimize_graph(graph, opts)?.graph)
}

impl fmt::Display for OptimizeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.enabled {
            return writeln!(f, "optimizer off: {} nodes lowered as they are", self.nodes_in);
        }
        writeln!(
            f,
            "optimizer: {} nodes in, {} nodes out; load {:.1} ms, extract {:.1} ms, total {:.1} ms",
            self.nodes_in,
            self.nodes_out,
            self.load_time.as_secs_f64() * 1e3,
            self.extract_time.as_secs_f64() * 1e3,
            self.total_time.as_secs_f64() * 1e3
        )?;
        for s in &self.stages {
            write!(f, "{s}")?;
        }
        if let Some(l) = &self.layout {
            writeln!(
                f,
                "layout: channels-last for {} convolutions, {} GroupNorms and {} ops between them; transposes {} -> {}, {} reshapes added",
                l.convs, l.group_norms, l.followers, l.transposes_before, l.transposes_after, l.reshapes_added
            )?;
        }
        if let Some(p) = &self.projections {
            writeln!(f, "projections: {} attentions with one q|k|v MatMul, {} with one k|v MatMul; {} MatMuls removed", p.qkv, p.kv, p.matmuls_removed)?;
        }
        if let Some(e) = &self.epilogue {
            writeln!(f, "epilogues: {} residual adds into convolutions, {} into Gemms; {} reshapes added", e.convs, e.gemms, e.reshapes_added)?;
        }
        if let Some(s) = &self.stitch {
            write!(f, "{s}")?;
        }
        Ok(())
    }
}
