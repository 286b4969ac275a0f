//! Reading what quilt took from its `dump_plans` directory: one `<fused node>.nodes.txt` per
//! compiled subgraph, each line `name<TAB>op_type` of an ORT node quilt claimed.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{ModelsError, Result};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TakenNodes {
    /// One entry per compiled subgraph (fused node name, its node count).
    pub subgraphs: Vec<(String, usize)>,
    /// `(node name, op type)` of every node quilt took.
    pub nodes: Vec<(String, String)>,
    /// Subgraphs with a `.plan.txt` but no `.nodes.txt` (their nodes are not in `nodes`).
    pub without_node_list: Vec<String>,
}

impl TakenNodes {
    pub fn read(dir: &Path) -> Result<TakenNodes> {
        let mut taken = TakenNodes::default();
        let entries = std::fs::read_dir(dir).map_err(|e| ModelsError::io(dir, e))?;
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".nodes.txt")))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|e| ModelsError::io(&file, e))?;
            let fused = file.file_name().and_then(|n| n.to_str()).unwrap_or("").trim_end_matches(".nodes.txt");
            let mut count = 0;
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let (name, op) = line.split_once('\t').unwrap_or((line, "?"));
                taken.nodes.push((name.to_string(), op.trim().to_string()));
                count += 1;
            }
            taken.subgraphs.push((fused.to_string(), count));
        }
        // A plan without a node list still is a compiled subgraph; count it, and say so.
        let mut plans: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| ModelsError::io(dir, e))?
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".plan.txt").map(str::to_string))
            .filter(|stem| !taken.subgraphs.iter().any(|(name, _)| name == stem))
            .collect();
        plans.sort();
        for stem in plans {
            taken.subgraphs.push((stem.clone(), 0));
            taken.without_node_list.push(stem);
        }
        Ok(taken)
    }

    /// Op type -> how many nodes of it quilt took.
    pub fn histogram(&self) -> BTreeMap<String, usize> {
        let mut hist = BTreeMap::new();
        for (_, op) in &self.nodes {
            *hist.entry(op.clone()).or_insert(0) += 1;
        }
        hist
    }

    /// `Conv 98, Add 265, ...`, most frequent first.
    pub fn histogram_line(&self) -> String {
        let mut ops: Vec<_> = self.histogram().into_iter().collect();
        ops.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        ops.iter().map(|(op, n)| format!("{op} {n}")).collect::<Vec<_>>().join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nodes_files() {
        let dir = std::env::temp_dir().join(format!("quilt-plan-dump-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("QuiltExecutionProvider_0.nodes.txt"), "conv1\tConv\nadd1\tAdd\nadd2\tAdd\n").unwrap();
        std::fs::write(dir.join("QuiltExecutionProvider_0.plan.txt"), "plan").unwrap();
        std::fs::write(dir.join("QuiltExecutionProvider_1.nodes.txt"), "relu\tRelu\n").unwrap();
        std::fs::write(dir.join("QuiltExecutionProvider_2.plan.txt"), "plan").unwrap();
        let taken = TakenNodes::read(&dir).unwrap();
        assert_eq!(taken.subgraphs.len(), 3);
        assert_eq!(taken.without_node_list, vec!["QuiltExecutionProvider_2".to_string()]);
        assert_eq!(taken.nodes.len(), 4);
        assert_eq!(taken.histogram()["Add"], 2);
        assert_eq!(taken.histogram_line(), "Add 2, Conv 1, Relu 1");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
