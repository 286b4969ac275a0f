//! GetCapability: which nodes quilt claims, in which fused groups.
//!
//! ORT fuses each group given to `EpGraphSupportInfo_AddNodesToFuse` into one node; a group with
//! an outside node on a path between two of its members would make a cycle, and ORT then drops
//! quilt's whole claim for the graph. So groups are built by *stage*: walking the nodes in
//! topological order, `stage(n) = max over producers p of stage(p) + (p unsupported ? 1 : 0)`.
//! A group is a connected component (through edges between supported nodes) of supported nodes
//! with equal stage. Stages never decrease along an edge and strictly increase after an
//! unsupported node, so a path between two members of one stage can only pass through supported
//! nodes of that same stage, i.e. through members; and a path from one group to another never
//! comes back. Before claiming, each group is imported and optimized on its own, exactly as
//! Compile will; a group that fails loses the failing node (or all of its nodes) and the
//! grouping is redone, because an error in Compile fails the whole session.

use std::collections::{BTreeMap, HashMap, HashSet};

use ort_sys::{OrtGraph, OrtNode};
use quilt_rewrites::import::{import, ImportOptions, NodeStatus};
use quilt_rewrites::source::{SourceGraph, ValueDecl};

use crate::abi::{OrtEpGraphSupportInfo, OrtNodeFusionOptions, ORT_VERSION_SUPPORTED};
use crate::ep::QuiltEp;
use crate::error::{Error, Result};
use crate::factory::EP_NAME;
use crate::ort_graph::{convert, GraphIo, WeightCopy};

/// GetCapability copies initializers up to this size (shape constants); larger ones are only
/// declared, since claiming needs no weights.
const CAPABILITY_WEIGHT_BYTES: usize = 64 * 1024;

/// Groups of node indices (into `src.nodes`) to fuse, given which nodes quilt supports.
/// Each group is sorted; groups are ordered by their first node. Deterministic.
pub fn fusion_groups(src: &SourceGraph, supported: &[bool]) -> Vec<Vec<usize>> {
    let n = src.nodes.len();
    let producer: HashMap<&str, usize> = src
        .nodes
        .iter()
        .enumerate()
        .flat_map(|(i, node)| node.outputs.iter().filter(|o| !o.is_empty()).map(move |o| (o.as_str(), i)))
        .collect();
    let producers = |i: usize| src.nodes[i].inputs.iter().filter_map(|v| producer.get(v.as_str()).copied());

    let mut stage = vec![0usize; n];
    for i in 0..n {
        stage[i] = producers(i).map(|p| stage[p] + usize::from(!supported[p])).max().unwrap_or(0);
    }

    // Shape computations (values derived only from `Shape`/`Size` and constants) are moved to the
    // latest stage their consumers allow, so a shape chain lands in the group of the op that
    // reads it (a Reshape, say) instead of crossing a group boundary, where the importer would
    // no longer know its value. Any stage assignment that never decreases along an edge and
    // increases after an unsupported node keeps the argument above valid; moving a supported
    // node up to the minimum stage of its consumers, in reverse topological order, preserves that.
    let shape_like = shape_computations(src, &producer);
    let graph_outputs: HashSet<&str> = src.outputs.iter().map(|d| d.name.as_str()).collect();
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        for p in producers(i) {
            consumers[p].push(i);
        }
    }
    for i in (0..n).rev() {
        let is_output = src.nodes[i].outputs.iter().any(|o| graph_outputs.contains(o.as_str()));
        if supported[i] && shape_like[i] && !is_output {
            if let Some(latest) = consumers[i].iter().map(|&c| stage[c]).min() {
                stage[i] = stage[i].max(latest);
            }
        }
    }

    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for i in (0..n).filter(|&i| supported[i]) {
        for p in producers(i).collect::<Vec<_>>() {
            if supported[p] && stage[p] == stage[i] {
                let (a, b) = (root(&mut parent, p), root(&mut parent, i));
                // The smaller index becomes the root, so a group is keyed by its first node.
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in (0..n).filter(|&i| supported[i]) {
        let r = root(&mut parent, i);
        groups.entry(r).or_default().push(i);
    }
    groups.into_values().collect()
}

/// Which nodes compute only from tensor shapes and constants: `Shape`/`Size`/`Constant`, and
/// nodes whose every input is an initializer or such a node's output.
fn shape_computations(src: &SourceGraph, producer: &HashMap<&str, usize>) -> Vec<bool> {
    let mut shape_like = vec![false; src.nodes.len()];
    for (i, node) in src.nodes.iter().enumerate() {
        shape_like[i] = match node.op_type.as_str() {
            "Shape" | "Size" | "Constant" if node.domain.is_empty() => true,
            _ => {
                let mut present = node.inputs.iter().filter(|v| !v.is_empty()).peekable();
                present.peek().is_some()
                    && present.all(|v| {
                        src.initializers.contains_key(v) || producer.get(v.as_str()).is_some_and(|&p| shape_like[p])
                    })
            }
        };
    }
    shape_like
}

/// The stand-alone graph of one group, as Compile will see it: inputs are the values it reads
/// from outside (weights stay initializers), outputs the values read outside it or by the graph.
/// `extra_decls` are declarations to use for values `src.value_info` lacks.
pub fn group_graph(src: &SourceGraph, extra_decls: &BTreeMap<String, ValueDecl>, group: &[usize]) -> SourceGraph {
    let members: HashSet<usize> = group.iter().copied().collect();
    let produced_inside: HashSet<&str> =
        group.iter().flat_map(|&i| src.nodes[i].outputs.iter().map(String::as_str)).filter(|s| !s.is_empty()).collect();
    let decl = |name: &str| -> ValueDecl {
        src.value_info
            .get(name)
            .or_else(|| src.inputs.iter().find(|d| d.name == name))
            .or_else(|| src.outputs.iter().find(|d| d.name == name))
            .or_else(|| extra_decls.get(name))
            .cloned()
            .unwrap_or(ValueDecl { name: name.to_string(), dtype: None, onnx_type: 0, dims: None })
    };

    let mut g = SourceGraph { name: src.name.clone(), opset: src.opset, ..Default::default() };
    let mut seen: HashSet<&str> = HashSet::new();
    for &i in group {
        for v in &src.nodes[i].inputs {
            if v.is_empty() || produced_inside.contains(v.as_str()) || !seen.insert(v.as_str()) {
                continue;
            }
            if let Some(init) = src.initializers.get(v) {
                g.initializers.insert(v.clone(), init.clone());
            } else {
                g.inputs.push(decl(v));
            }
        }
    }
    let read_outside: HashSet<&str> = src
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| !members.contains(i))
        .flat_map(|(_, n)| n.inputs.iter().map(String::as_str))
        .chain(src.outputs.iter().map(|d| d.name.as_str()))
        .collect();
    for &i in group {
        for o in &src.nodes[i].outputs {
            if !o.is_empty() && read_outside.contains(o.as_str()) {
                g.outputs.push(decl(o));
            }
        }
    }
    for &i in group {
        for o in &src.nodes[i].outputs {
            if let Some(d) = src.value_info.get(o) {
                g.value_info.insert(o.clone(), d.clone());
            }
        }
    }
    g.nodes = group.iter().map(|&i| src.nodes[i].clone()).collect();
    g
}

/// Checks that a group compiles on its own (import + optimize, as in Compile, and for a GPU
/// session the CUDA backend's check that every step has an implementation, which needs no GPU).
/// On failure, returns the nodes to stop claiming: the failing node if the error names exactly
/// one member, else the whole group.
fn check_group(
    src: &SourceGraph,
    extra_decls: &BTreeMap<String, ValueDecl>,
    group: &[usize],
    options: &crate::options::Options,
    cuda: bool,
) -> std::result::Result<(), (Vec<usize>, String)> {
    let g = group_graph(src, extra_decls, group);
    let result = import(&g, &ImportOptions { lenient: false }).and_then(|imported| options.plan(&imported.graph, cuda));
    let plan = match result {
        Ok(plan) => plan,
        Err(e) => return Err(rewrites_culprit(src, group, e)),
    };
    if cuda {
        if let Err(e) = quilt_kernels::cuda::CudaExecutable::check(&plan) {
            let culprit = match &e {
                quilt_kernels::Error::Step { node, .. } if !node.is_empty() => {
                    let hits: Vec<usize> = group.iter().copied().filter(|&i| src.nodes[i].name == *node).collect();
                    (hits.len() == 1).then_some(hits)
                }
                _ => None,
            };
            return Err((culprit.unwrap_or_else(|| group.to_vec()), format!("the CUDA backend cannot run it: {e}")));
        }
    }
    Ok(())
}

/// The nodes to stop claiming after an import/optimize error, and why.
fn rewrites_culprit(src: &SourceGraph, group: &[usize], e: quilt_rewrites::Error) -> (Vec<usize>, String) {
    let culprit = match &e {
        quilt_rewrites::Error::Node { node, .. } if !node.is_empty() => {
            let hits: Vec<usize> = group.iter().copied().filter(|&i| src.nodes[i].name == *node).collect();
            (hits.len() == 1).then_some(hits)
        }
        // A value the group cannot take in: stop claiming the members that read it.
        quilt_rewrites::Error::Value { name, .. } => {
            let hits: Vec<usize> = group.iter().copied().filter(|&i| src.nodes[i].inputs.iter().any(|v| v == name)).collect();
            (!hits.is_empty()).then_some(hits)
        }
        _ => None,
    };
    (culprit.unwrap_or_else(|| group.to_vec()), e.to_string())
}

/// Decides what quilt supports in `graph` and claims it through `info`.
///
/// # Safety
/// Pointers as ORT passes them to `OrtEp::GetCapability`.
pub unsafe fn claim(ep: &QuiltEp, graph: *const OrtGraph, info: *mut OrtEpGraphSupportInfo) -> Result<()> {
    let api = ep.api;
    let started = std::time::Instant::now();
    let converted = convert(api, graph, GraphIo::Graph, WeightCopy::UpTo(CAPABILITY_WEIGHT_BYTES))?;
    let src = &converted.source;
    if src.nodes.is_empty() {
        return Ok(());
    }
    ep.log.verbose(|| format!("GetCapability on {}", crate::ort_graph::describe(src)));
    let imported = import(src, &ImportOptions { lenient: true })?;
    if imported.node_status.len() != src.nodes.len() {
        return Err(Error::Graph(format!(
            "the importer returned {} node statuses for {} nodes",
            imported.node_status.len(),
            src.nodes.len()
        )));
    }
    let ours = EP_NAME.to_str().unwrap_or_default();
    let mut supported: Vec<bool> = imported
        .node_status
        .iter()
        .zip(&converted.assigned_ep)
        .map(|(s, assigned)| matches!(s, NodeStatus::Supported) && (assigned.is_empty() || assigned == ours))
        .collect();
    for (node, status) in src.nodes.iter().zip(&imported.node_status) {
        if let NodeStatus::Unsupported(why) = status {
            ep.log.verbose(|| format!("not claiming node '{}' ({}): {why}", node.name, node.op_type));
        }
    }

    // The trial compile optimizes exactly as Compile will, and checks what the backend can run.
    let cuda = matches!(ep.backend, crate::ep::Backend::Cuda { .. });
    // Each round removes at least one node from `supported`, so this ends.
    let groups = loop {
        let groups = fusion_groups(src, &supported);
        let mut changed = false;
        for group in &groups {
            if let Err((drop, why)) = check_group(src, &converted.rank0_values, group, &ep.options, cuda) {
                for &i in &drop {
                    supported[i] = false;
                }
                ep.log.info(&format!(
                    "not claiming {} node(s) starting at '{}' ({}): {why}",
                    drop.len(),
                    src.nodes[drop[0]].name,
                    src.nodes[drop[0]].op_type
                ));
                changed = true;
            }
        }
        if !changed {
            break groups;
        }
    };

    let add = api.ep.EpGraphSupportInfo_AddNodesToFuse.ok_or_else(|| Error::Graph("OrtEpApi has no AddNodesToFuse".into()))?;
    let options = OrtNodeFusionOptions { ort_version_supported: ORT_VERSION_SUPPORTED, drop_constant_initializers: true };
    for group in &groups {
        let nodes: Vec<*const OrtNode> = group.iter().map(|&i| converted.nodes[i]).collect();
        api.check("EpGraphSupportInfo_AddNodesToFuse", add(info, nodes.as_ptr(), nodes.len(), &options))?;
    }
    let claimed: usize = groups.iter().map(Vec::len).sum();
    ep.log.info(&format!(
        "claimed {claimed} of {} nodes in {} group(s) in {:.0} ms (import, trial compiles)",
        src.nodes.len(),
        groups.len(),
        started.elapsed().as_secs_f64() * 1e3
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quilt_rewrites::source::SourceNode;

    /// A graph from `(name, inputs, outputs)`; node `x` outputs value `x`.
    fn graph(nodes: &[(&str, &[&str])], outputs: &[&str]) -> SourceGraph {
        SourceGraph {
            nodes: nodes
                .iter()
                .map(|(name, ins)| SourceNode {
                    name: name.to_string(),
                    // Nodes named "shape…" are Shape ops (shape computations move to later stages).
                    op_type: if name.starts_with("shape") { "Shape".into() } else { "Op".into() },
                    domain: String::new(),
                    inputs: ins.iter().map(|s| s.to_string()).collect(),
                    outputs: vec![name.to_string()],
                    attrs: Default::default(),
                })
                .collect(),
            outputs: outputs
                .iter()
                .map(|o| ValueDecl { name: o.to_string(), dtype: None, onnx_type: 0, dims: None })
                .collect(),
            ..Default::default()
        }
    }

    fn names(src: &SourceGraph, groups: &[Vec<usize>]) -> Vec<Vec<String>> {
        groups.iter().map(|g| g.iter().map(|&i| src.nodes[i].name.clone()).collect()).collect()
    }

    #[test]
    fn all_supported_chain_is_one_group() {
        let g = graph(&[("a", &["x"]), ("b", &["a"]), ("c", &["b", "a"])], &["c"]);
        assert_eq!(names(&g, &fusion_groups(&g, &[true; 3])), [["a", "b", "c"]]);
    }

    #[test]
    fn unsupported_node_on_a_path_splits_the_group() {
        // a -> u -> c and a -> c: fusing {a, c} would put u on a path between them.
        let g = graph(&[("a", &["x"]), ("u", &["a"]), ("c", &["a", "u"])], &["c"]);
        assert_eq!(names(&g, &fusion_groups(&g, &[true, false, true])), [vec!["a"], vec!["c"]]);
    }

    #[test]
    fn side_branch_stays_with_its_stage() {
        // a -> u -> c ; a -> d (d independent of u) ; c and d both outputs.
        let g = graph(&[("a", &["x"]), ("u", &["a"]), ("c", &["u"]), ("d", &["a"])], &["c", "d"]);
        assert_eq!(names(&g, &fusion_groups(&g, &[true, false, true, true])), [vec!["a", "d"], vec!["c"]]);
    }

    #[test]
    fn shape_chain_joins_the_group_of_its_consumer() {
        // a -> u -> r, and shape(a) -> g -> r: the chain {shape, g} moves to r's stage.
        let mut g = graph(&[("a", &["x"]), ("u", &["a"]), ("shape", &["a"]), ("g", &["shape", "k"]), ("r", &["u", "g"])], &["r"]);
        g.initializers.insert(
            "k".into(),
            quilt_rewrites::source::Initializer::Absent { dtype: quilt_rewrites::DType::I64, shape: vec![1] },
        );
        assert_eq!(names(&g, &fusion_groups(&g, &[true, false, true, true, true])), [vec!["a"], vec!["shape", "g", "r"]]);
    }

    #[test]
    fn disconnected_supported_nodes_are_separate_groups() {
        let g = graph(&[("a", &["x"]), ("b", &["y"])], &["a", "b"]);
        assert_eq!(names(&g, &fusion_groups(&g, &[true, true])), [vec!["a"], vec!["b"]]);
    }

    /// Checks the ORT fusion rule by brute force: no path leaves a group and re-enters it, and
    /// the groups' condensation has no cycle.
    fn assert_fusable(src: &SourceGraph, groups: &[Vec<usize>]) {
        let n = src.nodes.len();
        let mut succ = vec![Vec::new(); n];
        for (i, node) in src.nodes.iter().enumerate() {
            for (p, pn) in src.nodes.iter().enumerate() {
                if node.inputs.contains(&pn.outputs[0]) {
                    succ[p].push(i);
                }
            }
        }
        let mut group_of = vec![usize::MAX; n];
        for (gi, g) in groups.iter().enumerate() {
            for &i in g {
                group_of[i] = gi;
            }
        }
        // Condense every node into a vertex (group id or a singleton) and check acyclicity.
        let vertex = |i: usize| if group_of[i] == usize::MAX { groups.len() + i } else { group_of[i] };
        let m = groups.len() + n;
        let mut edges = vec![HashSet::new(); m];
        for p in 0..n {
            for &c in &succ[p] {
                if vertex(p) != vertex(c) {
                    edges[vertex(p)].insert(vertex(c));
                }
            }
        }
        // Kahn over the condensed graph.
        let mut indeg = vec![0; m];
        for e in &edges {
            for &c in e {
                indeg[c] += 1;
            }
        }
        let mut stack: Vec<usize> = (0..m).filter(|&v| indeg[v] == 0).collect();
        let mut seen = 0;
        while let Some(v) = stack.pop() {
            seen += 1;
            for &c in &edges[v] {
                indeg[c] -= 1;
                if indeg[c] == 0 {
                    stack.push(c);
                }
            }
        }
        assert_eq!(seen, m, "fusing {groups:?} creates a cycle");
    }

    #[test]
    fn random_dags_always_give_fusable_groups() {
        // A small deterministic LCG: random DAGs and support patterns.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |m: u64| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) % m
        };
        for _ in 0..300 {
            let n = 2 + next(12) as usize;
            let mut nodes: Vec<(String, Vec<String>)> = Vec::new();
            let mut names: Vec<String> = Vec::new();
            for i in 0..n {
                let mut ins = vec!["x".to_string()];
                for name in &names {
                    if next(3) == 0 {
                        ins.push(name.clone());
                    }
                }
                let name = if next(4) == 0 { format!("shape{i}") } else { format!("n{i}") };
                names.push(name.clone());
                nodes.push((name, ins));
            }
            let spec: Vec<(&str, Vec<&str>)> =
                nodes.iter().map(|(n, ins)| (n.as_str(), ins.iter().map(String::as_str).collect())).collect();
            let spec_ref: Vec<(&str, &[&str])> = spec.iter().map(|(n, i)| (*n, i.as_slice())).collect();
            let g = graph(&spec_ref, &[&nodes[n - 1].0]);
            let supported: Vec<bool> = (0..n).map(|_| next(4) != 0).collect();
            let groups = fusion_groups(&g, &supported);
            let claimed: usize = groups.iter().map(Vec::len).sum();
            assert_eq!(claimed, supported.iter().filter(|&&s| s).count(), "every supported node is claimed");
            assert_fusable(&g, &groups);
            assert_eq!(groups, fusion_groups(&g, &supported), "deterministic");
        }
    }

    #[test]
    fn group_graph_takes_outside_values_as_inputs_and_exports_what_is_read_outside() {
        let g = graph(&[("a", &["x"]), ("b", &["a"]), ("u", &["b"]), ("c", &["u", "a"])], &["c"]);
        let sub = group_graph(&g, &BTreeMap::new(), &[0, 1]);
        assert_eq!(sub.inputs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["x"]);
        assert_eq!(sub.outputs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let sub = group_graph(&g, &BTreeMap::new(), &[3]);
        assert_eq!(sub.inputs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["u", "a"]);
        assert_eq!(sub.outputs.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["c"]);
    }
}
