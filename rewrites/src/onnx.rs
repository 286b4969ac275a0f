//! ONNX protobuf (`ModelProto`) → `SourceGraph`. (Being written.)
