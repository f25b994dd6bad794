/*
 * fake-gpu-workload: a CUDA program for the test fleet, linked against libcuda.so.1 (the fake one
 * on fleet nodes; it uses nothing a real driver lacks but the fake's kernel image).
 *
 *   fake-gpu-workload [--memory-mib N] [--kernel-ms K] [--interval-ms I] [--device ORDINAL] [--seconds S]
 *
 * One context on device ORDINAL (default 0), N MiB allocated (default 0), then a loop: a kernel
 * that needs K ms of GPU time (default 10; 0 launches none), launched and synchronised, then I ms
 * of sleep (default 0), for S seconds (default 0: until SIGTERM or SIGINT).  With no sleep it
 * keeps a second kernel queued behind the running one and waits for the older (an event), as
 * programs that mean to keep a GPU busy do: launches are asynchronous, so the GPU then never waits
 * for this process's CPU thread to be scheduled (on a loaded machine it often is not at once).
 * Once a second it
 * prints one JSON line to stdout, and one more at the end:
 *
 *   {"gpu_ms_received": <ms of GPU time its finished kernels received>, "memory_mib": N, "device": "<GPU uuid>",
 *    "time_us": <CLOCK_REALTIME in µs when the count was taken, NVML's sample clock>}
 *
 * then frees its memory, destroys its context and exits 0.  When cuInit, cuDeviceGet,
 * cuCtxCreate or cuMemAlloc fails it prints the CUDA error's name (cuGetErrorName) alone on
 * stderr and exits 1; bad options exit 2.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda_api.h"

static volatile sig_atomic_t stopping;

static void stop(int sig) {
    (void)sig;
    stopping = 1;
}

struct options {
    unsigned long long memory_mib;
    unsigned int kernel_ms, interval_ms;
    int device;
    double seconds;
};

static int parse(int argc, char **argv, struct options *o) {
    int i;
    for (i = 1; i + 1 < argc; i += 2) {
        char *end;
        double v = strtod(argv[i + 1], &end);
        if (*end || v < 0) return -1;
        if (!strcmp(argv[i], "--memory-mib")) o->memory_mib = (unsigned long long)v;
        else if (!strcmp(argv[i], "--kernel-ms")) o->kernel_ms = (unsigned int)v;
        else if (!strcmp(argv[i], "--interval-ms")) o->interval_ms = (unsigned int)v;
        else if (!strcmp(argv[i], "--device")) o->device = (int)v;
        else if (!strcmp(argv[i], "--seconds")) o->seconds = v;
        else return -1;
    }
    return i == argc ? 0 : -1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int fail(CUresult rc) {
    const char *name = NULL;
    if (cuGetErrorName(rc, &name) != CUDA_SUCCESS || !name) name = "CUDA_ERROR_UNKNOWN";
    fprintf(stderr, "%s\n", name);
    return 1;
}

static void uuid_text(const CUuuid *u, char *out, size_t size) {
    const unsigned char *b = (const unsigned char *)u->bytes;
    snprintf(out, size, "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

static void report(unsigned long long received_ms, const struct options *o, const char *uuid) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    printf("{\"gpu_ms_received\": %llu, \"memory_mib\": %llu, \"device\": \"%s\", \"time_us\": %lld}\n", received_ms,
           o->memory_mib, uuid, (long long)now.tv_sec * 1000000LL + now.tv_nsec / 1000);
    fflush(stdout);
}

static void nap(unsigned int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    if (ms) nanosleep(&ts, NULL);
}

int main(int argc, char **argv) {
    struct options o = {0, 10, 0, 0, 0};
    struct sigaction sa;
    CUdevice dev;
    CUcontext ctx;
    CUmodule module;
    CUfunction kernel;
    CUuuid uuid;
    CUevent done[2];
    CUdeviceptr memory = 0;
    unsigned queued = 0;
    int next = 0;
    CUresult rc;
    char uuid_str[64];
    unsigned long long received_ms = 0;
    double start, next_report;

    if (parse(argc, argv, &o) != 0) {
        fprintf(stderr, "usage: fake-gpu-workload [--memory-mib N] [--kernel-ms K] [--interval-ms I] "
                        "[--device ORDINAL] [--seconds S]\n");
        return 2;
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    if ((rc = cuInit(0)) || (rc = cuDeviceGet(&dev, o.device))) return fail(rc);
    if ((rc = cuCtxCreate(&ctx, 0, dev))) return fail(rc);
    if (o.memory_mib && (rc = cuMemAlloc_v2(&memory, (size_t)o.memory_mib * 1024 * 1024))) return fail(rc);
    if ((rc = cuDeviceGetUuid(&uuid, dev)) || (rc = cuModuleLoadData(&module, FAKE_CUDA_MODULE_IMAGE))
        || (rc = cuModuleGetFunction(&kernel, module, FAKE_CUDA_KERNEL))
        || (rc = cuEventCreate(&done[0], 0)) || (rc = cuEventCreate(&done[1], 0)))
        return fail(rc);
    uuid_text(&uuid, uuid_str, sizeof uuid_str);

    start = now();
    next_report = start + 1;
    while (!stopping && (o.seconds <= 0 || now() - start < o.seconds)) {
        if (o.kernel_ms) {
            void *params[] = {&o.kernel_ms};
            if ((rc = cuLaunchKernel(kernel, 1, 1, 1, 1, 1, 1, 0, NULL, params, NULL))
                || (rc = cuEventRecord(done[next], NULL)))
                return fail(rc);
            next ^= 1; /* done[next] is now the older of two queued kernels' events */
            if (o.interval_ms) {
                if ((rc = cuStreamSynchronize(NULL))) return fail(rc);
                received_ms += o.kernel_ms;
            } else if (++queued == 2) {
                if ((rc = cuEventSynchronize(done[next]))) return fail(rc);
                received_ms += o.kernel_ms;
                queued = 1;
            }
        }
        nap(o.kernel_ms ? o.interval_ms : (o.interval_ms ? o.interval_ms : 100));
        if (now() >= next_report) {
            report(received_ms, &o, uuid_str);
            next_report += 1;
        }
    }
    if (queued && !cuStreamSynchronize(NULL)) received_ms += (unsigned long long)queued * o.kernel_ms;
    report(received_ms, &o, uuid_str);
    if (memory) cuMemFree_v2(memory);
    cuCtxDestroy(ctx);
    return 0;
}
