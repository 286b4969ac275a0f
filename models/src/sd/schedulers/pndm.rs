//! PNDM's PLMS steps (Liu et al. 2022) with `skip_prk_steps`, the Stable Diffusion default: a
//! fourth-order linear multistep method over the model's epsilon estimates, warmed up with lower
//! orders. The schedule repeats its second timestep: the first step is taken twice (the second time
//! averaging both model outputs), so `timesteps()` has `steps + 1` entries.

use super::config::{PredictionType, SchedulerConfig};
use super::schedule::{alphas_cumprod, discrete_timesteps};
use super::{add_noise_alpha, check_len, check_steps, train_index, NoiseSource, Scheduler};
use crate::error::{ModelsError, Result};

pub struct Pndm {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    timesteps: Vec<f64>,
    steps: usize,
    /// The last (up to four) model outputs.
    ets: Vec<Vec<f32>>,
    /// The sample the first step started from; the repeated step restarts from it.
    cur_sample: Option<Vec<f32>>,
    counter: usize,
}

impl Pndm {
    pub fn new(config: SchedulerConfig) -> Pndm {
        let alphas_cumprod = alphas_cumprod(&config);
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        Pndm { config, alphas_cumprod, final_alpha_cumprod, timesteps: Vec::new(), steps: 0, ets: Vec::new(), cur_sample: None, counter: 0 }
    }

    /// Formula (9) of the PNDM paper: x_{t-δ} from x_t and an epsilon estimate.
    fn prev_sample(&self, sample: &[f32], t: usize, prev: i64, eps: &[f32]) -> Vec<f32> {
        let alpha_t = self.alphas_cumprod[t];
        let alpha_prev = if prev >= 0 { self.alphas_cumprod[prev as usize] } else { self.final_alpha_cumprod };
        let beta_t = 1.0 - alpha_t;
        let beta_prev = 1.0 - alpha_prev;
        let sample_coeff = (alpha_prev / alpha_t).sqrt();
        let denom = alpha_t * beta_prev.sqrt() + (alpha_t * beta_t * alpha_prev).sqrt();
        let (sqrt_a, sqrt_b) = (alpha_t.sqrt(), beta_t.sqrt());
        eps.iter()
            .zip(sample)
            .map(|(&m, &x)| {
                let e = match self.config.prediction_type {
                    PredictionType::Epsilon => m,
                    PredictionType::VPrediction => sqrt_a * m + sqrt_b * x,
                };
                sample_coeff * x - (alpha_prev - alpha_t) * e / denom
            })
            .collect()
    }
}

impl Scheduler for Pndm {
    fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        check_steps(steps, &self.config)?;
        if steps < 2 {
            return Err(ModelsError::Scheduler("PNDM needs at least 2 steps".into()));
        }
        self.steps = steps;
        // Ascending base schedule; PLMS repeats its second-to-last entry, then runs descending.
        let mut base = discrete_timesteps(&self.config, steps);
        base.reverse();
        let mut plms: Vec<i64> = base[..steps - 1].to_vec();
        plms.push(base[steps - 2]);
        plms.push(base[steps - 1]);
        plms.reverse();
        self.timesteps = plms.into_iter().map(|t| t as f64).collect();
        self.ets.clear();
        self.cur_sample = None;
        self.counter = 0;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(&mut self, model_output: &[f32], t: f64, sample: &[f32], _noise: &mut dyn NoiseSource) -> Result<Vec<f32>> {
        if self.steps == 0 {
            return Err(ModelsError::Scheduler("PNDM step before set_timesteps".into()));
        }
        check_len("model output", model_output.len(), sample.len())?;
        let ratio = (self.config.num_train_timesteps / self.steps) as i64;
        let mut t = train_index(t, &self.alphas_cumprod)? as i64;
        let mut prev = t - ratio;
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.remove(0);
            }
            self.ets.push(model_output.to_vec());
        } else {
            // The repeated first step: go from the original sample at t to t - ratio again.
            prev = t;
            t += ratio;
        }
        if t as usize >= self.alphas_cumprod.len() {
            return Err(ModelsError::Scheduler(format!("PNDM timestep {t} is beyond the train schedule")));
        }
        let e = &self.ets;
        let n = e.len();
        let combine = |coeffs: &[f32], scale: f32| -> Vec<f32> {
            (0..sample.len()).map(|i| coeffs.iter().enumerate().map(|(k, &c)| c * e[n - 1 - k][i]).sum::<f32>() / scale).collect()
        };
        let (eps, base): (Vec<f32>, Vec<f32>) = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.to_vec());
            (model_output.to_vec(), sample.to_vec())
        } else if n == 1 && self.counter == 1 {
            let first = self.cur_sample.take().ok_or_else(|| ModelsError::Scheduler("PNDM lost its first sample".into()))?;
            ((0..sample.len()).map(|i| (model_output[i] + e[0][i]) / 2.0).collect(), first)
        } else if n == 2 {
            (combine(&[3.0, -1.0], 2.0), sample.to_vec())
        } else if n == 3 {
            (combine(&[23.0, -16.0, 5.0], 12.0), sample.to_vec())
        } else {
            let c = combine(&[55.0, -59.0, 37.0, -9.0], 1.0);
            (c.into_iter().map(|v| v * (1.0 / 24.0)).collect(), sample.to_vec())
        };
        let out = self.prev_sample(&base, t as usize, prev, &eps);
        self.counter += 1;
        Ok(out)
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], t: f64) -> Result<Vec<f32>> {
        add_noise_alpha(original, noise, t, &self.alphas_cumprod)
    }

    fn set_begin_index(&mut self, _index: usize) {}
}
