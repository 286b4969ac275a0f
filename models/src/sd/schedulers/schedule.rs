//! The noise schedule shared by every scheduler: betas, cumulative alpha products, sigmas, timestep
//! spacings, Karras sigmas. Arithmetic follows diffusers' own precision (torch float32 tensors,
//! numpy float64 where diffusers uses numpy) so trajectories match it to float32 rounding.

use super::config::{BetaSchedule, SchedulerConfig, TimestepSpacing};

/// `torch.linspace(start, end, steps, dtype=float32)` on CPU: the step is float32, the first half
/// counts up from `start` and the second half down from `end`.
pub fn torch_linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps).map(|i| if i < half { start + step * i as f32 } else { end - step * (steps - i - 1) as f32 }).collect()
}

/// `numpy.linspace(start, end, n)` in float64.
pub fn np_linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| start + i as f64 * step).collect();
    v[n - 1] = end;
    v
}

/// numpy's `round` (half to even).
pub fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 {
        2.0 * (x / 2.0).round()
    } else {
        r
    }
}

/// Cumulative products of `1 - beta` (float32 values; torch's CPU cumprod accumulates in float64).
pub fn alphas_cumprod(config: &SchedulerConfig) -> Vec<f32> {
    let n = config.num_train_timesteps;
    let betas: Vec<f32> = match config.beta_schedule {
        BetaSchedule::Linear => torch_linspace_f32(config.beta_start as f32, config.beta_end as f32, n),
        BetaSchedule::ScaledLinear => {
            torch_linspace_f32(config.beta_start.sqrt() as f32, config.beta_end.sqrt() as f32, n).into_iter().map(|b| b * b).collect()
        }
    };
    let mut acc = 1.0f64;
    betas
        .iter()
        .map(|&b| {
            acc *= f64::from(1.0f32 - b);
            acc as f32
        })
        .collect()
}

/// `((1 - a) / a) ** 0.5` per train timestep, float32 as diffusers computes it.
pub fn train_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect()
}

/// Integer timestep schedules of DDIM and PNDM (before PNDM's PLMS repetition), descending.
pub fn discrete_timesteps(config: &SchedulerConfig, steps: usize) -> Vec<i64> {
    let n_train = config.num_train_timesteps;
    match config.timestep_spacing {
        TimestepSpacing::Linspace => {
            np_linspace(0.0, (n_train - 1) as f64, steps).into_iter().rev().map(|t| round_half_even(t) as i64).collect()
        }
        TimestepSpacing::Leading => {
            let ratio = (n_train / steps) as i64;
            (0..steps as i64).rev().map(|i| i * ratio + config.steps_offset).collect()
        }
        TimestepSpacing::Trailing => trailing(n_train, n_train as f64 / steps as f64).into_iter().map(|t| t as i64 - 1).collect(),
    }
}

/// `np.arange(last, 0, -ratio).round()`.
pub fn trailing(last: usize, ratio: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let count = ((last as f64) / ratio).ceil() as usize;
    for i in 0..count {
        out.push(round_half_even(last as f64 - i as f64 * ratio));
    }
    out
}

/// `np.interp(x, arange(len(ys)), ys)` for x within [0, len - 1].
pub fn interp_index(x: f64, ys: &[f32]) -> f64 {
    let last = ys.len() - 1;
    if x <= 0.0 {
        return f64::from(ys[0]);
    }
    if x >= last as f64 {
        return f64::from(ys[last]);
    }
    let lo = x.floor() as usize;
    let w = x - lo as f64;
    let (a, b) = (f64::from(ys[lo]), f64::from(ys[lo + 1]));
    // numpy's interp: slope * (x - xp[j]) + fp[j]
    (b - a) * w + a
}

/// Karras et al. (2022) sigmas, rho 7, from `sigma_max` down to `sigma_min`.
pub fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    np_linspace(0.0, 1.0, steps).into_iter().map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho)).collect()
}

/// The fractional train timestep whose log-sigma is `sigma`'s, interpolating linearly in log-sigma
/// (diffusers' `_sigma_to_t`). `log_sigmas` is float32 like diffusers' `np.log` of a float32 array.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // low_idx: the last index whose log-sigma is ≤ log_sigma (counting like cumsum(dists >= 0).argmax),
    // clipped to len - 2.
    let n = log_sigmas.len();
    let count = log_sigmas.iter().filter(|&&l| log_sigma - f64::from(l) >= 0.0).count();
    let low_idx = if count == 0 { 0 } else { (count - 1).min(n - 2) };
    let high_idx = low_idx + 1;
    let low = f64::from(log_sigmas[low_idx]);
    let high = f64::from(log_sigmas[high_idx]);
    let w = ((low - log_sigma) / (low - high)).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * high_idx as f64
}

/// diffusers' `index_for_timestep`: the first step of a schedule that repeats a timestep takes the
/// second occurrence (img2img starting mid-schedule must not skip a sigma). `None` if absent.
pub fn index_for_timestep(timesteps: &[f64], t: f64) -> Option<usize> {
    let hits: Vec<usize> = timesteps.iter().enumerate().filter(|(_, &v)| v == t).map(|(i, _)| i).collect();
    match hits.len() {
        0 => None,
        1 => Some(hits[0]),
        _ => Some(hits[1]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_rounding_is_half_to_even() {
        assert_eq!(round_half_even(0.5), 0.0);
        assert_eq!(round_half_even(1.5), 2.0);
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(-0.5), 0.0);
        assert_eq!(round_half_even(2.4), 2.0);
    }

    #[test]
    fn trailing_matches_numpy_arange() {
        // np.arange(1000, 0, -1000/7).round() = [1000, 857, 714, 571, 429, 286, 143]
        assert_eq!(trailing(1000, 1000.0 / 7.0), vec![1000.0, 857.0, 714.0, 571.0, 429.0, 286.0, 143.0]);
    }

    #[test]
    fn sigma_to_t_inverts_the_schedule_at_integer_steps() {
        let sigmas: Vec<f32> = (1..=100).map(|i| i as f32 * 0.1).collect();
        let logs: Vec<f32> = sigmas.iter().map(|s| s.ln()).collect();
        assert!((sigma_to_t(f64::from(sigmas[37]), &logs) - 37.0).abs() < 1e-4);
        assert_eq!(sigma_to_t(1e-6, &logs), 0.0);
        assert_eq!(sigma_to_t(1e6, &logs), 99.0);
    }
}
