//! Staged equality saturation: each stage is its own egg `Runner` with its own rule set and
//! node / iteration / time limits, run on the previous stage's e-graph. Cleanup rules run in
//! every stage (rules are monotone, and pattern rules create transposes and reshapes that
//! cleanup must cancel). The scheduler is egg's `SimpleScheduler`: every rule is anchored on
//! one op kind, so match counts stay linear in the graph and a deterministic schedule is worth
//! more than backoff.

use std::fmt;
use std::time::{Duration, Instant};

use egg::{Runner, SimpleScheduler};

use crate::egraph::analysis::EGraph;
use crate::egraph::rules::{activation, attention, cleanup, linear, norm, Rule, RuleRewrite, RuleStats};

/// Limits for one stage.
#[derive(Clone, Debug)]
pub struct Limits {
    pub nodes: usize,
    pub iterations: usize,
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { nodes: 400_000, iterations: 30, time: Duration::from_secs(20) }
    }
}

/// One stage: a name and the rules it runs.
pub struct Stage {
    pub name: &'static str,
    pub rules: Vec<Box<dyn Rule>>,
}

/// The stages, in order: cleanup → fusion (norms, activations, linear layers, attention) → attention layout.
pub fn stages() -> Vec<Stage> {
    let with_cleanup = |mut v: Vec<Box<dyn Rule>>| {
        v.extend(cleanup::rules());
        v
    };
    let mut fusion = norm::rules();
    fusion.extend(activation::rules());
    fusion.extend(linear::rules());
    fusion.extend(attention::rules().into_iter().filter(|r| r.name() == "attention"));
    vec![
        Stage { name: "cleanup", rules: cleanup::rules() },
        Stage { name: "fusion", rules: with_cleanup(fusion) },
        Stage { name: "attention-layout", rules: with_cleanup(attention::rules().into_iter().filter(|r| r.name() != "attention").collect()) },
    ]
}

#[derive(Clone, Debug)]
pub struct StageReport {
    pub name: &'static str,
    pub iterations: usize,
    pub nodes_before: usize,
    pub classes_before: usize,
    pub nodes_after: usize,
    pub classes_after: usize,
    pub time: Duration,
    /// Why the runner stopped (`Saturated` when no rule changed anything).
    pub stop_reason: String,
    pub rules: Vec<RuleStats>,
}

/// Runs every stage on `egraph` in place.
pub fn run_stages(egraph: &mut EGraph, limits: &Limits) -> Vec<StageReport> {
    let mut reports = Vec::new();
    for stage in stages() {
        let start = Instant::now();
        let (nodes_before, classes_before) = (egraph.total_number_of_nodes(), egraph.number_of_classes());
        let rules: Vec<RuleRewrite> = stage.rules.into_iter().map(RuleRewrite::new).collect();
        let rewrites: Vec<_> = rules.iter().map(|r| r.rewrite()).collect();
        let taken = std::mem::take(egraph);
        let runner = Runner::default()
            .with_egraph(taken)
            .with_scheduler(SimpleScheduler)
            .with_node_limit(limits.nodes)
            .with_iter_limit(limits.iterations)
            .with_time_limit(limits.time)
            .run(&rewrites);
        let stop_reason = match &runner.stop_reason {
            Some(r) => format!("{r:?}"),
            None => "none".into(),
        };
        let iterations = runner.iterations.len();
        if std::env::var_os("QUILT_EGRAPH_TRACE").is_some() {
            for (i, it) in runner.iterations.iter().enumerate() {
                eprintln!("{} iteration {i}: {} nodes, applied {:?}", stage.name, it.egraph_nodes, it.applied);
            }
        }
        *egraph = runner.egraph;
        reports.push(StageReport {
            name: stage.name,
            iterations,
            nodes_before,
            classes_before,
            nodes_after: egraph.total_number_of_nodes(),
            classes_after: egraph.number_of_classes(),
            time: start.elapsed(),
            stop_reason,
            rules: rules.iter().map(|r| r.stats()).collect(),
        });
    }
    reports
}

impl fmt::Display for StageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "stage {:<16} {:>3} iterations  {:>7} → {:>7} nodes  {:>7} → {:>7} classes  {:>8.1} ms  stop: {}",
            self.name,
            self.iterations,
            self.nodes_before,
            self.nodes_after,
            self.classes_before,
            self.classes_after,
            self.time.as_secs_f64() * 1e3,
            self.stop_reason
        )?;
        for r in &self.rules {
            writeln!(
                f,
                "  rule {:<38} {:>6} matches {:>6} applied  search {:>7.2} ms  apply {:>7.2} ms",
                r.name,
                r.matches,
                r.applied,
                r.search.as_secs_f64() * 1e3,
                r.apply.as_secs_f64() * 1e3
            )?;
        }
        Ok(())
    }
}
