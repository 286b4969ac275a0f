//! The fixture manifest, `models/fixtures/manifest.json`: which ONNX files the tests run, their
//! inputs (dtype, shape with symbolic dims, value range) and the concrete dims to test them at.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{ModelsError, Result};

#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub models: Vec<ModelEntry>,
    /// Files only checked for import (no numerical comparison); kept verbatim.
    #[serde(default)]
    pub graph_only: Vec<serde_json::Value>,
    /// Directory the `file` entries are relative to (the manifest's own directory).
    #[serde(skip)]
    pub root: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ModelEntry {
    pub name: String,
    /// Relative to [`Manifest::root`].
    pub file: String,
    #[serde(default)]
    pub exporter: Option<String>,
    #[serde(default)]
    pub opset: Option<i64>,
    /// Keyed by graph input name; a BTreeMap so iteration (and therefore random draws) is ordered.
    pub inputs: BTreeMap<String, InputSpec>,
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Each entry binds every symbolic dim used by `inputs`.
    #[serde(default)]
    pub test_dims: Vec<BTreeMap<String, i64>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InputSpec {
    /// ONNX-style element type name: "float32", "float16", "int64", "int32", "bool", ...
    pub dtype: String,
    pub shape: Vec<Dim>,
    /// `[lo, hi)`: floats uniform in it, ints uniform in it; absent: floats N(0, 1).
    #[serde(default)]
    pub range: Option<[f64; 2]>,
}

/// A dimension: a fixed size or the name of a symbolic dim bound by `test_dims`/`--dims`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(i64),
    Symbol(String),
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelsError::io(path, e))?;
        let mut manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| ModelsError::Manifest { path: path.to_path_buf(), message: e.to_string() })?;
        manifest.root = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        for entry in &manifest.models {
            entry.check().map_err(|message| ModelsError::Manifest { path: path.to_path_buf(), message })?;
        }
        Ok(manifest)
    }

    pub fn model_path(&self, entry: &ModelEntry) -> PathBuf {
        self.root.join(&entry.file)
    }

    /// The entry whose file is `model` (compared after canonicalisation, so any spelling of the path works).
    pub fn find_by_file(&self, model: &Path) -> Option<&ModelEntry> {
        let wanted = std::fs::canonicalize(model).ok()?;
        self.models
            .iter()
            .find(|entry| std::fs::canonicalize(self.model_path(entry)).ok().as_deref() == Some(wanted.as_path()))
    }
}

impl ModelEntry {
    /// Every symbolic dim of every input must be bound by every `test_dims` entry.
    fn check(&self) -> std::result::Result<(), String> {
        for (i, dims) in self.test_dims.iter().enumerate() {
            for (input, spec) in &self.inputs {
                for dim in &spec.shape {
                    if let Dim::Symbol(sym) = dim {
                        if !dims.contains_key(sym) {
                            return Err(format!(
                                "model `{}`: test_dims[{i}] does not bind `{sym}` used by input `{input}`",
                                self.name
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl InputSpec {
    /// The concrete shape under `dims`; names the input and the missing dim on failure.
    pub fn concrete_shape(&self, input: &str, dims: &BTreeMap<String, i64>) -> Result<Vec<i64>> {
        self.shape
            .iter()
            .map(|dim| match dim {
                Dim::Fixed(n) => Ok(*n),
                Dim::Symbol(sym) => dims.get(sym).copied().ok_or_else(|| ModelsError::Input {
                    input: input.to_string(),
                    message: format!("symbolic dim `{sym}` has no value (pass --dims {sym}=N)"),
                }),
            })
            .collect()
    }
}

/// Parses `batch=2,height=16,width=16`.
pub fn parse_dims(text: &str) -> Result<BTreeMap<String, i64>> {
    let mut dims = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| ModelsError::Usage(format!("--dims entry `{part}` is not NAME=SIZE")))?;
        let value: i64 = value
            .trim()
            .parse()
            .map_err(|_| ModelsError::Usage(format!("--dims entry `{part}`: `{value}` is not an integer")))?;
        if value < 0 {
            return Err(ModelsError::Usage(format!("--dims entry `{part}`: sizes must be >= 0")));
        }
        dims.insert(name.trim().to_string(), value);
    }
    Ok(dims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{"models": [{"name": "unet", "file": "unet/model.onnx", "exporter": "torchscript", "opset": 17,
        "inputs": {"sample": {"dtype": "float32", "shape": ["batch", 4, "height", "width"]},
                   "timestep": {"dtype": "float32", "shape": [], "range": [0, 1000]}},
        "outputs": ["out_sample"],
        "test_dims": [{"batch": 1, "height": 8, "width": 8}, {"batch": 2, "height": 16, "width": 16}]}],
        "graph_only": []}"#;

    #[test]
    fn parses_the_documented_format() {
        let m: Manifest = serde_json::from_str(EXAMPLE).unwrap();
        let unet = &m.models[0];
        assert_eq!(unet.inputs["sample"].shape[1], Dim::Fixed(4));
        assert_eq!(unet.inputs["sample"].shape[0], Dim::Symbol("batch".into()));
        assert_eq!(unet.inputs["timestep"].range, Some([0.0, 1000.0]));
        let shape = unet.inputs["sample"].concrete_shape("sample", &unet.test_dims[1]).unwrap();
        assert_eq!(shape, vec![2, 4, 16, 16]);
        unet.check().unwrap();
    }

    #[test]
    fn missing_dim_names_input_and_dim() {
        let m: Manifest = serde_json::from_str(EXAMPLE).unwrap();
        let err = m.models[0].inputs["sample"].concrete_shape("sample", &BTreeMap::new()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("sample") && text.contains("batch"), "{text}");
    }

    #[test]
    fn dims_parser() {
        let d = parse_dims("batch=2, height=16,width=16").unwrap();
        assert_eq!(d["batch"], 2);
        assert_eq!(d["width"], 16);
        assert!(parse_dims("batch").is_err());
        assert!(parse_dims("batch=x").is_err());
    }
}
