//! DPM-Solver++ (Lu et al. 2022) multistep, data prediction, second order with the midpoint
//! update: "DPM++ 2M" (with `use_karras_sigmas`, "DPM++ 2M Karras"). The last step is first order
//! (diffusers' `lower_order_final` / `final_sigmas_type = zero`).

use super::config::{PredictionType, SchedulerConfig, TimestepSpacing};
use super::schedule::{alphas_cumprod, index_for_timestep, interp_index, karras_sigmas, np_linspace, round_half_even, sigma_to_t, train_sigmas, trailing};
use super::{check_len, check_steps, NoiseSource, Scheduler};
use crate::error::{ModelsError, Result};

pub struct DpmSolverMultistep {
    config: SchedulerConfig,
    train_sigmas: Vec<f32>,
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    /// The data predictions (x0) of the last two steps, newest last.
    x0_history: Vec<Vec<f32>>,
    lower_order_nums: usize,
    step_index: Option<usize>,
    begin_index: Option<usize>,
}

/// `(alpha_t, sigma_t)` of the VP process at noise level `sigma`.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

impl DpmSolverMultistep {
    pub fn new(config: SchedulerConfig) -> DpmSolverMultistep {
        let train_sigmas = train_sigmas(&alphas_cumprod(&config));
        DpmSolverMultistep {
            config,
            train_sigmas,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            x0_history: Vec::new(),
            lower_order_nums: 0,
            step_index: None,
            begin_index: None,
        }
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    fn init_index(&self, t: f64) -> usize {
        if let Some(b) = self.begin_index {
            return b;
        }
        // diffusers falls back to the last index for a timestep not in the schedule.
        index_for_timestep(&self.timesteps, t).unwrap_or(self.timesteps.len() - 1)
    }
}

impl Scheduler for DpmSolverMultistep {
    fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    fn set_timesteps(&mut self, steps: usize) -> Result<()> {
        check_steps(steps, &self.config)?;
        let n_train = self.config.num_train_timesteps;
        // lambda_min_clipped = -inf: nothing is clipped, the schedule ends at n_train.
        let last = n_train;
        let mut timesteps: Vec<f64> = match self.config.timestep_spacing {
            TimestepSpacing::Linspace => {
                let mut v: Vec<f64> = np_linspace(0.0, (last - 1) as f64, steps + 1).into_iter().map(round_half_even).collect();
                v.reverse();
                v.pop();
                v
            }
            TimestepSpacing::Leading => {
                let ratio = (last / (steps + 1)) as f64;
                (1..=steps).rev().map(|i| i as f64 * ratio + self.config.steps_offset as f64).collect()
            }
            TimestepSpacing::Trailing => trailing(last, n_train as f64 / steps as f64).into_iter().map(|t| t - 1.0).collect(),
        };
        let mut sigmas: Vec<f64> = if self.config.use_karras_sigmas {
            let log_sigmas: Vec<f32> = self.train_sigmas.iter().map(|s| s.ln()).collect();
            // diffusers flips the train sigmas to descending and takes the ends of that.
            let lo = self.config.sigma_min.unwrap_or(f64::from(self.train_sigmas[0]));
            let hi = self.config.sigma_max.unwrap_or(f64::from(self.train_sigmas[n_train - 1]));
            let s = karras_sigmas(lo, hi, steps);
            timesteps = s.iter().map(|&x| round_half_even(sigma_to_t(x, &log_sigmas))).collect();
            s
        } else {
            timesteps.iter().map(|&t| interp_index(t, &self.train_sigmas)).collect()
        };
        sigmas.push(0.0);
        self.sigmas = sigmas.into_iter().map(|s| s as f32).collect();
        self.timesteps = timesteps;
        self.x0_history.clear();
        self.lower_order_nums = 0;
        self.step_index = None;
        self.begin_index = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn step(&mut self, model_output: &[f32], t: f64, sample: &[f32], _noise: &mut dyn NoiseSource) -> Result<Vec<f32>> {
        if self.sigmas.is_empty() {
            return Err(ModelsError::Scheduler("DPM-Solver++ step before set_timesteps".into()));
        }
        check_len("model output", model_output.len(), sample.len())?;
        let i = match self.step_index {
            Some(i) => i,
            None => self.init_index(t),
        };
        let n = self.timesteps.len();
        if i >= n {
            return Err(ModelsError::Scheduler(format!("step past the end of the schedule (timestep {t})")));
        }
        // final_sigmas_type is always "zero" here, which makes diffusers take the last step in first
        // order whatever lower_order_final and euler_at_final say.
        let final_first_order = i == n - 1;

        // Data prediction x0 from the model output.
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let x0: Vec<f32> = model_output
            .iter()
            .zip(sample)
            .map(|(&m, &x)| match self.config.prediction_type {
                PredictionType::Epsilon => (x - sigma_s0 * m) / alpha_s0,
                PredictionType::VPrediction => alpha_s0 * x - sigma_s0 * m,
            })
            .collect();
        if self.x0_history.len() == 2 {
            self.x0_history.remove(0);
        }
        self.x0_history.push(x0);

        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let lambda_t = alpha_t.ln() - sigma_t.ln();
        let lambda_s0 = alpha_s0.ln() - sigma_s0.ln();
        let h = lambda_t - lambda_s0;
        let ratio = sigma_t / sigma_s0;
        let c = alpha_t * ((-h).exp() - 1.0);
        let m0 = &self.x0_history[self.x0_history.len() - 1];
        let out: Vec<f32> = if self.config.solver_order == 1 || self.lower_order_nums < 1 || final_first_order {
            sample.iter().zip(m0).map(|(&x, &d0)| ratio * x - c * d0).collect()
        } else {
            let m1 = &self.x0_history[self.x0_history.len() - 2];
            let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
            let lambda_s1 = alpha_s1.ln() - sigma_s1.ln();
            let r0 = (lambda_s0 - lambda_s1) / h;
            sample
                .iter()
                .zip(m0)
                .zip(m1)
                .map(|((&x, &d0), &d1m)| {
                    let d1 = (1.0 / r0) * (d0 - d1m);
                    ratio * x - c * d0 - 0.5 * c * d1
                })
                .collect()
        };
        if self.lower_order_nums < self.config.solver_order {
            self.lower_order_nums += 1;
        }
        self.step_index = Some(i + 1);
        Ok(out)
    }

    fn add_noise(&self, original: &[f32], noise: &[f32], t: f64) -> Result<Vec<f32>> {
        if self.sigmas.is_empty() {
            return Err(ModelsError::Scheduler("add_noise before set_timesteps".into()));
        }
        check_len("noise", noise.len(), original.len())?;
        let i = match (self.begin_index, self.step_index) {
            (None, _) => self.init_index(t),
            (Some(_), Some(s)) => s,
            (Some(b), None) => b,
        };
        let (alpha, sigma) = alpha_sigma(self.sigmas[i]);
        Ok(original.iter().zip(noise).map(|(&x, &n)| alpha * x + sigma * n).collect())
    }

    fn set_begin_index(&mut self, index: usize) {
        self.begin_index = Some(index);
    }
}
