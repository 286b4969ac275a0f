//! `quilt`: run ONNX models through ONNX Runtime with the quilt EP and check them against ORT's CPU EP.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(quilt_models::cli::main(&args));
}
