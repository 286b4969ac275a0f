//! `quilt sd txt2img|img2img|inpaint`: the pipelines from the command line, with a progress line per denoising step
//! and a timing line per stage.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use crate::runtime::{Runtime, RuntimePaths};
use crate::sd::bundled::{self, TinyPipeline};
use crate::sd::generate::Init;
use crate::sd::images::{SdImage, SdMask};
use crate::error::{ModelsError, Result};
use crate::sd::models::Ep;
use crate::sd::pipeline_dir::{PipelineDir, TextEncoderKind};
use crate::sd::schedulers::SchedulerKind;
use crate::sd::unet_io::UnetIo;
use crate::sd::txt2img::{write_png, SdPipeline, Txt2ImgRequest};
use crate::sd::unet_io::StepSplit;

const USAGE: &str = "\
usage: quilt sd txt2img|img2img|inpaint [--model DIR] --prompt TEXT [options] --out IMAGE.png

Runs a Stable Diffusion ONNX pipeline directory (Optimum's layout: model_index.json, text_encoder/,
unet/, vae_decoder/, vae_encoder/, tokenizer/, scheduler/) through ONNX Runtime with quilt.
  txt2img   an image from the prompt
  img2img   --image IN.png redrawn from the prompt; --strength says how much (diffusers' meaning)
  inpaint   --image IN.png repainted where --mask MASK.png is white (a 9-channel inpainting UNet)
An XLM-RoBERTa text encoder (AltDiffusion) is recognised from model_index.json or the tokenizer
config and tokenized with XLM-R. Without --model each subcommand runs a bundled tiny random-weights
pipeline (written to target/quilt-sd/); there, a missing --image (and --mask) is generated: a seeded
gradient (and a centred box).

options:
  --model DIR          pipeline directory (default: the bundled tiny pipeline)
  --pipeline sd|alt    the bundled pipeline's text encoder: CLIP (sd) or XLM-R (alt, AltDiffusion);
                       with --model, alt checks that the directory is an AltDiffusion pipeline
  --prompt TEXT        the prompt; give it again for a batch of prompts (one image each)
  --images-per-prompt N  images generated per prompt in the same batch (default 1)
  --negative TEXT      negative prompt (default: empty)
  --image PATH         img2img/inpaint input image (its size is the output size)
  --mask PATH          inpaint mask, same size as the image (white = repaint)
  --strength S         img2img/inpaint: 0 < S <= 1, runs int(steps*S) of the steps
                       (default 0.8 for img2img, 1.0 for inpaint)
  --steps N            denoising steps (default 20)
  --size WxH           image size, multiples of 8 (default 512x512; the tiny pipelines: 64x64;
                       img2img/inpaint: the image's size)
  --seed S             latent noise seed (default 0; quilt's own generator, not torch's)
  --guidance G         classifier-free guidance scale (default 7.5; ≤ 1 disables it)
  --scheduler NAME     ddim | pndm | euler | euler-a | dpm++2m (default: the pipeline's)
  --ep quilt|cpu       execution provider (default quilt; cpu is ORT's CPU EP)
  --ep-lib PATH        libquilt_ep.so (default $QUILT_EP_LIB, else target/release/libquilt_ep.so)
  --ort-lib PATH       libonnxruntime.so (default $ORT_DYLIB_PATH)
  --ep-option K=V      a quilt EP option for every model (e.g. precision=fp16); repeatable
  --repeat N           run the generation N times with the same sessions and report each time
  --unet-io MODE       how the UNet's tensors move between denoising steps (printed as `unet io`):
                       auto (default): device binding on quilt (inputs and output allocated once per
                       generation where the session runs, text embeddings uploaded once, only the
                       latents copied each step), host tensors on --ep cpu; binding: device binding
                       or an error; host: host tensors through Session::run every step
  --trace              print each UNet step's time split (also QUILT_SD_TRACE=1): prep (latent
                       scaling, sample assembly, staging writes), upload (host->device copies),
                       run (the UNet; with host tensors it includes ORT's own copies), download
                       (output copy back), scheduler (guidance + scheduler step), in microseconds.
                       The mean split of the last generation is always printed
  --out PATH           PNG to write (required); a batch writes PATH's stem + -0, -1, ... + .png";

/// The `quilt sd` subcommands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Txt2Img,
    Img2Img,
    Inpaint,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        match s {
            "txt2img" => Some(Command::Txt2Img),
            "img2img" => Some(Command::Img2Img),
            "inpaint" => Some(Command::Inpaint),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Command::Txt2Img => "txt2img",
            Command::Img2Img => "img2img",
            Command::Inpaint => "inpaint",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SdArgs {
    pub command: Command,
    pub model: Option<PathBuf>,
    /// `--pipeline alt`: an AltDiffusion (XLM-R) pipeline.
    pub alt: bool,
    pub request: Txt2ImgRequest,
    pub size_given: bool,
    pub image: Option<PathBuf>,
    pub mask: Option<PathBuf>,
    pub strength: Option<f32>,
    pub ep: Ep,
    pub ep_lib: Option<PathBuf>,
    pub ort_lib: Option<PathBuf>,
    /// quilt EP options for every session (`--ep-option precision=fp16`).
    pub ep_options: Vec<(String, String)>,
    /// Generations to run with the loaded sessions (timings of each; benchmarks use > 1).
    pub repeat: usize,
    /// How the UNet's tensors move (`--unet-io`).
    pub unet_io: UnetIo,
    /// Print every step's time split (`--trace` or `QUILT_SD_TRACE=1`).
    pub trace: bool,
    pub out: PathBuf,
}

pub fn parse_txt2img_args(args: &[String]) -> Result<SdArgs> {
    parse_args(Command::Txt2Img, args)
}

pub fn parse_args(command: Command, args: &[String]) -> Result<SdArgs> {
    let mut parsed = SdArgs {
        command,
        model: None,
        alt: false,
        request: Txt2ImgRequest::default(),
        size_given: false,
        image: None,
        mask: None,
        strength: None,
        ep: Ep::Quilt,
        ep_lib: None,
        ort_lib: None,
        ep_options: Vec::new(),
        repeat: 1,
        unet_io: UnetIo::Auto,
        trace: std::env::var("QUILT_SD_TRACE").is_ok_and(|v| v == "1"),
        out: PathBuf::new(),
    };
    let mut prompts = Vec::new();
    let mut out = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next().cloned()).ok_or_else(|| ModelsError::Usage(format!("{key} needs a value")));
        let int = |v: String| v.parse::<u64>().map_err(|_| ModelsError::Usage(format!("{key}: `{v}` is not a non-negative integer")));
        let number = |v: String| v.parse::<f32>().map_err(|_| ModelsError::Usage(format!("{key}: `{v}` is not a number")));
        let only_for = |allowed: &[Command]| {
            if allowed.contains(&command) {
                Ok(())
            } else {
                Err(ModelsError::Usage(format!("{key} does not apply to {}", command.name())))
            }
        };
        match key {
            "--model" => parsed.model = Some(PathBuf::from(value()?)),
            "--pipeline" => {
                parsed.alt = match value()?.as_str() {
                    "sd" => false,
                    "alt" => true,
                    other => return Err(ModelsError::Usage(format!("--pipeline `{other}`: expected sd or alt"))),
                }
            }
            "--prompt" => prompts.push(value()?),
            "--images-per-prompt" => {
                parsed.request.images_per_prompt = int(value()?)? as usize;
                if parsed.request.images_per_prompt == 0 {
                    return Err(ModelsError::Usage("--images-per-prompt must be at least 1".into()));
                }
            }
            "--negative" => parsed.request.negative = value()?,
            "--image" => {
                only_for(&[Command::Img2Img, Command::Inpaint])?;
                parsed.image = Some(PathBuf::from(value()?))
            }
            "--mask" => {
                only_for(&[Command::Inpaint])?;
                parsed.mask = Some(PathBuf::from(value()?))
            }
            "--strength" => {
                only_for(&[Command::Img2Img, Command::Inpaint])?;
                parsed.strength = Some(number(value()?)?)
            }
            "--steps" => parsed.request.steps = int(value()?)? as usize,
            "--seed" => parsed.request.seed = int(value()?)?,
            "--guidance" => parsed.request.guidance_scale = number(value()?)?,
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
            "--ep-option" => {
                let v = value()?;
                let (k, val) = v.split_once('=').ok_or_else(|| ModelsError::Usage(format!("--ep-option `{v}`: expected KEY=VALUE")))?;
                parsed.ep_options.push((k.to_string(), val.to_string()));
            }
            "--repeat" => {
                parsed.repeat = int(value()?)? as usize;
                if parsed.repeat == 0 {
                    return Err(ModelsError::Usage("--repeat must be at least 1".into()));
                }
            }
            "--unet-io" => parsed.unet_io = UnetIo::parse(&value()?)?,
            "--trace" => {
                if inline.is_some() {
                    return Err(ModelsError::Usage("--trace takes no value".into()));
                }
                parsed.trace = true
            }
            "--out" => out = Some(PathBuf::from(value()?)),
            other => return Err(ModelsError::Usage(format!("unknown argument `{other}`"))),
        }
    }
    if command == Command::Inpaint && parsed.alt {
        return Err(ModelsError::Usage("--pipeline alt: there is no AltDiffusion inpainting pipeline".into()));
    }
    if parsed.model.is_some() && command != Command::Txt2Img {
        if parsed.image.is_none() {
            return Err(ModelsError::Usage(format!("{} with --model needs --image (an input image is generated only for the bundled pipeline)", command.name())));
        }
        if command == Command::Inpaint && parsed.mask.is_none() {
            return Err(ModelsError::Usage("inpaint with --model needs --mask (a mask is generated only for the bundled pipeline)".into()));
        }
    }
    if prompts.is_empty() {
        return Err(ModelsError::Usage("--prompt is required".into()));
    }
    parsed.request.prompts = prompts;
    parsed.out = out.ok_or_else(|| ModelsError::Usage("--out is required".into()))?;
    Ok(parsed)
}

/// `quilt sd ...`; returns the exit status.
pub fn main(args: &[String]) -> i32 {
    match args.first().map(String::as_str) {
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            0
        }
        Some(sub) => match Command::parse(sub) {
            Some(command) => match parse_args(command, &args[1..]).and_then(|a| sd_command(&a)) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("quilt sd {sub}: error: {e}");
                    2
                }
            },
            None => {
                eprintln!("quilt sd: unknown subcommand `{sub}` (expected txt2img, img2img or inpaint)\n\n{USAGE}");
                2
            }
        },
        None => {
            eprintln!("{USAGE}");
            2
        }
    }
}

pub fn txt2img_command(args: &SdArgs) -> Result<()> {
    sd_command(args)
}

/// The image and mask to start from: read from `--image`/`--mask`, or (bundled pipeline only)
/// generated at the requested size.
fn inputs(args: &SdArgs, request: &mut Txt2ImgRequest) -> Result<(Option<SdImage>, Option<SdMask>)> {
    if args.command == Command::Txt2Img {
        return Ok((None, None));
    }
    let image = match &args.image {
        Some(path) => {
            let image = SdImage::load(path)?;
            if args.size_given && (request.width, request.height) != (image.width, image.height) {
                return Err(ModelsError::Usage(format!("--size {}x{} but {} is {}x{} (img2img and inpaint keep the image's size)", request.width, request.height, path.display(), image.width, image.height)));
            }
            (request.width, request.height) = (image.width, image.height);
            println!("input     {} ({}x{})", path.display(), image.width, image.height);
            image
        }
        None => {
            println!("input     no --image: a generated gradient ({}x{}, seed {})", request.width, request.height, request.seed);
            SdImage::gradient(request.width, request.height, request.seed)
        }
    };
    let mask = match (args.command, &args.mask) {
        (Command::Inpaint, Some(path)) => {
            let mask = SdMask::load(path)?;
            if (mask.width, mask.height) != (image.width, image.height) {
                return Err(ModelsError::Usage(format!("the mask {} is {}x{} but the image is {}x{}; they must be the same size", path.display(), mask.width, mask.height, image.width, image.height)));
            }
            println!("mask      {}", path.display());
            Some(mask)
        }
        (Command::Inpaint, None) => {
            println!("mask      no --mask: a generated centred box (repaints the middle half of each side)");
            Some(SdMask::centered_box(image.width, image.height))
        }
        _ => None,
    };
    Ok((Some(image), mask))
}

pub fn sd_command(args: &SdArgs) -> Result<()> {
    let mut request = args.request.clone();
    let model_dir = match &args.model {
        Some(dir) => dir.clone(),
        None => {
            if !args.size_given && args.image.is_none() {
                request.width = 64;
                request.height = 64;
            }
            let kind = match (args.command, args.alt) {
                (Command::Inpaint, _) => TinyPipeline::Inpaint,
                (_, true) => TinyPipeline::Alt,
                (_, false) => TinyPipeline::Sd,
            };
            bundled::materialize(kind, &bundled::default_dir_for(kind))?
        }
    };
    let dir = PipelineDir::open(&model_dir)?;
    if args.alt && dir.text_encoder_kind != TextEncoderKind::XlmRoberta {
        return Err(ModelsError::pipeline(&model_dir, "--pipeline alt: not an AltDiffusion pipeline (model_index.json and the tokenizer config name no XLM-RoBERTa classes)"));
    }
    let (image, mask) = inputs(args, &mut request)?;
    let paths = RuntimePaths::resolve(args.ort_lib.clone(), args.ep_lib.clone())?;
    let runtime = Runtime::new(paths)?;
    let t = Instant::now();
    let mut pipeline = SdPipeline::load_with_options(&runtime, dir, args.ep, &args.ep_options)?;
    pipeline.unet_io = args.unet_io;
    let encoder = match pipeline.dir.text_encoder_kind {
        TextEncoderKind::Clip => "CLIP",
        TextEncoderKind::XlmRoberta => "XLM-RoBERTa (AltDiffusion)",
    };
    let device = match args.ep {
        Ep::Quilt if runtime.quilt_has_gpu() => ", GPU",
        Ep::Quilt => ", reference CPU device",
        Ep::Cpu => "",
    };
    println!("pipeline  {} ({:?} EP{device}, {encoder} text encoder), sessions built in {:.1} ms", model_dir.display(), args.ep, t.elapsed().as_secs_f64() * 1e3);
    for name in pipeline.fallbacks() {
        println!("note      quilt declined some nodes of {name}; ORT's CPU EP runs them");
    }
    let init = match (args.command, &image, &mask) {
        (Command::Img2Img, Some(image), _) => Init::Image { image, strength: args.strength.unwrap_or(0.8) },
        (Command::Inpaint, Some(image), Some(mask)) => Init::Inpaint { image, mask, strength: args.strength.unwrap_or(1.0) },
        _ => Init::Noise,
    };
    let mut totals = Vec::with_capacity(args.repeat);
    let mut generated = None;
    for run in 0..args.repeat {
        if args.repeat > 1 {
            println!("run       {}/{}", run + 1, args.repeat);
        }
        let g = pipeline.generate(&request, init, &mut |i, n, d| {
            print!("\rdenoise   step {i}/{n} [{}{}] {:.1} ms", "#".repeat(i * 20 / n), ".".repeat(20 - i * 20 / n), d.as_secs_f64() * 1e3);
            let _ = std::io::stdout().flush();
            if i == n {
                println!();
            }
        })?;
        totals.push(g.times.total.as_secs_f64() * 1e3);
        if args.repeat > 1 {
            println!("time      run {} total {:.1} ms", run + 1, g.times.total.as_secs_f64() * 1e3);
        }
        generated = Some(g);
    }
    let generated = generated.expect("repeat is at least 1");
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let times = &generated.times;
    let unet_total: f64 = times.unet_steps.iter().map(|&d| ms(d)).sum();
    let strength = match init {
        Init::Image { strength, .. } | Init::Inpaint { strength, .. } => format!(", strength {strength}"),
        Init::Noise => String::new(),
    };
    println!(
        "{} scheduler {}, {} of {} steps{strength}, {}x{}, batch {}, seed {}, guidance {}",
        args.command.name(),
        generated.scheduler.class_name(),
        times.unet_steps.len(),
        request.steps,
        request.width,
        request.height,
        request.batch(),
        request.seed,
        request.guidance_scale
    );
    println!("time      text_encoder {:.1} ms", ms(times.text_encoder));
    if args.command != Command::Txt2Img {
        println!("time      vae_encoder {:.1} ms", ms(times.vae_encoder));
    }
    println!("time      unet {:.1} ms total, {:.2} ms per step", unet_total, unet_total / times.unet_steps.len().max(1) as f64);
    if let Some(io) = &times.unet_io {
        println!("unet io   {}", io.describe());
    }
    if !times.unet_splits.is_empty() {
        // Step 1 also sets the binding up (allocations, the text embeddings' upload) in its prep.
        println!("time      unet step split (mean of {} steps): {}", times.unet_splits.len(), StepSplit::mean(&times.unet_splits).describe());
        if times.unet_splits.len() > 1 {
            println!("time      unet step split (mean of steps 2-{}): {}", times.unet_splits.len(), StepSplit::mean(&times.unet_splits[1..]).describe());
        }
    }
    if args.trace {
        for (i, (split, total)) in times.unet_splits.iter().zip(&times.unet_steps).enumerate() {
            println!("trace     step {}/{}: {}, total {:.0} us", i + 1, times.unet_steps.len(), split.describe(), total.as_secs_f64() * 1e6);
        }
    }
    println!("time      vae_decoder {:.1} ms", ms(times.vae_decoder));
    println!("time      total {:.1} ms", ms(times.total));
    if totals.len() > 1 {
        let mut sorted = totals.clone();
        sorted.sort_by(f64::total_cmp);
        println!("time      median total {:.1} ms over {} runs (min {:.1} ms)", sorted[sorted.len() / 2], sorted.len(), sorted[0]);
    }
    for (i, path) in output_paths(&args.out, generated.image_shape[0]).iter().enumerate() {
        write_png(path, &generated.image, generated.image_shape, i)?;
        println!("wrote     {}", path.display());
    }
    Ok(())
}

/// Where each image of a batch goes: `out` itself for one image, else `stem-0.png`, `stem-1.png`, ...
pub fn output_paths(out: &std::path::Path, images: usize) -> Vec<PathBuf> {
    if images == 1 {
        return vec![out.to_path_buf()];
    }
    let stem = out.file_stem().map_or_else(|| "image".into(), |s| s.to_string_lossy().into_owned());
    (0..images).map(|i| out.with_file_name(format!("{stem}-{i}.png"))).collect()
}
