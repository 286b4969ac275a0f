//! The backend's environment switches and tuning knobs (`QUILT_*`): off-switches for defaults
//! and opt-in experiments, read where the behaviour they change is decided (e.g.
//! `QUILT_INDEX64=1` forces the stitched kernels' 64-bit index path, the code before 32-bit
//! indexing, and `QUILT_NO_VECTOR=1` their scalar 32-bit path, for comparisons).

/// An opt-in switch: on when the environment's `name` is `1`.
pub fn on(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v == "1")
}

/// A default-on switch: on unless the environment's `name` is `0`.
pub fn default_on(name: &str) -> bool {
    std::env::var_os(name).is_none_or(|v| v != "0")
}

/// A tuning knob: the environment's `name` when it parses as a positive integer, else `default`
/// (experiments on the GPU machine set these; the defaults are the measured best).
pub fn usize_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse::<usize>().ok()).filter(|&v| v > 0).unwrap_or(default)
}
