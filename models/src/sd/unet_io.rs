//! How the denoising loop moves the UNet's tensors between the host, where guidance and the Rust
//! scheduler run, and the memory the UNet session runs in.
//!
//! - **device binding** ([`UnetBinding`]): one `OrtIoBinding` per generation, its tensors allocated
//!   once in the memory where the session keeps each input and output (quilt's GPU memory on its
//!   GPU device; host memory on quilt's reference device and on ORT's CPU EP).
//!   `encoder_hidden_states` goes there once per generation. Each step writes `sample` and
//!   `timestep` into host staging tensors (the device's pinned memory where it declares one),
//!   copies both with one `CopyTensors` call, runs with `RunWithBinding` and copies only the output
//!   back (about 128 KB each way at 512², CFG batch 2). Tensors in host-accessible memory are
//!   written and read in place: there is nothing to copy, and ORT has no host-to-host transfer.
//! - **host tensors**: host tensors every step through `Session::run`. ORT then allocates device
//!   buffers for the inputs and the output in every run (quilt's device allocator has no pool:
//!   `cuMemAlloc`/`cuMemFree`, which synchronizes the device) and copies all three inputs in,
//!   the unchanging text embeddings included, and the output out.
//!
//! [`choose`] picks one explicitly; the choice and its reason are reported with the timings.

use std::rc::Rc;
use std::time::Duration;

use ort::environment::Environment;

use crate::device_io::{copy_tensors, input_pinned_memory, input_placements, output_element, output_placements, Binding, Element, IoResult, OrtTensor, Placement, SessionAllocator};
use crate::error::{ModelsError, Result};
use crate::sd::models::{Ep, Model};
use crate::tensor::{HostData, HostTensor};

/// How the UNet's tensors should move (`quilt sd --unet-io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnetIo {
    /// Device binding on quilt; host tensors on ORT's CPU EP (the reference path stays what it
    /// was) or where binding cannot be set up (the reason is reported).
    #[default]
    Auto,
    /// Device binding, or an error saying why it cannot be set up.
    Binding,
    /// Host tensors every step.
    Host,
}

impl UnetIo {
    pub fn parse(s: &str) -> Result<UnetIo> {
        match s {
            "auto" => Ok(UnetIo::Auto),
            "binding" => Ok(UnetIo::Binding),
            "host" => Ok(UnetIo::Host),
            other => Err(ModelsError::Usage(format!("--unet-io `{other}`: expected auto, binding or host"))),
        }
    }
}

/// The way one generation's UNet steps moved their tensors, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnetIoPath {
    /// `detail`: where the tensors live and how they are staged.
    DeviceBinding { detail: String },
    /// `reason`: why not device binding.
    HostTensors { reason: String },
}

impl UnetIoPath {
    pub fn is_binding(&self) -> bool {
        matches!(self, UnetIoPath::DeviceBinding { .. })
    }

    /// One line: `device binding (...)` or `host tensors (...)`.
    pub fn describe(&self) -> String {
        match self {
            UnetIoPath::DeviceBinding { detail } => format!("device binding ({detail})"),
            UnetIoPath::HostTensors { reason } => format!("host tensors ({reason})"),
        }
    }
}

/// Where one denoising step's time went. With host tensors, ORT's copies happen inside `run`
/// (`upload` and `download` stay zero).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepSplit {
    /// Scaling the latents, assembling `sample` (and any extra channels), the timestep, and
    /// writing them into host staging or host-accessible bound memory.
    pub prep: Duration,
    /// Host → device copies (`CopyTensors`).
    pub upload: Duration,
    /// The UNet run (`RunWithBinding`, or `Session::run` with its own copies).
    pub run: Duration,
    /// Device → host copy of the output and reading it as f32.
    pub download: Duration,
    /// Classifier-free guidance and the scheduler step.
    pub scheduler: Duration,
}

impl StepSplit {
    /// The mean of each part over `splits`.
    pub fn mean(splits: &[StepSplit]) -> StepSplit {
        let n = splits.len().max(1) as u32;
        let sum = |f: fn(&StepSplit) -> Duration| splits.iter().map(f).sum::<Duration>() / n;
        StepSplit { prep: sum(|s| s.prep), upload: sum(|s| s.upload), run: sum(|s| s.run), download: sum(|s| s.download), scheduler: sum(|s| s.scheduler) }
    }

    /// `prep 120 us, upload 35 us, run 8150 us, download 30 us, scheduler 60 us`.
    pub fn describe(&self) -> String {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        format!(
            "prep {:.0} us, upload {:.0} us, run {:.0} us, download {:.0} us, scheduler {:.0} us",
            us(self.prep),
            us(self.upload),
            us(self.run),
            us(self.download),
            us(self.scheduler)
        )
    }
}

/// One bound tensor: where the session reads (or writes) it, and the host staging tensor it is
/// copied through when that memory is not host-accessible.
struct Slot {
    name: String,
    bound: OrtTensor,
    staging: Option<OrtTensor>,
}

impl Slot {
    /// Host values into the staging tensor, or straight into host-accessible bound memory.
    fn write(&mut self, data: &HostData) -> IoResult<()> {
        self.staging.as_mut().unwrap_or(&mut self.bound).write(data).map_err(|e| format!("`{}`: {e}", self.name))
    }

    /// The host → device copy a write needs before the next run, if any.
    fn upload(&self) -> Option<(&OrtTensor, &OrtTensor)> {
        self.staging.as_ref().map(|s| (s, &self.bound))
    }
}

/// The UNet's IO binding for one generation (one latent shape and batch).
pub struct UnetBinding {
    env: Environment,
    // Dropped before the tensors and allocators it refers to.
    binding: Binding,
    sample: Slot,
    timestep: Slot,
    _text: Slot,
    output: Slot,
    detail: String,
}

/// The element type a host tensor was built with (`float_tensor`, `timestep_tensor`).
fn element_of(name: &str, data: &HostData) -> IoResult<Element> {
    Element::from_name(data.dtype_name()).ok_or_else(|| format!("input `{name}` is {}; the binding moves float32, float16 or int64", data.dtype_name()))
}

impl UnetBinding {
    /// Allocates the bound tensors for inputs shaped like `sample` and `timestep` and an output of
    /// `out_shape`, puts `text` (the `encoder_hidden_states`) in place, and binds everything.
    /// An error says why binding is not possible for this session.
    pub fn new(unet: &mut Model, sample: &HostTensor, timestep: &HostTensor, text: &HostTensor, out_shape: &[i64]) -> IoResult<UnetBinding> {
        let session = &mut unet.session;
        let inputs = input_placements(session)?;
        let outputs = output_placements(session)?;
        // The output `run_f32` picks: `out_sample`, else the first.
        let out_index = session.outputs().iter().position(|o| o.name() == "out_sample").unwrap_or(0);
        let out_name = session.outputs().get(out_index).map(|o| o.name().to_string()).ok_or("the model has no outputs")?;
        let out_element = output_element(session, &out_name)?;
        let input_index = |name: &str| session.inputs().iter().position(|o| o.name() == name).ok_or_else(|| format!("no input named `{name}`"));
        let sample_index = input_index("sample")?;
        let timestep_index = input_index("timestep")?;
        let text_index = input_index("encoder_hidden_states")?;

        // One allocator per memory; host staging in the device's pinned memory where it has one.
        let mut allocators: Vec<Rc<SessionAllocator>> = Vec::new();
        let mut allocator_for = |placement: &Placement, session: &ort::session::Session| -> IoResult<Rc<SessionAllocator>> {
            if let Some(a) = allocators.iter().find(|a| a.placement.same_memory(placement)) {
                return Ok(a.clone());
            }
            let a = SessionAllocator::new(session, placement)?;
            allocators.push(a.clone());
            Ok(a)
        };
        let needs_staging = [&inputs[sample_index], &inputs[timestep_index], &inputs[text_index], &outputs[out_index]].iter().any(|p| !p.host_accessible);
        // Without pinned memory (none declared, or no session allocator for it) staging falls
        // back to plain host memory: the copies still work, through the driver's own staging.
        let mut staging_note = String::new();
        let staging = if needs_staging {
            match input_pinned_memory(session, sample_index).and_then(|p| p.map(|p| SessionAllocator::new(session, &p))) {
                Ok(Ok(pinned)) => Some(pinned),
                Ok(Err(why)) | Err(why) => {
                    staging_note = format!(" (no pinned staging: {why})");
                    Some(SessionAllocator::host()?)
                }
            }
        } else {
            None
        };
        let mut slot = |name: &str, placement: &Placement, element: Element, shape: &[i64]| -> IoResult<Slot> {
            let bound = OrtTensor::new(&allocator_for(placement, session)?, element, shape).map_err(|e| format!("`{name}`: {e}"))?;
            let staging = match (&staging, placement.host_accessible) {
                (Some(host), false) => Some(OrtTensor::new(host, element, shape).map_err(|e| format!("`{name}` staging: {e}"))?),
                _ => None,
            };
            Ok(Slot { name: name.to_string(), bound, staging })
        };
        let mut sample_slot = slot("sample", &inputs[sample_index], element_of("sample", &sample.data)?, &sample.shape)?;
        let mut timestep_slot = slot("timestep", &inputs[timestep_index], element_of("timestep", &timestep.data)?, &timestep.shape)?;
        let mut text_slot = slot("encoder_hidden_states", &inputs[text_index], element_of("encoder_hidden_states", &text.data)?, &text.shape)?;
        let output = slot(&out_name, &outputs[out_index], out_element, out_shape)?;

        // Every bound input holds defined values before the first run; the text embeddings do
        // not change during the generation, so this is their only upload.
        sample_slot.write(&sample.data)?;
        timestep_slot.write(&timestep.data)?;
        text_slot.write(&text.data)?;
        let env = unet.env.clone();
        copy_tensors(&env, &[&sample_slot, &timestep_slot, &text_slot].iter().filter_map(|s| s.upload()).collect::<Vec<_>>())?;

        let session = &mut unet.session;
        let mut binding = Binding::new(session)?;
        for s in [&sample_slot, &timestep_slot, &text_slot] {
            binding.bind_input(&s.name, &s.bound)?;
        }
        binding.bind_output(&output.name, &output.bound)?;

        let slots = [&sample_slot, &timestep_slot, &text_slot, &output];
        let mut places: Vec<String> = Vec::new();
        for s in slots {
            let p = s.bound.placement().describe();
            if !places.contains(&p) {
                places.push(p);
            }
        }
        let staged: Vec<&str> = slots.iter().filter(|s| s.staging.is_some()).map(|s| s.name.as_str()).collect();
        let mut detail = format!("bound in {} memory", places.join(" + "));
        match slots.iter().find_map(|s| s.staging.as_ref()) {
            Some(host) => detail += &format!("; {} copied through {} staging with CopyTensors{staging_note}", staged.join(", "), host.placement().describe()),
            None => detail += "; written and read in place",
        }
        Ok(UnetBinding { env, binding, sample: sample_slot, timestep: timestep_slot, _text: text_slot, output, detail })
    }

    /// Where the tensors live and how they move.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// This step's `sample` and `timestep` into staging (or in place).
    pub fn write_inputs(&mut self, sample: &HostTensor, timestep: &HostTensor) -> IoResult<()> {
        if sample.shape != self.sample.bound.shape() || timestep.shape != self.timestep.bound.shape() {
            return Err(format!("inputs of shapes {:?} and {:?} for a binding made for {:?} and {:?}", sample.shape, timestep.shape, self.sample.bound.shape(), self.timestep.bound.shape()));
        }
        self.sample.write(&sample.data)?;
        self.timestep.write(&timestep.data)
    }

    /// Copies the staged inputs to the device (nothing where they are bound in host memory).
    pub fn upload(&self) -> IoResult<()> {
        let pairs: Vec<_> = [&self.sample, &self.timestep].into_iter().filter_map(Slot::upload).collect();
        if pairs.is_empty() {
            return Ok(());
        }
        copy_tensors(&self.env, &pairs)
    }

    /// Runs the UNet on the bound tensors.
    pub fn run(&self, unet: &mut Model) -> IoResult<()> {
        self.binding.run(&mut unet.session)
    }

    /// The output, copied back to the host where it is not host memory already, as f32.
    pub fn download(&mut self) -> IoResult<Vec<f32>> {
        if let Some(staging) = &self.output.staging {
            copy_tensors(&self.env, &[(&self.output.bound, staging)])?;
        }
        self.output.staging.as_ref().unwrap_or(&self.output.bound).read_f32().map_err(|e| format!("`{}`: {e}", self.output.name))
    }
}

/// Picks how this generation's UNet steps move their tensors (see [`UnetIo`]); builds the binding
/// when that is the choice. `sample`, `timestep` and `text` are the first step's inputs (their
/// shapes and types are the binding's); `out_shape` is the UNet output's.
pub fn choose(unet: &mut Model, io: UnetIo, sample: &HostTensor, timestep: &HostTensor, text: &HostTensor, out_shape: &[i64]) -> Result<(UnetIoPath, Option<UnetBinding>)> {
    let host = |reason: &str| Ok((UnetIoPath::HostTensors { reason: reason.to_string() }, None));
    match (io, unet.ep) {
        (UnetIo::Host, _) => return host("--unet-io host"),
        // ORT's CPU EP is the reference the quilt runs are checked against: it keeps the plain
        // `Session::run` path unless binding is asked for.
        (UnetIo::Auto, Ep::Cpu) => return host("ORT's CPU EP runs the reference path; --unet-io binding binds there too"),
        _ => {}
    }
    match UnetBinding::new(unet, sample, timestep, text, out_shape) {
        Ok(binding) => Ok((UnetIoPath::DeviceBinding { detail: binding.detail().to_string() }, Some(binding))),
        Err(e) if io == UnetIo::Binding => Err(ModelsError::pipeline(&unet.path, format!("--unet-io binding: cannot bind the UNet's tensors: {e}"))),
        Err(e) => host(&format!("device binding unavailable: {e}")),
    }
}
