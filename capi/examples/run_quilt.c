/*
 * run_quilt.c -- runs an ONNX model on quilt through ONNX Runtime's raw C API.
 *
 *   QUILT_REFERENCE_DEVICE=1 ./run_quilt_c /path/libquilt_ep.so model.onnx
 *
 * Registers libquilt_ep.so, selects quilt's devices, disables the CPU EP fallback (so session
 * creation fails unless quilt takes every node), feeds random inputs shaped from the session's
 * input info (dynamic dims set to 2) and prints each output's shape.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onnxruntime_c_api.h"
#include "quilt_ep.h"

static const OrtApi* api;

/* Prints and exits on an ORT error. */
static void check(OrtStatus* status, const char* what) {
  if (status != NULL) {
    fprintf(stderr, "error: %s: %s\n", what, api->GetErrorMessage(status));
    api->ReleaseStatus(status);
    exit(1);
  }
}

/* A random tensor for input i (floats in [-1, 1), integers in [0, 4), booleans alternating). */
static OrtValue* random_input(OrtSession* session, OrtAllocator* allocator, size_t i, char** name_out) {
  check(api->SessionGetInputName(session, i, allocator, name_out), "SessionGetInputName");
  OrtTypeInfo* type_info = NULL;
  check(api->SessionGetInputTypeInfo(session, i, &type_info), "SessionGetInputTypeInfo");
  const OrtTensorTypeAndShapeInfo* tensor_info = NULL;
  check(api->CastTypeInfoToTensorInfo(type_info, &tensor_info), "CastTypeInfoToTensorInfo");
  if (tensor_info == NULL) {
    fprintf(stderr, "error: input '%s' is not a tensor\n", *name_out);
    exit(1);
  }
  ONNXTensorElementDataType type;
  size_t rank = 0;
  check(api->GetTensorElementType(tensor_info, &type), "GetTensorElementType");
  check(api->GetDimensionsCount(tensor_info, &rank), "GetDimensionsCount");
  int64_t* dims = calloc(rank ? rank : 1, sizeof(int64_t));
  if (rank) check(api->GetDimensions(tensor_info, dims, rank), "GetDimensions");
  size_t count = 1;
  for (size_t d = 0; d < rank; ++d) {
    if (dims[d] < 0) dims[d] = 2;
    count *= (size_t)dims[d];
  }
  OrtValue* value = NULL;
  check(api->CreateTensorAsOrtValue(allocator, dims, rank, type, &value), "CreateTensorAsOrtValue");
  void* data = NULL;
  check(api->GetTensorMutableData(value, &data), "GetTensorMutableData");
  for (size_t k = 0; k < count; ++k) {
    switch (type) {
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: ((float*)data)[k] = 2.0f * rand() / (float)RAND_MAX - 1.0f; break;
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: ((double*)data)[k] = 2.0 * rand() / (double)RAND_MAX - 1.0; break;
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: ((int64_t*)data)[k] = rand() % 4; break;
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: ((int32_t*)data)[k] = rand() % 4; break;
      case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: ((uint8_t*)data)[k] = (uint8_t)(k % 2); break;
      default:
        fprintf(stderr, "error: input '%s' has element type %d, which this example does not fill\n", *name_out, (int)type);
        exit(1);
    }
  }
  printf("input  %s: type %d, shape [", *name_out, (int)type);
  for (size_t d = 0; d < rank; ++d) printf("%s%lld", d ? ", " : "", (long long)dims[d]);
  printf("]\n");
  free(dims);
  api->ReleaseTypeInfo(type_info);
  return value;
}

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s /path/libquilt_ep.so model.onnx\n", argv[0]);
    return 2;
  }
  api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
  if (api == NULL) {
    fprintf(stderr, "error: this ONNX Runtime does not provide API %d\n", ORT_API_VERSION);
    return 1;
  }

  OrtEnv* env = NULL;
  check(api->CreateEnv(ORT_LOGGING_LEVEL_WARNING, "run_quilt_c", &env), "CreateEnv");
  check(api->RegisterExecutionProviderLibrary(env, "quilt", argv[1]), "RegisterExecutionProviderLibrary");

  const OrtEpDevice* const* devices = NULL;
  size_t num_devices = 0;
  check(api->GetEpDevices(env, &devices, &num_devices), "GetEpDevices");
  const OrtEpDevice* quilt_devices[8];
  size_t num_quilt = 0;
  for (size_t i = 0; i < num_devices && num_quilt < 8; ++i) {
    if (strcmp(api->EpDevice_EpName(devices[i]), QUILT_EP_NAME) == 0) quilt_devices[num_quilt++] = devices[i];
  }
  if (num_quilt == 0) {
    fprintf(stderr, "error: quilt offers no device (set %s=1 for the CPU reference device)\n", QUILT_REFERENCE_DEVICE_ENV);
    return 1;
  }
  printf("quilt devices: %zu\n", num_quilt);

  OrtSessionOptions* options = NULL;
  check(api->CreateSessionOptions(&options), "CreateSessionOptions");
  const char* keys[] = {QUILT_OPTION_LOG_LEVEL};
  const char* values[] = {"warning"};
  check(api->SessionOptionsAppendExecutionProvider_V2(options, env, quilt_devices, num_quilt, keys, values, 1),
        "SessionOptionsAppendExecutionProvider_V2");
  check(api->AddSessionConfigEntry(options, "session.disable_cpu_ep_fallback", "1"), "AddSessionConfigEntry");

  OrtSession* session = NULL;
  check(api->CreateSession(env, argv[2], options, &session), "CreateSession");

  OrtAllocator* allocator = NULL;
  check(api->GetAllocatorWithDefaultOptions(&allocator), "GetAllocatorWithDefaultOptions");
  size_t num_inputs = 0, num_outputs = 0;
  check(api->SessionGetInputCount(session, &num_inputs), "SessionGetInputCount");
  check(api->SessionGetOutputCount(session, &num_outputs), "SessionGetOutputCount");
  char** input_names = calloc(num_inputs + 1, sizeof(char*));
  char** output_names = calloc(num_outputs + 1, sizeof(char*));
  OrtValue** inputs = calloc(num_inputs + 1, sizeof(OrtValue*));
  OrtValue** outputs = calloc(num_outputs + 1, sizeof(OrtValue*));
  srand(1);
  for (size_t i = 0; i < num_inputs; ++i) inputs[i] = random_input(session, allocator, i, &input_names[i]);
  for (size_t i = 0; i < num_outputs; ++i)
    check(api->SessionGetOutputName(session, i, allocator, &output_names[i]), "SessionGetOutputName");

  check(api->Run(session, NULL, (const char* const*)input_names, (const OrtValue* const*)inputs, num_inputs,
                 (const char* const*)output_names, num_outputs, outputs),
        "Run");

  for (size_t i = 0; i < num_outputs; ++i) {
    OrtTensorTypeAndShapeInfo* info = NULL;
    check(api->GetTensorTypeAndShape(outputs[i], &info), "GetTensorTypeAndShape");
    size_t rank = 0;
    check(api->GetDimensionsCount(info, &rank), "GetDimensionsCount");
    int64_t dims[16] = {0};
    if (rank > 16) rank = 16;
    if (rank) check(api->GetDimensions(info, dims, rank), "GetDimensions");
    printf("output %s: shape [", output_names[i]);
    for (size_t d = 0; d < rank; ++d) printf("%s%lld", d ? ", " : "", (long long)dims[d]);
    printf("]\n");
    api->ReleaseTensorTypeAndShapeInfo(info);
    api->ReleaseValue(outputs[i]);
  }

  for (size_t i = 0; i < num_inputs; ++i) {
    api->ReleaseValue(inputs[i]);
    check(api->AllocatorFree(allocator, input_names[i]), "AllocatorFree");
  }
  for (size_t i = 0; i < num_outputs; ++i) check(api->AllocatorFree(allocator, output_names[i]), "AllocatorFree");
  free(inputs);
  free(outputs);
  free(input_names);
  free(output_names);
  api->ReleaseSession(session);
  api->ReleaseSessionOptions(options);
  check(api->UnregisterExecutionProviderLibrary(env, "quilt"), "UnregisterExecutionProviderLibrary");
  api->ReleaseEnv(env);
  printf("ok\n");
  return 0;
}
