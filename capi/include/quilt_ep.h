/*
 * quilt_ep.h -- the C interface of libquilt_ep.so, quilt's ONNX Runtime plugin execution provider.
 *
 * Applications do not call these functions themselves: ONNX Runtime (1.29 or newer) loads the
 * library and calls them when it is registered:
 *
 *   C:      api->RegisterExecutionProviderLibrary(env, "quilt", "/path/libquilt_ep.so");
 *           api->GetEpDevices(env, &devices, &n);   // keep those whose EpDevice_EpName is QUILT_EP_NAME
 *           api->SessionOptionsAppendExecutionProvider_V2(so, env, quilt_devices, k, keys, values, nkeys);
 *   C++:    env.RegisterExecutionProviderLibrary("quilt", ORT_TSTR("/path/libquilt_ep.so"));
 *           so.AppendExecutionProvider_V2(env, quilt_devices, options);
 *   Python: onnxruntime.register_execution_provider_library("quilt", path)
 *           so.add_provider_for_devices([d for d in onnxruntime.get_ep_devices()
 *                                        if d.ep_name == "QuiltExecutionProvider"], options)
 *
 * See capi/examples/run_quilt.c and run_quilt.cc.
 *
 * Devices: one GPU device per NVIDIA GPU that CUDA sees (libcuda loads), on ORT's NVIDIA hardware
 * device of the same PCI bus id; its EP metadata has "quilt.backend" = "cuda" and "cuda_device_id".
 * It runs subgraphs on the CUDA backend with I/O in its device memory (allocator, data transfer and
 * CUDA streams registered with ORT, so IO binding of device tensors works). The CPU reference device
 * (ORT's CPU hardware device, running quilt's CPU interpreter, I/O in CPU memory) is offered only
 * when the environment variable QUILT_REFERENCE_DEVICE=1 is set at registration time, so ORT's
 * automatic device policies never prefer it over ORT's own CPU EP; it is listed first. A session
 * runs on the first quilt device it is given. Without a GPU and without the variable, GetEpDevices
 * lists no quilt device.
 *
 * The library links no libonnxruntime: every ORT function comes from the OrtApiBase that ORT passes
 * to CreateEpFactories. It needs ORT API version 29 (ONNX Runtime 1.29, 1.30, 1.31 ...).
 */
#ifndef QUILT_EP_H
#define QUILT_EP_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ORT's types, opaque here (the full definitions are in onnxruntime_c_api.h / onnxruntime_ep_c_api.h). */
struct OrtStatus;
struct OrtApiBase;
struct OrtLogger;
struct OrtEpFactory;

/* The name quilt's EP reports (OrtEpDevice EpName); filter GetEpDevices by it. */
#define QUILT_EP_NAME "QuiltExecutionProvider"
/* Vendor string of the EP. */
#define QUILT_EP_VENDOR "quilt"
/* Set this environment variable to "1" before registering the library to get the CPU reference device. */
#define QUILT_REFERENCE_DEVICE_ENV "QUILT_REFERENCE_DEVICE"

/*
 * Provider options: pass them as key/value pairs to SessionOptionsAppendExecutionProvider_V2 (or
 * Python's add_provider_for_devices). ORT stores each as the session config entry
 * "ep.quiltexecutionprovider.<key>", which is also accepted directly. An unknown key makes session
 * creation fail with a message listing the known keys.
 */
/* A directory; every compiled subgraph's plan is written there as <fused node name>.plan.txt. */
#define QUILT_OPTION_DUMP_PLANS "dump_plans"
/* error | warning | info | verbose (default warning); messages go to ORT's session logger. */
#define QUILT_OPTION_LOG_LEVEL "log_level"
/* A CUDA ordinal: which of the quilt GPU devices given to the session runs it (default: the first). */
#define QUILT_OPTION_DEVICE_ID "device_id"
/* 1 | 0 (default 1): run the e-graph optimizer; 0 plans one step per ONNX node (debugging). */
#define QUILT_OPTION_OPTIMIZE "optimize"
/* model | fp16 (default model): fp16 runs an fp32 model's math in f16 storage (f32 statistics). */
#define QUILT_OPTION_PRECISION "precision"
/* 1 | 0 (default 1): replay each input-shape signature's run from a captured CUDA graph. */
#define QUILT_OPTION_CUDA_GRAPH "cuda_graph"
/* auto | nchw | channels_last (default auto): run 2-D convolutions and the ops between them on NHWC data on the GPU (cuDNN). */
#define QUILT_OPTION_LAYOUT "layout"
/* A directory for compiled GPU kernels, shared across sessions and processes; empty turns it off. */
#define QUILT_OPTION_CACHE_DIR "cache_dir"

/*
 * Called by ONNX Runtime at registration: creates quilt's one EP factory in factories[0].
 * Returns NULL on success, else an OrtStatus made by ORT's own CreateStatus (for example when the
 * ONNX Runtime is older than API version 29).
 */
struct OrtStatus* CreateEpFactories(const char* registration_name, const struct OrtApiBase* ort_api_base,
                                    const struct OrtLogger* default_logger, struct OrtEpFactory** factories,
                                    size_t max_factories, size_t* num_factories);

/* Called by ONNX Runtime at unregistration: frees a factory made by CreateEpFactories. */
struct OrtStatus* ReleaseEpFactory(struct OrtEpFactory* factory);

#ifdef __cplusplus
}
#endif

#endif /* QUILT_EP_H */
