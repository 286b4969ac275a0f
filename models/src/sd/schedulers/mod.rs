//! Denoising schedulers in plain Rust, read from diffusers' `scheduler_config.json`: DDIM, PNDM
//! (PLMS steps, as Stable Diffusion configures it), Euler, Euler ancestral and DPM-Solver++ 2M.
//! Samples are flat `f32` slices (any shape; the schedulers are elementwise). Each is checked
//! against diffusers' own scheduler (`models/tests/schedulers.rs`, reference data from
//! `models/scripts/make_scheduler_refs.py`).

pub mod config;
pub mod ddim;
pub mod dpm_solver;
pub mod euler;
pub mod pndm;
pub mod schedule;

pub use config::{PredictionType, SchedulerConfig, SchedulerKind, TimestepSpacing};

use crate::error::{ModelsError, Result};

/// Where ancestral schedulers get their fresh Gaussian noise. Passing it in keeps the scheduler
/// deterministic given the source, and lets tests replay the noise diffusers drew.
pub trait NoiseSource {
    /// Fills `out` with independent N(0, 1) draws.
    fn fill_normal(&mut self, out: &mut [f32]);
}

/// Seeded Gaussian noise from the crate's SplitMix generator.
impl NoiseSource for crate::random::Rng {
    fn fill_normal(&mut self, out: &mut [f32]) {
        for x in out {
            *x = self.normal() as f32;
        }
    }
}

/// A noise source that must never be drawn from (for deterministic schedulers).
pub struct NoNoise;

impl NoiseSource for NoNoise {
    fn fill_normal(&mut self, _out: &mut [f32]) {
        panic!("a deterministic scheduler drew noise");
    }
}

/// The scheduler API the pipelines use, after diffusers' `SchedulerMixin`.
pub trait Scheduler: Send {
    fn config(&self) -> &SchedulerConfig;

    /// Builds the schedule for `steps` denoising steps; resets any multistep state.
    fn set_timesteps(&mut self, steps: usize) -> Result<()>;

    /// The timesteps to run, in order (UNet inputs; integers for DDIM/PNDM/DPM, fractional for Euler).
    fn timesteps(&self) -> &[f64];

    /// Standard deviation of the initial noise (1 for the alpha-parameterised schedulers).
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    /// Scales the UNet input for timestep `t` (identity except for the Euler family).
    fn scale_model_input(&mut self, sample: &[f32], _t: f64) -> Result<Vec<f32>> {
        Ok(sample.to_vec())
    }

    /// One denoising step from `sample` at `t`, given the model output there.
    fn step(&mut self, model_output: &[f32], t: f64, sample: &[f32], noise: &mut dyn NoiseSource) -> Result<Vec<f32>>;

    /// Noises clean latents to timestep `t` (img2img, inpaint).
    fn add_noise(&self, original: &[f32], noise: &[f32], t: f64) -> Result<Vec<f32>>;

    /// Pipelines starting mid-schedule (img2img) say where: index into `timesteps()`.
    fn set_begin_index(&mut self, index: usize);

    /// How many `timesteps()` entries one model evaluation advances (1 for all implemented here).
    fn order(&self) -> usize {
        1
    }
}

/// Builds the scheduler `config.kind` names.
pub fn build(config: SchedulerConfig) -> Box<dyn Scheduler> {
    match config.kind {
        SchedulerKind::Ddim => Box::new(ddim::Ddim::new(config)),
        SchedulerKind::Pndm => Box::new(pndm::Pndm::new(config)),
        SchedulerKind::Euler => Box::new(euler::Euler::new(config, false)),
        SchedulerKind::EulerAncestral => Box::new(euler::Euler::new(config, true)),
        SchedulerKind::DpmSolverMultistep => Box::new(dpm_solver::DpmSolverMultistep::new(config)),
    }
}

pub(crate) fn check_steps(steps: usize, config: &SchedulerConfig) -> Result<()> {
    if steps == 0 || steps > config.num_train_timesteps {
        return Err(ModelsError::Scheduler(format!(
            "{} steps requested; need 1 to num_train_timesteps = {}",
            steps, config.num_train_timesteps
        )));
    }
    Ok(())
}

pub(crate) fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(ModelsError::Scheduler(format!("{what} has {got} elements, the sample has {want}")));
    }
    Ok(())
}

/// The train-schedule index of an integer timestep.
pub(crate) fn train_index(t: f64, alphas_cumprod: &[f32]) -> Result<usize> {
    if t.fract() != 0.0 || t < 0.0 || t as usize >= alphas_cumprod.len() {
        return Err(ModelsError::Scheduler(format!("timestep {t} is not an integer in [0, {})", alphas_cumprod.len())));
    }
    Ok(t as usize)
}

/// `sqrt(a) * original + sqrt(1 - a) * noise` with `a = alphas_cumprod[t]` (DDIM, PNDM).
pub(crate) fn add_noise_alpha(original: &[f32], noise: &[f32], t: f64, alphas_cumprod: &[f32]) -> Result<Vec<f32>> {
    check_len("noise", noise.len(), original.len())?;
    let a = alphas_cumprod[train_index(t, alphas_cumprod)?];
    let (sa, s1m) = (a.sqrt(), (1.0 - a).sqrt());
    Ok(original.iter().zip(noise).map(|(&x, &n)| sa * x + s1m * n).collect())
}
