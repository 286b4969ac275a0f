//! DDIM (Song et al. 2020), deterministic (eta = 0) as the SD pipelines run it.

use super::config::{PredictionType, SchedulerConfig};
use super::schedule::{alphas_cumprod, discrete_timesteps};
use super::{add_noise_alpha, check_len, check_steps, train_index, NoiseSource, Scheduler};
use crate::error::{ModelsError, Result};

pub struct Ddim {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    steps: usize,
}

impl Ddim {
    pub fn new(config: SchedulerConfig) -> Ddim {
        let alphas_cumprod = alphas_cumprod(&config);
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        Ddim { config, alphas_cumprod, final_alpha_cumprod, timesteps: Vec::new(), steps: 0 }
    }
}

impl Scheduler for Ddim {
    fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        check_steps(steps, &self.config)?;
        self.steps = steps;
        self.timesteps = discrete_timesteps(&self.config, steps).into_iter().map(|t| t as f64).collect();
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(&mut self, model_output: &[f32], t: f64, sample: &[f32], _noise: &mut dyn NoiseSource) -> Result<Vec<f32>> {
        if self.steps == 0 {
            return Err(ModelsError::Scheduler("DDIM step before set_timesteps".into()));
        }
        check_len("model output", model_output.len(), sample.len())?;
        let t = train_index(t, &self.alphas_cumprod)?;
        let prev = t as i64 - (self.config.num_train_timesteps / self.steps) as i64;
        let alpha_t = self.alphas_cumprod[t];
        let alpha_prev = if prev >= 0 { self.alphas_cumprod[prev as usize] } else { self.final_alpha_cumprod };
        let beta_t = 1.0 - alpha_t;
        let (sqrt_a, sqrt_b) = (alpha_t.sqrt(), beta_t.sqrt());
        let sqrt_a_prev = alpha_prev.sqrt();
        // eta = 0: no variance term, the direction coefficient is sqrt(1 - alpha_prev).
        let dir = (1.0 - alpha_prev).sqrt();
        let clip = self.config.clip_sample.then_some(self.config.clip_sample_range as f32);
        Ok(model_output
            .iter()
            .zip(sample)
            .map(|(&m, &x)| {
                let (mut x0, eps) = match self.config.prediction_type {
                    PredictionType::Epsilon => ((x - sqrt_b * m) / sqrt_a, m),
                    PredictionType::VPrediction => (sqrt_a * x - sqrt_b * m, sqrt_a * m + sqrt_b * x),
                };
                if let Some(r) = clip {
                    x0 = x0.clamp(-r, r);
                }
                sqrt_a_prev * x0 + dir * eps
            })
            .collect())
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], t: f64) -> Result<Vec<f32>> {
        add_noise_alpha(original, noise, t, &self.alphas_cumprod)
    }

    fn set_begin_index(&mut self, _index: usize) {}
}
