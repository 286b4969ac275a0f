//! The `quilt` command line. Subcommands: `run`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::compare::Tolerance;
use crate::equivalence::{compare_sessions, dims_label, input_specs, make_inputs};
use crate::error::{ModelsError, Result};
use crate::manifest::{parse_dims, Manifest};
use crate::plan_dump::TakenNodes;
use crate::runtime::{QuiltSessionError, Runtime, RuntimePaths, EP_NAME};

const USAGE: &str = "\
usage: quilt run MODEL.onnx [options]

Runs MODEL through ONNX Runtime twice, once with the quilt EP (its CPU reference device) and once
with ORT's CPU EP, on the same seeded random inputs, and compares every output.

options:
  --dims NAME=N,...     symbolic dims (default: every test_dims entry of the model's manifest entry)
  --manifest PATH       fixture manifest (default: models/fixtures/manifest.json)
  --ep-lib PATH         libquilt_ep.so (default: $QUILT_EP_LIB, else target/release/libquilt_ep.so)
  --ort-lib PATH        libonnxruntime.so (default: $ORT_DYLIB_PATH, else $QUILT_ORT_LIB)
  --atol X              absolute tolerance (default 1e-4)
  --rtol X              relative tolerance (default 1e-3)
  --seed N              random input seed (default 0)
  --dump-plans DIR      keep quilt's plan dumps in DIR (default: a temporary directory)
  --log-level LEVEL     quilt's log_level option

exit status: 0 all outputs within tolerance, 1 some output out of tolerance, 2 any other error
(quilt taking no node of the model included: there would be nothing of quilt's to compare)";

#[derive(Debug, Clone, PartialEq)]
pub struct RunArgs {
    pub model: PathBuf,
    pub dims: Option<BTreeMap<String, i64>>,
    pub manifest: PathBuf,
    pub ep_lib: Option<PathBuf>,
    pub ort_lib: Option<PathBuf>,
    pub tol: Tolerance,
    pub seed: u64,
    pub dump_plans: Option<PathBuf>,
    pub log_level: Option<String>,
}

pub fn parse_run_args(args: &[String]) -> Result<RunArgs> {
    let mut model = None;
    let mut parsed = RunArgs {
        model: PathBuf::new(),
        dims: None,
        manifest: PathBuf::from("models/fixtures/manifest.json"),
        ep_lib: None,
        ort_lib: None,
        tol: Tolerance::FP32,
        seed: 0,
        dump_plans: None,
        log_level: None,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        // Accept both `--key value` and `--key=value`.
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Result<String> {
            inline.clone().or_else(|| it.next().cloned()).ok_or_else(|| ModelsError::Usage(format!("{key} needs a value")))
        };
        let float = |v: String| v.parse::<f64>().map_err(|_| ModelsError::Usage(format!("{key}: `{v}` is not a number")));
        match key {
            "--dims" => parsed.dims = Some(parse_dims(&value()?)?),
            "--manifest" => parsed.manifest = PathBuf::from(value()?),
            "--ep-lib" => parsed.ep_lib = Some(PathBuf::from(value()?)),
            "--ort-lib" => parsed.ort_lib = Some(PathBuf::from(value()?)),
            "--atol" => parsed.tol.atol = float(value()?)?,
            "--rtol" => parsed.tol.rtol = float(value()?)?,
            "--seed" => {
                let v = value()?;
                parsed.seed = v.parse().map_err(|_| ModelsError::Usage(format!("--seed: `{v}` is not an integer")))?
            }
            "--dump-plans" => parsed.dump_plans = Some(PathBuf::from(value()?)),
            "--log-level" => parsed.log_level = Some(value()?),
            flag if flag.starts_with('-') => return Err(ModelsError::Usage(format!("unknown option {flag}"))),
            path if model.is_none() => model = Some(PathBuf::from(path)),
            extra => return Err(ModelsError::Usage(format!("unexpected argument `{extra}`"))),
        }
    }
    parsed.model = model.ok_or_else(|| ModelsError::Usage("missing MODEL.onnx".into()))?;
    Ok(parsed)
}

/// Entry point; returns the process exit status.
pub fn main(args: &[String]) -> i32 {
    match args.first().map(String::as_str) {
        Some("run") => match parse_run_args(&args[1..]).and_then(|a| run_command(&a)) {
            Ok(true) => 0,
            Ok(false) => 1,
            Err(e) => {
                eprintln!("quilt run: error: {e}");
                2
            }
        },
        Some("sd") => crate::sd::cli::main(&args[1..]),
        Some("explain") => crate::explain::command(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            0
        }
        Some(other) => {
            eprintln!("quilt: unknown subcommand `{other}`\n\n{USAGE}");
            2
        }
        None => {
            eprintln!("{USAGE}");
            2
        }
    }
}

/// Runs the comparison and prints the report; `Ok(false)` when some output is out of tolerance.
pub fn run_command(args: &RunArgs) -> Result<bool> {
    if !args.model.is_file() {
        return Err(ModelsError::Usage(format!("model {} does not exist", args.model.display())));
    }
    let manifest = if args.manifest.is_file() { Some(Manifest::load(&args.manifest)?) } else { None };
    let entry = manifest.as_ref().and_then(|m| m.find_by_file(&args.model));

    let paths = RuntimePaths::resolve(args.ort_lib.clone(), args.ep_lib.clone())?;
    println!("model     {}{}", args.model.display(), entry.map(|e| format!(" (manifest entry `{}`)", e.name)).unwrap_or_default());
    println!("ORT       {}", paths.ort_lib.display());
    println!("quilt EP  {} ({EP_NAME}, CPU reference device)", paths.ep_lib.display());
    let runtime = Runtime::new(paths)?;

    let dump_dir = match &args.dump_plans {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("quilt-run-{}", std::process::id())),
    };
    // Stale dumps from an earlier run would be counted as taken nodes.
    let _ = std::fs::remove_dir_all(&dump_dir);
    std::fs::create_dir_all(&dump_dir).map_err(|e| ModelsError::io(&dump_dir, e))?;
    let dump = dump_dir.to_string_lossy().into_owned();
    let mut options: Vec<(&str, &str)> = vec![("dump_plans", dump.as_str())];
    if let Some(level) = &args.log_level {
        options.push(("log_level", level.as_str()));
    }

    let start = Instant::now();
    let mut quilt = match runtime.quilt_session(&args.model, &options, false) {
        Ok(session) => session,
        Err(QuiltSessionError::Declined(_)) => {
            println!("note      quilt declined some node(s); ORT's CPU EP runs them (retrying with CPU fallback allowed)");
            let _ = std::fs::remove_dir_all(&dump_dir);
            std::fs::create_dir_all(&dump_dir).map_err(|e| ModelsError::io(&dump_dir, e))?;
            runtime.quilt_session(&args.model, &options, true)?
        }
        Err(e) => return Err(e.into()),
    };
    let quilt_build = start.elapsed();
    let start = Instant::now();
    let mut cpu = runtime.cpu_session(&args.model)?;
    let cpu_build = start.elapsed();

    if print_taken(&dump_dir)? == 0 {
        // Comparing ORT's CPU EP with itself would pass whatever quilt does.
        return Err(ModelsError::ort(
            "quilt took no node of the model",
            "ORT's CPU EP would run all of it, so there is nothing of quilt's to compare (run with --log-level info to see why quilt declined)",
        ));
    }

    let specs = input_specs(entry, &quilt)?;
    let dims_list: Vec<BTreeMap<String, i64>> = match (&args.dims, entry) {
        (Some(dims), _) => vec![dims.clone()],
        (None, Some(entry)) if !entry.test_dims.is_empty() => entry.test_dims.clone(),
        _ => vec![BTreeMap::new()],
    };
    println!(
        "sessions  quilt {:.1} ms, CPU EP {:.1} ms to build; tolerance atol {:e} rtol {:e}; seed {}",
        ms(quilt_build),
        ms(cpu_build),
        args.tol.atol,
        args.tol.rtol,
        args.seed
    );

    let mut all_passed = true;
    for dims in &dims_list {
        let inputs = make_inputs(&specs, dims, args.seed)?;
        let report = compare_sessions(&mut quilt, &mut cpu, &inputs, args.tol)?;
        println!(
            "dims {}: quilt {:.2} ms, CPU EP {:.2} ms",
            dims_label(dims),
            ms(report.quilt_time),
            ms(report.cpu_time)
        );
        for (name, c) in &report.outputs {
            println!(
                "  {name:<20} {:<16} {:<8} max abs {:.3e}  max rel {:.3e}  {}",
                format!("{:?}", c.shape),
                c.dtype,
                c.max_abs,
                c.max_rel,
                if c.passed() { "ok".to_string() } else { format!("FAIL ({})", c.describe()) }
            );
        }
        all_passed &= report.passed();
    }
    if args.dump_plans.is_none() {
        let _ = std::fs::remove_dir_all(&dump_dir);
    }
    println!("{}", if all_passed { "PASS: quilt matches ORT's CPU EP" } else { "FAIL: quilt differs from ORT's CPU EP" });
    Ok(all_passed)
}

/// Prints what quilt took and returns how many fused subgraphs it compiled.
fn print_taken(dump_dir: &Path) -> Result<usize> {
    let taken = TakenNodes::read(dump_dir)?;
    println!("quilt took {} node(s) in {} fused subgraph(s)", taken.nodes.len(), taken.subgraphs.len());
    if !taken.nodes.is_empty() {
        println!("  ops: {}", taken.histogram_line());
    }
    if !taken.without_node_list.is_empty() {
        println!("  ({} subgraph(s) have a plan but no .nodes.txt, so their nodes are not counted)", taken.without_node_list.len());
    }
    Ok(taken.subgraphs.len() + taken.without_node_list.len())
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_run_arguments() {
        let a = parse_run_args(&args(&["m.onnx", "--dims", "batch=2,height=16", "--atol=1e-3", "--seed", "5"])).unwrap();
        assert_eq!(a.model, PathBuf::from("m.onnx"));
        assert_eq!(a.dims.unwrap()["height"], 16);
        assert_eq!(a.tol.atol, 1e-3);
        assert_eq!(a.tol.rtol, 1e-3);
        assert_eq!(a.seed, 5);
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(parse_run_args(&args(&[])).unwrap_err().to_string().contains("MODEL"));
        assert!(parse_run_args(&args(&["m.onnx", "--bogus"])).unwrap_err().to_string().contains("--bogus"));
        assert!(parse_run_args(&args(&["m.onnx", "--atol"])).unwrap_err().to_string().contains("needs a value"));
        assert!(parse_run_args(&args(&["a.onnx", "b.onnx"])).is_err());
    }

    #[test]
    fn unknown_subcommand_is_an_error() {
        assert_eq!(main(&args(&["frobnicate"])), 2);
        assert_eq!(main(&args(&["run", "/nonexistent/model.onnx"])), 2);
    }
}
