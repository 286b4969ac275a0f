//! Euler and Euler ancestral (Karras et al. 2022, k-diffusion): the ODE (or, ancestral, the SDE) in
//! sigma space. The UNet input is scaled by `1/sqrt(sigma² + 1)`; timesteps may be fractional.

use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::schedule::{alphas_cumprod, index_for_timestep, interp_index, karras_sigmas, np_linspace, sigma_to_t, train_sigmas, trailing};
use super::{check_len, check_steps, NoiseSource, Scheduler};
use crate::error::{ModelsError, Result};

pub struct Euler {
    config: SchedulerConfig,
    ancestral: bool,
    train_sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    /// One per timestep plus the final 0.
    sigmas: Vec<f32>,
    step_index: Option<usize>,
    begin_index: Option<usize>,
}

impl Euler {
    pub fn new(config: SchedulerConfig, ancestral: bool) -> Euler {
        let train_sigmas = train_sigmas(&alphas_cumprod(&config));
        Euler { config, ancestral, train_sigmas, timesteps: Vec::new(), sigmas: Vec::new(), step_index: None, begin_index: None }
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn index_of(&self, t: f64) -> Result<usize> {
        if let Some(i) = self.step_index {
            return Ok(i);
        }
        if let Some(b) = self.begin_index {
            return Ok(b);
        }
        index_for_timestep(&self.timesteps, t).ok_or_else(|| ModelsError::Scheduler(format!("timestep {t} is not in the schedule")))
    }

    fn ensure_ready(&self) -> Result<()> {
        if self.sigmas.is_empty() {
            return Err(ModelsError::Scheduler("step before set_timesteps".into()));
        }
        Ok(())
    }
}

impl Scheduler for Euler {
    fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        check_steps(steps, &self.config)?;
        let n_train = self.config.num_train_timesteps;
        // diffusers computes these float32 timesteps with numpy.
        let mut timesteps: Vec<f64> = match self.config.timestep_spacing {
            TimestepSpacing::Linspace => np_linspace(0.0, (n_train - 1) as f64, steps).into_iter().rev().map(|t| f64::from(t as f32)).collect(),
            TimestepSpacing::Leading => {
                let ratio = (n_train / steps) as f64;
                (0..steps).rev().map(|i| i as f64 * ratio + self.config.steps_offset as f64).collect()
            }
            TimestepSpacing::Trailing => trailing(n_train, n_train as f64 / steps as f64).into_iter().map(|t| t - 1.0).collect(),
        };
        let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| interp_index(t, &self.train_sigmas)).collect();
        if self.config.use_karras_sigmas {
            let log_sigmas: Vec<f32> = self.train_sigmas.iter().map(|s| s.ln()).collect();
            let lo = self.config.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
            let hi = self.config.sigma_max.unwrap_or(sigmas[0]);
            sigmas = karras_sigmas(lo, hi, steps);
            timesteps = sigmas.iter().map(|&s| f64::from(sigma_to_t(s, &log_sigmas) as f32)).collect();
        }
        sigmas.push(0.0);
        self.sigmas = sigmas.into_iter().map(|s| s as f32).collect();
        self.timesteps = timesteps;
        self.step_index = None;
        self.begin_index = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        let max = self.sigmas.iter().copied().fold(0.0f32, f32::max);
        match self.config.timestep_spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        }
    }

    fn scale_model_input(&mut self, sample: &[f32], t: f64) -> Result<Vec<f32>> {
        self.ensure_ready()?;
        let i = self.index_of(t)?;
        self.step_index = Some(i);
        let sigma = self.sigmas[i];
        let scale = (sigma * sigma + 1.0).sqrt();
        Ok(sample.iter().map(|&x| x / scale).collect())
    }

    fn step(&mut self, model_output: &[f32], t: f64, sample: &[f32], noise: &mut dyn NoiseSource) -> Result<Vec<f32>> {
        self.ensure_ready()?;
        check_len("model output", model_output.len(), sample.len())?;
        let i = self.index_of(t)?;
        if i + 1 >= self.sigmas.len() {
            return Err(ModelsError::Scheduler(format!("step past the end of the schedule (timestep {t})")));
        }
        let sigma = self.sigmas[i];
        let sigma_next = self.sigmas[i + 1];
        let s2p1 = sigma * sigma + 1.0;
        let v_coeff = -sigma / s2p1.sqrt();
        let pred_x0 = |m: f32, x: f32| match self.config.prediction_type {
            PredictionType::Epsilon => x - sigma * m,
            PredictionType::VPrediction => m * v_coeff + x / s2p1,
        };
        let out = if self.ancestral {
            let sigma_up = (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma)).sqrt();
            let sigma_down = (sigma_next * sigma_next - sigma_up * sigma_up).sqrt();
            let dt = sigma_down - sigma;
            let mut fresh = vec![0.0f32; sample.len()];
            noise.fill_normal(&mut fresh);
            model_output
                .iter()
                .zip(sample)
                .zip(&fresh)
                .map(|((&m, &x), &z)| {
                    let derivative = (x - pred_x0(m, x)) / sigma;
                    (x + derivative * dt) + z * sigma_up
                })
                .collect()
        } else {
            // s_churn = 0 (the pipelines' default): no noise is added, sigma_hat = sigma.
            let dt = sigma_next - sigma;
            model_output
                .iter()
                .zip(sample)
                .map(|(&m, &x)| {
                    let derivative = (x - pred_x0(m, x)) / sigma;
                    x + derivative * dt
                })
                .collect()
        };
        self.step_index = Some(i + 1);
        Ok(out)
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], t: f64) -> Result<Vec<f32>> {
        self.ensure_ready()?;
        check_len("noise", noise.len(), original.len())?;
        let i = match (self.begin_index, self.step_index) {
            (None, _) => index_for_timestep(&self.timesteps, t).ok_or_else(|| ModelsError::Scheduler(format!("timestep {t} is not in the schedule")))?,
            (Some(_), Some(s)) => s,
            (Some(b), None) => b,
        };
        let sigma = self.sigmas[i];
        Ok(original.iter().zip(noise).map(|(&x, &n)| x + n * sigma).collect())
    }

    fn set_begin_index(&mut self, index: usize) {
        self.begin_index = Some(index);
    }
}
