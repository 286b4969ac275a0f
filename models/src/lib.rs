//! quilt models and pipelines.
