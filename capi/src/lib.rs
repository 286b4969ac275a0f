//! Exported C symbols. (Being written.)
