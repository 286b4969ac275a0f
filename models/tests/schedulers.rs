//! quilt's Rust schedulers against diffusers' own (reference trajectories in
//! `tests/data/scheduler_refs.json`, written by `models/scripts/make_scheduler_refs.py`).
//!
//! Every case starts from the same seeded sample, feeds the same fixed model outputs, and compares
//! timesteps, sigmas, init_noise_sigma, the scaled UNet input and the sample after every step, and
//! add_noise at a mid-schedule timestep. Euler ancestral is fed the noise diffusers drew.
//!
//! Tolerance: |rust - diffusers| ≤ 1e-5 · max(1, max |diffusers|) per tensor, i.e. 1e-5 relative to
//! the tensor's scale (both sides are float32 arithmetic in slightly different order; errors
//! carry over the 10 steps).

use std::collections::VecDeque;

use quilt_models::sd::schedulers::{self, NoiseSource, SchedulerConfig, SchedulerKind};
use serde_json::Value;

const REL_TOL: f64 = 1e-5;

fn refs() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/scheduler_refs.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("reading scheduler_refs.json")).expect("parsing scheduler_refs.json")
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

/// Largest difference relative to the reference tensor's scale.
fn scaled_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1.0f64, |m, &x| m.max(f64::from(x).abs()));
    got.iter().zip(want).map(|(&a, &b)| (f64::from(a) - f64::from(b)).abs()).fold(0.0, f64::max) / scale
}

/// Replays the noise diffusers drew, one tensor per step.
struct Replay(VecDeque<Vec<f32>>);

impl NoiseSource for Replay {
    fn fill_normal(&mut self, out: &mut [f32]) {
        let next = self.0.pop_front().expect("the scheduler drew more noise than diffusers did");
        assert_eq!(next.len(), out.len());
        out.copy_from_slice(&next);
    }
}

#[test]
fn schedulers_match_diffusers() {
    let doc = refs();
    let steps = doc["num_inference_steps"].as_u64().unwrap() as usize;
    let model_outputs: Vec<Vec<f32>> = doc["model_outputs"].as_array().unwrap().iter().map(f32s).collect();
    let original = f32s(&doc["img2img_original"]);
    let noise = f32s(&doc["img2img_noise"]);
    let mut report = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for case in doc["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let kind = SchedulerKind::parse(case["class"].as_str().unwrap()).unwrap();
        seen.insert(kind.short_name());
        let config = SchedulerConfig::from_json(&case["config"], Some(kind)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut sched = schedulers::build(config.clone());
        sched.set_timesteps(steps).unwrap();

        // Integer timesteps must match exactly; Karras' fractional ones to float32 rounding.
        let want_t = f64s(&case["timesteps"]);
        assert_eq!(sched.timesteps().len(), want_t.len(), "{name}: timestep count");
        for (&a, &b) in sched.timesteps().iter().zip(&want_t) {
            let tol = if b.fract() == 0.0 { 0.0 } else { 1e-6 * b };
            assert!((a - b).abs() <= tol, "{name}: timesteps {:?} vs diffusers {want_t:?}", sched.timesteps());
        }
        let want_sigma = case["init_noise_sigma"].as_f64().unwrap();
        assert!((f64::from(sched.init_noise_sigma()) - want_sigma).abs() <= REL_TOL * want_sigma, "{name}: init_noise_sigma");

        let initial = f32s(&case["initial_sample"]);
        let start = f32s(&doc["start_sample"]);
        let mut sample: Vec<f32> = start.iter().map(|&x| x * sched.init_noise_sigma()).collect();
        assert!(scaled_err(&sample, &initial) <= REL_TOL, "{name}: initial sample");

        let mut replay = Replay(case.get("noise").map(|n| n.as_array().unwrap().iter().map(f32s).collect()).unwrap_or_default());
        let mut worst = 0.0f64;
        let timesteps = sched.timesteps().to_vec();
        for (i, (&t, want)) in timesteps.iter().zip(case["steps"].as_array().unwrap()).enumerate() {
            let scaled = sched.scale_model_input(&sample, t).unwrap();
            let e = scaled_err(&scaled, &f32s(&want["scaled_input"]));
            assert!(e <= REL_TOL, "{name}: step {i} (t = {t}): scaled input off by {e:e}");
            sample = sched.step(&model_outputs[i], t, &sample, &mut replay).unwrap();
            let e = scaled_err(&sample, &f32s(&want["prev_sample"]));
            assert!(e <= REL_TOL, "{name}: step {i} (t = {t}): sample off by {e:e}");
            worst = worst.max(e);
        }
        assert!(replay.0.is_empty(), "{name}: diffusers drew more noise than the Rust scheduler");

        // img2img: fresh scheduler, begin index as the pipelines set it.
        let an = &case["add_noise"];
        let mut fresh = schedulers::build(config);
        fresh.set_timesteps(steps).unwrap();
        fresh.set_begin_index(an["begin_index"].as_u64().unwrap() as usize);
        let t = an["timestep"].as_f64().unwrap();
        assert_eq!(fresh.timesteps()[an["begin_index"].as_u64().unwrap() as usize], t, "{name}: add_noise timestep");
        let noisy = fresh.add_noise(&original, &noise, t).unwrap();
        let e = scaled_err(&noisy, &f32s(&an["noisy"]));
        assert!(e <= REL_TOL, "{name}: add_noise off by {e:e}");
        report.push(format!("{name}: worst step error {worst:.2e}, add_noise {e:.2e}"));
    }
    println!("{}", report.join("\n"));
    assert_eq!(seen.len(), SchedulerKind::ALL.len(), "every scheduler kind has a reference case");
}

#[test]
fn sigmas_match_diffusers() {
    use quilt_models::sd::schedulers::{dpm_solver::DpmSolverMultistep, euler::Euler, Scheduler};
    let doc = refs();
    let steps = doc["num_inference_steps"].as_u64().unwrap() as usize;
    for case in doc["cases"].as_array().unwrap() {
        let Some(want) = case.get("sigmas") else { continue };
        let name = case["name"].as_str().unwrap();
        let kind = SchedulerKind::parse(case["class"].as_str().unwrap()).unwrap();
        let config = SchedulerConfig::from_json(&case["config"], Some(kind)).unwrap();
        let got: Vec<f32> = match kind {
            SchedulerKind::Euler | SchedulerKind::EulerAncestral => {
                let mut s = Euler::new(config, kind == SchedulerKind::EulerAncestral);
                s.set_timesteps(steps).unwrap();
                s.sigmas().to_vec()
            }
            SchedulerKind::DpmSolverMultistep => {
                let mut s = DpmSolverMultistep::new(config);
                s.set_timesteps(steps).unwrap();
                s.sigmas().to_vec()
            }
            _ => continue,
        };
        let want: Vec<f32> = f64s(want).into_iter().map(|x| x as f32).collect();
        let e = scaled_err(&got, &want);
        assert!(e <= REL_TOL, "{name}: sigmas off by {e:e}\n got {got:?}\nwant {want:?}");
    }
}

#[test]
fn config_errors_name_the_key() {
    let parse = |s: &str| SchedulerConfig::from_json(&serde_json::from_str(s).unwrap(), None);
    let sd15 = r#"{"_class_name":"PNDMScheduler","beta_end":0.012,"beta_schedule":"scaled_linear","beta_start":0.00085,
                  "num_train_timesteps":1000,"set_alpha_to_one":false,"skip_prk_steps":true,"steps_offset":1,"clip_sample":false}"#;
    let c = parse(sd15).unwrap();
    assert_eq!(c.kind, SchedulerKind::Pndm);
    assert_eq!(c.steps_offset, 1);
    let err = |s: &str| parse(s).unwrap_err().to_string();
    assert!(err(r#"{"_class_name":"LMSDiscreteScheduler"}"#).contains("_class_name"));
    assert!(err(r#"{"_class_name":"DDIMScheduler","beta_schedule":"squaredcos_cap_v2"}"#).contains("beta_schedule"));
    assert!(err(r#"{"_class_name":"DDIMScheduler","prediction_type":"sample"}"#).contains("prediction_type"));
    assert!(err(r#"{"_class_name":"DDIMScheduler","thresholding":true}"#).contains("thresholding"));
    assert!(err(r#"{"_class_name":"PNDMScheduler"}"#).contains("skip_prk_steps"));
    assert!(err(r#"{"_class_name":"DDIMScheduler","steps_offset":"one"}"#).contains("steps_offset"));
    assert!(err(r#"{}"#).contains("--scheduler"));
    // --scheduler overrides the class; a key the class does not take is ignored as diffusers does.
    let euler_a = SchedulerConfig::from_json(&serde_json::from_str(r#"{"_class_name":"PNDMScheduler","use_karras_sigmas":true}"#).unwrap(), Some(SchedulerKind::EulerAncestral)).unwrap();
    assert!(!euler_a.use_karras_sigmas);
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    let config = SchedulerConfig::defaults(SchedulerKind::Ddim);
    let mut s = schedulers::build(config);
    let mut rng = quilt_models::random::Rng::new(1);
    assert!(s.step(&[0.0; 4], 1.0, &[0.0; 4], &mut rng).is_err(), "step before set_timesteps");
    s.set_timesteps(10).unwrap();
    assert!(s.step(&[0.0; 3], 1.0, &[0.0; 4], &mut rng).is_err(), "length mismatch");
    assert!(s.step(&[0.0; 4], 1.5, &[0.0; 4], &mut rng).is_err(), "fractional DDIM timestep");
    assert!(s.set_timesteps(0).is_err());
    let mut e = schedulers::build(SchedulerConfig::defaults(SchedulerKind::Euler));
    e.set_timesteps(5).unwrap();
    assert!(e.scale_model_input(&[0.0; 4], 12.5).is_err(), "timestep not in the schedule");
}
