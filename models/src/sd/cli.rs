//! `quilt sd txt2img`: the pipeline from the command line, with a progress line per denoising step
//! and a timing line per stage.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use crate::runtime::{Runtime, RuntimePaths};
use crate::sd::bundled;
use crate::error::{ModelsError, Result};
use crate::sd::models::Ep;
use crate::sd::pipeline_dir::PipelineDir;
use crate::sd::schedulers::SchedulerKind;
use crate::sd::txt2img::{write_png, SdPipeline, Txt2ImgRequest};

const USAGE: &str = "\
usage: quilt sd txt2img [--model DIR] --prompt TEXT [options] --out IMAGE.png

Runs a Stable Diffusion ONNX pipeline directory (Optimum's layout: model_index.json, text_encoder/,
unet/, vae_decoder/, tokenizer/, scheduler/) through ONNX Runtime with quilt. Without --model it
runs the bundled tiny random-weights pipeline (written to target/quilt-sd/tiny_sd).

options:
  --model DIR          pipeline directory (default: the bundled tiny pipeline)
  --prompt TEXT        the prompt
  --negative TEXT      negative prompt (default: empty)
  --steps N            denoising steps (default 20)
  --size WxH           image size, multiples of 8 (default 512x512; the tiny pipeline: 64x64)
  --seed S             latent noise seed (default 0; quilt's own generator, not torch's)
  --guidance G         classifier-free guidance scale (default 7.5; ≤ 1 disables it)
  --scheduler NAME     ddim | pndm | euler | euler-a | dpm++2m (default: the pipeline's)
  --ep quilt|cpu       execution provider (default quilt; cpu is ORT's CPU EP)
  --ep-lib PATH        libquilt_ep.so (default $QUILT_EP_LIB, else target/release/libquilt_ep.so)
  --ort-lib PATH       libonnxruntime.so (default $ORT_DYLIB_PATH)
  --out PATH           PNG to write (required)";

#[derive(Debug, Clone)]
pub struct SdArgs {
    pub model: Option<PathBuf>,
    pub request: Txt2ImgRequest,
    pub size_given: bool,
    pub ep: Ep,
    pub ep_lib: Option<PathBuf>,
    pub ort_lib: Option<PathBuf>,
    pub out: PathBuf,
}

pub fn parse_txt2img_args(args: &[String]) -> Result<SdArgs> {
    let mut parsed = SdArgs { model: None, request: Txt2ImgRequest::default(), size_given: false, ep: Ep::Quilt, ep_lib: None, ort_lib: None, out: PathBuf::new() };
    let mut prompt = None;
    let mut out = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next().cloned()).ok_or_else(|| ModelsError::Usage(format!("{key} needs a value")));
        let int = |v: String| v.parse::<u64>().map_err(|_| ModelsError::Usage(format!("{key}: `{v}` is not a non-negative integer")));
        match key {
            "--model" => parsed.model = Some(PathBuf::from(value()?)),
            "--prompt" => prompt = Some(value()?),
            "--negative" => parsed.request.negative = value()?,
            "--steps" => parsed.request.steps = int(value()?)? as usize,
            "--seed" => parsed.request.seed = int(value()?)?,
            "--guidance" => {
                let v = value()?;
                parsed.request.guidance_scale = v.parse().map_err(|_| ModelsError::Usage(format!("--guidance: `{v}` is not a number")))?
            }
            "--size" => {
                let v = value()?;
                let (w, h) = v.split_once(['x', 'X']).ok_or_else(|| ModelsError::Usage(format!("--size `{v}`: expected WxH")))?;
                parsed.request.width = int(w.to_string())? as usize;
                parsed.request.height = int(h.to_string())? as usize;
                parsed.size_given = true;
            }
            "--scheduler" => parsed.request.scheduler = Some(SchedulerKind::parse(&value()?)?),
            "--ep" => parsed.ep = Ep::parse(&value()?)?,
            "--ep-lib" => parsed.ep_lib = Some(PathBuf::from(value()?)),
            "--ort-lib" => parsed.ort_lib = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            other => return Err(ModelsError::Usage(format!("unknown argument `{other}`"))),
        }
    }
    parsed.request.prompt = prompt.ok_or_else(|| ModelsError::Usage("--prompt is required".into()))?;
    parsed.out = out.ok_or_else(|| ModelsError::Usage("--out is required".into()))?;
    Ok(parsed)
}

/// `quilt sd ...`; returns the exit status.
pub fn main(args: &[String]) -> i32 {
    match args.first().map(String::as_str) {
        Some("txt2img") => match parse_txt2img_args(&args[1..]).and_then(|a| txt2img_command(&a)) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("quilt sd txt2img: error: {e}");
                2
            }
        },
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            0
        }
        Some(other) => {
            eprintln!("quilt sd: unknown subcommand `{other}` (implemented: txt2img)\n\n{USAGE}");
            2
        }
        None => {
            eprintln!("{USAGE}");
            2
        }
    }
}

pub fn txt2img_command(args: &SdArgs) -> Result<()> {
    let mut request = args.request.clone();
    let model_dir = match &args.model {
        Some(dir) => dir.clone(),
        None => {
            if !args.size_given {
                request.width = 64;
                request.height = 64;
            }
            bundled::materialize_tiny_pipeline(&bundled::default_dir())?
        }
    };
    let dir = PipelineDir::open(&model_dir)?;
    let paths = RuntimePaths::resolve(args.ort_lib.clone(), args.ep_lib.clone())?;
    let runtime = Runtime::new(paths)?;
    let t = Instant::now();
    let mut pipeline = SdPipeline::load(&runtime, dir, args.ep)?;
    println!("pipeline  {} ({:?} EP), sessions built in {:.1} ms", model_dir.display(), args.ep, t.elapsed().as_secs_f64() * 1e3);
    for name in pipeline.fallbacks() {
        println!("note      quilt declined some nodes of {name}; ORT's CPU EP runs them");
    }
    let generated = pipeline.txt2img(&request, &mut |i, n, d| {
        print!("\rdenoise   step {i}/{n} [{}{}] {:.1} ms", "#".repeat(i * 20 / n), ".".repeat(20 - i * 20 / n), d.as_secs_f64() * 1e3);
        let _ = std::io::stdout().flush();
        if i == n {
            println!();
        }
    })?;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let times = &generated.times;
    let unet_total: f64 = times.unet_steps.iter().map(|&d| ms(d)).sum();
    println!("scheduler {}, {} steps, {}x{}, seed {}, guidance {}", generated.scheduler.class_name(), times.unet_steps.len(), request.width, request.height, request.seed, request.guidance_scale);
    println!("time      text_encoder {:.1} ms", ms(times.text_encoder));
    println!("time      unet {:.1} ms total, {:.2} ms per step", unet_total, unet_total / times.unet_steps.len().max(1) as f64);
    println!("time      vae_decoder {:.1} ms", ms(times.vae_decoder));
    println!("time      total {:.1} ms", ms(times.total));
    write_png(&args.out, &generated.image, generated.image_shape)?;
    println!("wrote     {}", args.out.display());
    Ok(())
}
