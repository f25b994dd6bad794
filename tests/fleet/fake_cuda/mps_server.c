/*
 * nvidia-cuda-mps-server stand-in (package cuda-drivers-580), started by the mps-control
 * stand-in's daemon when the first client connects, as NVIDIA's control daemon "launches an MPS
 * server" on a client's behalf (nvidia-cuda-mps-control(1), DESCRIPTION).  Like the real server it
 * holds a CUDA context on each GPU it sees (the daemon's CUDA_VISIBLE_DEVICES), so NVML lists it
 * as a compute process of those GPUs and its clients under the MPS process list.
 *
 * It writes "ready <pid>" on stdout once its contexts exist, then waits for its stdin to close
 * (the daemon quits) or for SIGTERM, and gives the contexts back.  The daemon starts it with
 * FAKE_CUDA_MPS_SERVER=1, so that libcuda does not take it for a client of its own daemon.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cuda_api.h"

#define MAX_DEVICES 16

static volatile sig_atomic_t stopping;

static void stop(int sig) {
    (void)sig;
    stopping = 1;
}

int main(void) {
    CUcontext contexts[MAX_DEVICES];
    struct sigaction sa;
    int count = 0, i;
    char buf[64];
    const char *name = NULL;
    CUresult rc;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = stop;
    sigaction(SIGTERM, &sa, NULL);
    if ((rc = cuInit(0)) || (rc = cuDeviceGetCount(&count))) {
        cuGetErrorName(rc, &name);
        fprintf(stderr, "%s\n", name ? name : "CUDA_ERROR_UNKNOWN");
        return 1;
    }
    for (i = 0; i < count && i < MAX_DEVICES; i++) {
        if ((rc = cuCtxCreate(&contexts[i], 0, i))) {
            cuGetErrorName(rc, &name);
            fprintf(stderr, "%s\n", name ? name : "CUDA_ERROR_UNKNOWN");
            return 1;
        }
    }
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    while (!stopping) {
        ssize_t got = read(0, buf, sizeof buf);
        if (got == 0 || (got < 0 && errno != EINTR)) break;
    }
    for (i = 0; i < count && i < MAX_DEVICES; i++) cuCtxDestroy(contexts[i]);
    return 0;
}
