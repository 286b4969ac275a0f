//! quilt's session options. ORT stores the provider options given at append time as session
//! config entries named `ep.quiltexecutionprovider.<key>`; every key with that prefix is a quilt
//! option and must be in [`OPTIONS`]. New options are added to that table only.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::log::LogLevel;

/// The session-config prefix of quilt's options (`ep.` + lower-case EP name + `.`).
pub const PREFIX: &str = "ep.quiltexecutionprovider.";

/// The parsed options of one session.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// Directory that receives `<fused node name>.plan.txt` and `.nodes.txt` for every compiled subgraph.
    pub dump_plans: Option<PathBuf>,
    pub log_level: LogLevel,
    /// Run the e-graph optimizer (`optimize=1`, the default) or lower the imported graph one
    /// node to one step (`optimize=0`, for debugging). Compile and GetCapability's trial compile
    /// both follow it.
    pub optimize: bool,
    /// Which of the quilt GPU devices given to the session runs it (CUDA ordinal); by default
    /// the first device given.
    pub device_id: Option<usize>,
    /// The kernel cache directory (`Some(None)`: `cache_dir=` turns the disk cache off); `None`:
    /// not given, quilt's default (`kernels::cuda::kernel_cache`).
    pub cache_dir: Option<Option<PathBuf>>,
    /// Replay each shape's run from a captured CUDA graph (`cuda_graph=1`, the default on the
    /// GPU device; the reference device ignores it).
    pub cuda_graph: bool,
    /// `precision=fp16` runs f32 models' math in f16 storage (`quilt_rewrites::precision`);
    /// the default `model` keeps the model's dtypes.
    pub precision: quilt_rewrites::precision::Precision,
    /// Where 2-D convolutions' activations live (`quilt_rewrites::layout`).
    pub layout: Layout,
    /// Whether residual adds after channels-last convolutions run in cuDNN's epilogue (`1`) or as
    /// ordinary ops (`conv_residual=0`, the default). cuDNN compiles the conv + bias + residual
    /// kernels of 8 of the SD 1.5 UNet's 43 convolution classes at run time, for every new shape:
    /// on an H100 that made a first call at a new batch or size cost 0.24-0.6 s more than a repeat
    /// call, against 33-44 ms without them, and the UNet ran no faster with them (8.18 ms without,
    /// 8.41 with, b2 64²; tests/bench/results/2026-12-06-session6-h100.md).
    pub conv_residual: bool,
    /// One MatMul for an attention's q, k, v projections (`pack_projections=1`, the default).
    pub pack_projections: bool,
}

/// The `layout` option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Channels-last on the GPU device when cuDNN loads (its NHWC tensor-core convolutions), the
    /// model's layout otherwise.
    Auto,
    /// The model's layout (NCHW) everywhere.
    Nchw,
    /// Channels-last on the GPU device (a convolution then fails if cuDNN is missing); the
    /// reference device keeps the model's layout.
    ChannelsLast,
}

/// Whether `layout=auto` picks channels-last on the GPU device with cuDNN.
const AUTO_CHANNELS_LAST: bool = true;

impl Default for Options {
    fn default() -> Options {
        Options { dump_plans: None, log_level: LogLevel::Warning, optimize: true, device_id: None, cache_dir: None, cuda_graph: true, precision: Default::default(), layout: Layout::Auto, conv_residual: false, pack_projections: true }
    }
}

/// One known option: its key (without the prefix), what it does, and how its value is applied.
pub struct OptionSpec {
    pub key: &'static str,
    pub description: &'static str,
    pub apply: fn(&mut Options, &str) -> std::result::Result<(), String>,
}

pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        key: "dump_plans",
        description: "directory; each compiled subgraph's plan is written there as <fused node name>.plan.txt, and the ORT nodes it took as <fused node name>.nodes.txt (name<TAB>op_type per line)",
        apply: |o, v| {
            if v.is_empty() {
                return Err("expected a directory path".into());
            }
            o.dump_plans = Some(PathBuf::from(v));
            Ok(())
        },
    },
    OptionSpec {
        key: "log_level",
        description: "error|warning|info|verbose (default warning)",
        apply: |o, v| {
            o.log_level = LogLevel::parse(v).ok_or_else(|| "expected one of error, warning, info, verbose".to_string())?;
            Ok(())
        },
    },
    OptionSpec {
        key: "optimize",
        description: "1|0 (default 1): 1 runs the e-graph optimizer, 0 lowers the imported graph one node to one step (debugging)",
        apply: |o, v| {
            o.optimize = flag(v)?;
            Ok(())
        },
    },
    OptionSpec {
        key: "device_id",
        description: "CUDA ordinal of the quilt GPU device to run on, among the devices given to the session (default: the first one given)",
        apply: |o, v| {
            o.device_id = Some(v.trim().parse().map_err(|_| "expected a GPU ordinal (0, 1, ...)".to_string())?);
            Ok(())
        },
    },
    OptionSpec {
        key: "cache_dir",
        description: "directory of the compiled-kernel cache, shared by every session of the process (default $QUILT_CACHE_DIR, else ~/.cache/quilt/kernels); empty turns the disk cache off",
        apply: |o, v| {
            o.cache_dir = Some(Some(PathBuf::from(v)).filter(|p| !p.as_os_str().is_empty()));
            Ok(())
        },
    },
    OptionSpec {
        key: "precision",
        description: "model|fp16 (default model): fp16 runs f32 models in f16 storage with f32 statistics, keeping f32 inputs/outputs and the numerically fragile paths (timestep angles, integer casts, exp/pow chains)",
        apply: |o, v| {
            o.precision = v.parse()?;
            Ok(())
        },
    },
    OptionSpec {
        key: "layout",
        description: "auto|nchw|channels_last (default auto): channels_last runs 2-D convolutions, and the ops between them, on NHWC data on the GPU device (cuDNN's tensor-core layout); auto does so when cuDNN loads; nchw keeps the model's layout",
        apply: |o, v| {
            o.layout = match v {
                "auto" => Layout::Auto,
                "nchw" => Layout::Nchw,
                "channels_last" => Layout::ChannelsLast,
                _ => return Err("expected auto, nchw or channels_last".into()),
            };
            Ok(())
        },
    },
    OptionSpec {
        key: "conv_residual",
        description: "0|1 (default 0): 1 adds a convolution's residual (ResNet blocks' shortcut sums) in cuDNN's epilogue, where cuDNN compiles some of those kernels at run time for every new batch or size; 0 leaves the add to quilt's own kernels",
        apply: |o, v| {
            o.conv_residual = flag(v)?;
            Ok(())
        },
    },
    OptionSpec {
        key: "pack_projections",
        description: "1|0 (default 1): 1 computes an attention's q, k and v projections (or k and v) as one MatMul against their weights side by side, made at compile time, and the attention reads its inputs as column ranges of that product; 0 keeps one MatMul per projection",
        apply: |o, v| {
            o.pack_projections = flag(v)?;
            Ok(())
        },
    },
    OptionSpec {
        key: "cuda_graph",
        description: "1|0 (default 1): 1 captures each input-shape signature's run into a CUDA graph on its second run and replays it after that; 0 queues every step each run",
        apply: |o, v| {
            o.cuda_graph = flag(v)?;
            Ok(())
        },
    },
];

impl Options {
    /// The optimizer settings that Compile and GetCapability's trial compile both use, for the
    /// GPU device (`cuda`) or the reference device.
    pub fn optimize_options(&self, cuda: bool) -> quilt_rewrites::OptimizeOptions {
        let channels_last = cuda
            && match self.layout {
                Layout::Nchw => false,
                Layout::ChannelsLast => true,
                Layout::Auto => AUTO_CHANNELS_LAST && quilt_kernels::cuda::conv::cudnn::library().is_ok(),
            };
        quilt_rewrites::OptimizeOptions {
            enabled: self.optimize,
            channels_last: channels_last.then(quilt_rewrites::layout::LayoutOptions::default),
            residual_epilogues: quilt_rewrites::epilogue::EpilogueTargets { convs: self.conv_residual, gemms: true },
            pack_projections: self.pack_projections,
            ..quilt_rewrites::OptimizeOptions::default()
        }
    }

    /// The plan of an imported graph under these options (optimizer, precision, layout): what
    /// Compile runs and what GetCapability's trial compile checks.
    pub fn plan(&self, graph: &quilt_rewrites::ir::Graph, cuda: bool) -> std::result::Result<quilt_rewrites::Plan, quilt_rewrites::Error> {
        quilt_rewrites::precision::optimize_with_precision(graph, &self.optimize_options(cuda), self.precision)
    }

    /// Parses the session config entries (all of them; those without [`PREFIX`] are ignored).
    /// An unknown quilt key or a bad value is an error that lists the known options.
    pub fn from_config<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Options> {
        let mut options = Options::default();
        for (full_key, value) in entries {
            let Some(key) = full_key.strip_prefix(PREFIX) else { continue };
            let Some(spec) = OPTIONS.iter().find(|s| s.key == key) else {
                return Err(Error::Option {
                    key: full_key.to_string(),
                    msg: format!("unknown quilt option; known options are: {}", known_options()),
                });
            };
            (spec.apply)(&mut options, value).map_err(|msg| Error::Option {
                key: full_key.to_string(),
                msg: format!("bad value '{value}': {msg}"),
            })?;
        }
        Ok(options)
    }
}

/// A `1|0` option's value.
fn flag(v: &str) -> std::result::Result<bool, String> {
    match v {
        "1" => Ok(true),
        "0" => Ok(false),
        _ => Err("expected 0 or 1".into()),
    }
}

fn known_options() -> String {
    OPTIONS.iter().map(|s| format!("{} ({})", s.key, s.description)).collect::<Vec<_>>().join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_dir_sets_or_turns_off_the_kernel_cache() {
        let o = Options::from_config([("ep.quiltexecutionprovider.cache_dir", "/tmp/k")]).unwrap();
        assert_eq!(o.cache_dir, Some(Some(PathBuf::from("/tmp/k"))));
        let o = Options::from_config([("ep.quiltexecutionprovider.cache_dir", "")]).unwrap();
        assert_eq!(o.cache_dir, Some(None));
        assert_eq!(Options::default().cache_dir, None);
    }

    #[test]
    fn parses_known_options_and_ignores_other_prefixes() {
        let o = Options::from_config([
            ("session.disable_cpu_ep_fallback", "1"),
            ("ep.quiltexecutionprovider.log_level", "verbose"),
            ("ep.quiltexecutionprovider.dump_plans", "/tmp/plans"),
            ("ep.cuda.whatever", "x"),
        ])
        .unwrap();
        assert_eq!(o.log_level, LogLevel::Verbose);
        assert_eq!(o.dump_plans, Some(PathBuf::from("/tmp/plans")));
    }

    #[test]
    fn optimize_option() {
        assert!(Options::default().optimize);
        let o = Options::from_config([("ep.quiltexecutionprovider.optimize", "0")]).unwrap();
        assert!(!o.optimize && !o.optimize_options(false).enabled);
        let e = Options::from_config([("ep.quiltexecutionprovider.optimize", "yes")]).unwrap_err().to_string();
        assert!(e.contains("optimize") && e.contains("yes") && e.contains("0 or 1"), "{e}");
    }

    #[test]
    fn device_id_option() {
        assert_eq!(Options::default().device_id, None);
        let o = Options::from_config([("ep.quiltexecutionprovider.device_id", "1")]).unwrap();
        assert_eq!(o.device_id, Some(1));
        let e = Options::from_config([("ep.quiltexecutionprovider.device_id", "-1")]).unwrap_err().to_string();
        assert!(e.contains("device_id") && e.contains("-1") && e.contains("ordinal"), "{e}");
    }

    #[test]
    fn precision_option() {
        use quilt_rewrites::precision::Precision;
        assert_eq!(Options::default().precision, Precision::Model);
        assert_eq!(Options::from_config([("ep.quiltexecutionprovider.precision", "fp16")]).unwrap().precision, Precision::Fp16);
        let e = Options::from_config([("ep.quiltexecutionprovider.precision", "fp8")]).unwrap_err().to_string();
        assert!(e.contains("precision") && e.contains("fp8") && e.contains("fp16"), "{e}");
    }

    #[test]
    fn pack_projections_option() {
        assert!(Options::default().pack_projections && Options::default().optimize_options(true).pack_projections);
        let o = Options::from_config([("ep.quiltexecutionprovider.pack_projections", "0")]).unwrap();
        assert!(!o.pack_projections && !o.optimize_options(true).pack_projections);
        let e = Options::from_config([("ep.quiltexecutionprovider.pack_projections", "yes")]).unwrap_err().to_string();
        assert!(e.contains("pack_projections") && e.contains("yes"), "{e}");
    }

    #[test]
    fn conv_residual_option() {
        use quilt_rewrites::epilogue::EpilogueTargets;
        assert_eq!(Options::default().optimize_options(true).residual_epilogues, EpilogueTargets { convs: false, gemms: true });
        let o = Options::from_config([("ep.quiltexecutionprovider.conv_residual", "1")]).unwrap();
        assert_eq!(o.optimize_options(true).residual_epilogues, EpilogueTargets::ALL);
        let e = Options::from_config([("ep.quiltexecutionprovider.conv_residual", "off")]).unwrap_err().to_string();
        assert!(e.contains("conv_residual") && e.contains("off") && e.contains("0 or 1"), "{e}");
    }

    #[test]
    fn cuda_graph_option() {
        assert!(Options::default().cuda_graph);
        assert!(!Options::from_config([("ep.quiltexecutionprovider.cuda_graph", "0")]).unwrap().cuda_graph);
        assert!(Options::from_config([("ep.quiltexecutionprovider.cuda_graph", "1")]).unwrap().cuda_graph);
        let e = Options::from_config([("ep.quiltexecutionprovider.cuda_graph", "on")]).unwrap_err().to_string();
        assert!(e.contains("cuda_graph") && e.contains("on") && e.contains("0 or 1"), "{e}");
    }

    #[test]
    fn defaults_without_entries() {
        assert_eq!(Options::from_config([]).unwrap(), Options::default());
    }

    #[test]
    fn unknown_key_lists_the_known_ones() {
        let e = Options::from_config([("ep.quiltexecutionprovider.fast", "1")]).unwrap_err().to_string();
        assert!(e.contains("ep.quiltexecutionprovider.fast"), "{e}");
        assert!(e.contains("dump_plans") && e.contains("log_level"), "{e}");
    }

    #[test]
    fn bad_value_names_key_and_value() {
        let e = Options::from_config([("ep.quiltexecutionprovider.log_level", "loud")]).unwrap_err().to_string();
        assert!(e.contains("log_level") && e.contains("loud"), "{e}");
    }
}
