// run_quilt.cc -- runs an ONNX model on quilt through ONNX Runtime's C++ API.
//
//   QUILT_REFERENCE_DEVICE=1 ./run_quilt_cc /path/libquilt_ep.so model.onnx
//
// Same flow as run_quilt.c: register the library, pick quilt's devices, disable the CPU EP
// fallback, run once on random inputs (dynamic dims set to 2), print the output shapes.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "onnxruntime_cxx_api.h"
#include "quilt_ep.h"

namespace {

std::string shape_string(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

Ort::Value random_input(OrtAllocator* allocator, const Ort::ConstTensorTypeAndShapeInfo& info, std::mt19937& rng,
                        const std::string& name) {
  std::vector<int64_t> dims = info.GetShape();
  for (auto& d : dims)
    if (d < 0) d = 2;
  ONNXTensorElementDataType type = info.GetElementType();
  Ort::Value value = Ort::Value::CreateTensor(allocator, dims.data(), dims.size(), type);
  size_t count = value.GetTensorTypeAndShapeInfo().GetElementCount();
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: {
      float* p = value.GetTensorMutableData<float>();
      for (size_t k = 0; k < count; ++k) p[k] = uniform(rng);
      break;
    }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: {
      int64_t* p = value.GetTensorMutableData<int64_t>();
      for (size_t k = 0; k < count; ++k) p[k] = static_cast<int64_t>(rng() % 4);
      break;
    }
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: {
      int32_t* p = value.GetTensorMutableData<int32_t>();
      for (size_t k = 0; k < count; ++k) p[k] = static_cast<int32_t>(rng() % 4);
      break;
    }
    default:
      throw std::runtime_error("input '" + name + "' has element type " + std::to_string(type) +
                               ", which this example does not fill");
  }
  std::printf("input  %s: type %d, shape %s\n", name.c_str(), static_cast<int>(type), shape_string(dims).c_str());
  return value;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s /path/libquilt_ep.so model.onnx\n", argv[0]);
    return 2;
  }
  try {
    Ort::Env env(ORT_LOGGING_LEVEL_WARNING, "run_quilt_cc");
    env.RegisterExecutionProviderLibrary("quilt", argv[1]);

    std::vector<Ort::ConstEpDevice> quilt_devices;
    for (Ort::ConstEpDevice device : env.GetEpDevices())
      if (std::strcmp(device.EpName(), QUILT_EP_NAME) == 0) quilt_devices.push_back(device);
    if (quilt_devices.empty()) {
      std::fprintf(stderr, "error: quilt offers no device (set %s=1 for the CPU reference device)\n",
                   QUILT_REFERENCE_DEVICE_ENV);
      return 1;
    }
    std::printf("quilt devices: %zu\n", quilt_devices.size());

    Ort::SessionOptions options;
    std::unordered_map<std::string, std::string> ep_options{{QUILT_OPTION_LOG_LEVEL, "warning"}};
    options.AppendExecutionProvider_V2(env, quilt_devices, ep_options);
    options.AddConfigEntry("session.disable_cpu_ep_fallback", "1");

    {
      Ort::Session session(env, argv[2], options);
      Ort::AllocatorWithDefaultOptions allocator;
      std::mt19937 rng(1);

      std::vector<std::string> input_names, output_names;
      std::vector<Ort::Value> inputs;
      for (size_t i = 0; i < session.GetInputCount(); ++i) {
        input_names.push_back(session.GetInputNameAllocated(i, allocator).get());
        Ort::TypeInfo type_info = session.GetInputTypeInfo(i);
        inputs.push_back(random_input(allocator, type_info.GetTensorTypeAndShapeInfo(), rng, input_names.back()));
      }
      for (size_t i = 0; i < session.GetOutputCount(); ++i)
        output_names.push_back(session.GetOutputNameAllocated(i, allocator).get());

      std::vector<const char*> in_ptrs, out_ptrs;
      for (auto& n : input_names) in_ptrs.push_back(n.c_str());
      for (auto& n : output_names) out_ptrs.push_back(n.c_str());
      std::vector<Ort::Value> outputs = session.Run(Ort::RunOptions{nullptr}, in_ptrs.data(), inputs.data(),
                                                    inputs.size(), out_ptrs.data(), out_ptrs.size());
      for (size_t i = 0; i < outputs.size(); ++i)
        std::printf("output %s: shape %s\n", output_names[i].c_str(),
                    shape_string(outputs[i].GetTensorTypeAndShapeInfo().GetShape()).c_str());
    }
    env.UnregisterExecutionProviderLibrary("quilt");
    std::printf("ok\n");
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
