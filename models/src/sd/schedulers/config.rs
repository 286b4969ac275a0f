//! `scheduler_config.json` as diffusers reads it: the keys quilt's schedulers use, each with the
//! default of the scheduler class that runs (diffusers' `from_config` keeps shared keys and takes the
//! new class's defaults for the rest, so `--scheduler euler` on a PNDM config works the same way).

use serde_json::Value;

use crate::error::{ModelsError, Result};

/// The schedulers quilt implements, by diffusers class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedulerKind {
    Ddim,
    Pndm,
    Euler,
    EulerAncestral,
    DpmSolverMultistep,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 5] =
        [SchedulerKind::Ddim, SchedulerKind::Pndm, SchedulerKind::Euler, SchedulerKind::EulerAncestral, SchedulerKind::DpmSolverMultistep];

    pub fn class_name(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "DDIMScheduler",
            SchedulerKind::Pndm => "PNDMScheduler",
            SchedulerKind::Euler => "EulerDiscreteScheduler",
            SchedulerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SchedulerKind::DpmSolverMultistep => "DPMSolverMultistepScheduler",
        }
    }

    /// The CLI's short name.
    pub fn short_name(self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::Pndm => "pndm",
            SchedulerKind::Euler => "euler",
            SchedulerKind::EulerAncestral => "euler-a",
            SchedulerKind::DpmSolverMultistep => "dpm++2m",
        }
    }

    /// A class name (`DDIMScheduler`) or a short name (`ddim`, `euler-a`, `dpm++2m`, `dpmpp-2m`).
    pub fn parse(name: &str) -> Result<SchedulerKind> {
        let lower = name.to_ascii_lowercase();
        for kind in SchedulerKind::ALL {
            if name == kind.class_name() || lower == kind.short_name() {
                return Ok(kind);
            }
        }
        match lower.as_str() {
            "euler_a" | "euler-ancestral" | "euler_ancestral" => Ok(SchedulerKind::EulerAncestral),
            "dpmpp-2m" | "dpmpp_2m" | "dpm++" | "dpmsolver++" => Ok(SchedulerKind::DpmSolverMultistep),
            _ => Err(ModelsError::Usage(format!(
                "unknown scheduler `{name}` (known: {})",
                SchedulerKind::ALL.iter().map(|k| format!("{} / {}", k.short_name(), k.class_name())).collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionType {
    Epsilon,
    VPrediction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// Every key the implemented schedulers read, resolved against the class defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    pub kind: SchedulerKind,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: i64,
    /// DDIM, PNDM: the "previous" alpha product of the last step is 1 (else `alphas_cumprod[0]`).
    pub set_alpha_to_one: bool,
    /// DDIM: clamp the predicted x0 to ±`clip_sample_range`.
    pub clip_sample: bool,
    pub clip_sample_range: f64,
    /// PNDM: only PLMS steps (what Stable Diffusion uses); the Runge-Kutta warm-up is not implemented.
    pub skip_prk_steps: bool,
    /// Euler, DPM-Solver++: Karras et al. sigma spacing.
    pub use_karras_sigmas: bool,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    /// DPM-Solver++: 1 or 2.
    pub solver_order: usize,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
}

impl SchedulerConfig {
    /// The class defaults diffusers 0.42 gives `kind`.
    pub fn defaults(kind: SchedulerKind) -> SchedulerConfig {
        SchedulerConfig {
            kind,
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: match kind {
                SchedulerKind::Ddim | SchedulerKind::Pndm => TimestepSpacing::Leading,
                _ => TimestepSpacing::Linspace,
            },
            steps_offset: 0,
            set_alpha_to_one: kind == SchedulerKind::Ddim,
            clip_sample: kind == SchedulerKind::Ddim,
            clip_sample_range: 1.0,
            skip_prk_steps: false,
            use_karras_sigmas: false,
            sigma_min: None,
            sigma_max: None,
            solver_order: 2,
            lower_order_final: true,
            euler_at_final: false,
        }
    }

    /// Reads a `scheduler_config.json` document. `kind` overrides its `_class_name` (the CLI's
    /// `--scheduler`); without either the class name must be one quilt implements.
    pub fn from_json(doc: &Value, kind: Option<SchedulerKind>) -> Result<SchedulerConfig> {
        let obj = doc.as_object().ok_or_else(|| ModelsError::config("<root>", "not a JSON object"))?;
        let kind = match kind {
            Some(k) => k,
            None => {
                let class = obj.get("_class_name").and_then(Value::as_str).ok_or_else(|| {
                    ModelsError::config("_class_name", "missing; pass --scheduler to choose one")
                })?;
                SchedulerKind::parse(class).map_err(|_| {
                    ModelsError::config("_class_name", format!("`{class}` is not implemented; pass --scheduler to choose one"))
                })?
            }
        };
        let mut c = SchedulerConfig::defaults(kind);
        let num = |key: &str| -> Result<Option<f64>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_f64().map(Some).ok_or_else(|| ModelsError::config(key, format!("expected a number, got {v}"))),
            }
        };
        let flag = |key: &str| -> Result<Option<bool>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_bool().map(Some).ok_or_else(|| ModelsError::config(key, format!("expected true/false, got {v}"))),
            }
        };
        let text = |key: &str| -> Result<Option<String>> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(v) => Err(ModelsError::config(key, format!("expected a string, got {v}"))),
            }
        };
        if let Some(n) = num("num_train_timesteps")? {
            if n < 2.0 || n.fract() != 0.0 {
                return Err(ModelsError::config("num_train_timesteps", format!("expected an integer ≥ 2, got {n}")));
            }
            c.num_train_timesteps = n as usize;
        }
        c.beta_start = num("beta_start")?.unwrap_or(c.beta_start);
        c.beta_end = num("beta_end")?.unwrap_or(c.beta_end);
        if let Some(s) = text("beta_schedule")? {
            c.beta_schedule = match s.as_str() {
                "linear" => BetaSchedule::Linear,
                "scaled_linear" => BetaSchedule::ScaledLinear,
                other => return Err(ModelsError::config("beta_schedule", format!("`{other}` is not implemented (linear, scaled_linear)"))),
            };
        }
        if obj.get("trained_betas").is_some_and(|v| !v.is_null()) {
            return Err(ModelsError::config("trained_betas", "explicit betas are not implemented"));
        }
        if let Some(s) = text("prediction_type")? {
            c.prediction_type = match s.as_str() {
                "epsilon" => PredictionType::Epsilon,
                "v_prediction" => PredictionType::VPrediction,
                other => return Err(ModelsError::config("prediction_type", format!("`{other}` is not implemented (epsilon, v_prediction)"))),
            };
        }
        if let Some(s) = text("timestep_spacing")? {
            c.timestep_spacing = match s.as_str() {
                "leading" => TimestepSpacing::Leading,
                "trailing" => TimestepSpacing::Trailing,
                "linspace" => TimestepSpacing::Linspace,
                other => return Err(ModelsError::config("timestep_spacing", format!("`{other}` is not one of leading, trailing, linspace"))),
            };
        }
        if let Some(n) = num("steps_offset")? {
            c.steps_offset = n as i64;
        }
        c.set_alpha_to_one = flag("set_alpha_to_one")?.unwrap_or(c.set_alpha_to_one);
        c.clip_sample = flag("clip_sample")?.unwrap_or(c.clip_sample);
        c.clip_sample_range = num("clip_sample_range")?.unwrap_or(c.clip_sample_range);
        c.skip_prk_steps = flag("skip_prk_steps")?.unwrap_or(c.skip_prk_steps);
        c.use_karras_sigmas = flag("use_karras_sigmas")?.unwrap_or(c.use_karras_sigmas);
        c.sigma_min = num("sigma_min")?;
        c.sigma_max = num("sigma_max")?;
        if let Some(n) = num("solver_order")? {
            c.solver_order = n as usize;
        }
        c.lower_order_final = flag("lower_order_final")?.unwrap_or(c.lower_order_final);
        c.euler_at_final = flag("euler_at_final")?.unwrap_or(c.euler_at_final);

        // Options that change the math and that quilt does not implement: refuse rather than ignore.
        for key in ["thresholding", "rescale_betas_zero_snr", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas"] {
            if flag(key)? == Some(true) {
                return Err(ModelsError::config(key, "true is not implemented"));
            }
        }
        let expect_text = |key: &str, allowed: &str| -> Result<()> {
            match text(key)? {
                Some(v) if v != allowed => Err(ModelsError::config(key, format!("`{v}` is not implemented (only `{allowed}`)"))),
                _ => Ok(()),
            }
        };
        expect_text("timestep_type", "discrete")?;
        expect_text("interpolation_type", "linear")?;
        expect_text("final_sigmas_type", "zero")?;
        if kind == SchedulerKind::DpmSolverMultistep {
            expect_text("algorithm_type", "dpmsolver++")?;
            expect_text("solver_type", "midpoint")?;
            if !(1..=2).contains(&c.solver_order) {
                return Err(ModelsError::config("solver_order", format!("{} is not implemented (1 or 2)", c.solver_order)));
            }
            if num("lambda_min_clipped")?.is_some_and(|v| v.is_finite()) {
                return Err(ModelsError::config("lambda_min_clipped", "a finite value is not implemented"));
            }
        }
        if kind == SchedulerKind::Pndm && !c.skip_prk_steps {
            // Stable Diffusion configs set skip_prk_steps; diffusers' PRK warm-up is not implemented.
            return Err(ModelsError::config("skip_prk_steps", "false (Runge-Kutta warm-up steps) is not implemented"));
        }
        if !matches!(kind, SchedulerKind::Euler | SchedulerKind::DpmSolverMultistep) {
            // Like diffusers' from_config: a key the class does not take is ignored.
            c.use_karras_sigmas = false;
        }
        if !(c.beta_start > 0.0 && c.beta_end >= c.beta_start && c.beta_end < 1.0) {
            return Err(ModelsError::config("beta_start", format!("need 0 < beta_start ≤ beta_end < 1, got {} and {}", c.beta_start, c.beta_end)));
        }
        Ok(c)
    }
}
