//! The CPU reference interpreter of a `Plan` (f32 math, f16/bf16 storage). (Being written.)
