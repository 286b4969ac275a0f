//! ORT plugin-EP glue. (Being written.)
