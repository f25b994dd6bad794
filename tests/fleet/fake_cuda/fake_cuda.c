/*
 * A stand-in for the CUDA driver library, libcuda.so.1, for test-fleet nodes that have no GPU.
 * It implements the part of the driver API a test workload needs, with the behaviour and error
 * codes of NVIDIA's CUDA Driver API reference (docs.nvidia.com/cuda/cuda-driver-api, cited per
 * section below), over the fake GPUs the node's fake NVML describes (its profile,
 * /etc/fake-nvml/profile, FAKE_NVML_PROFILE) and their shared state (fake_gpu.h).
 *
 * Which GPUs a process sees:
 *  - the driver answers only while it is loaded (the marker fake_nvml.c describes); otherwise
 *    cuInit fails with CUDA_ERROR_NO_DEVICE, and with CUDA_ERROR_SYSTEM_DRIVER_MISMATCH when the
 *    installed driver is not the loaded one (fake_nvml.c's version check);
 *  - FAKE_NVIDIA_CONTAINER_GPUS (comma-separated UUIDs) stands for the /dev/nvidiaN device nodes
 *    the container runtime gave the process: unset, every GPU of the profile (a process on the
 *    host); set, only those, in the profile's (bus) order; set but empty, none;
 *  - then CUDA_VISIBLE_DEVICES narrows and renumbers them, as the CUDA C++ Programming Guide,
 *    "CUDA Environment Variables", says: a comma-separated list of indices (into what the process
 *    could see) or GPU-<uuid> names (a unique prefix suffices); the list ends at the first entry
 *    that names no device; set but empty, no device.  No device left: cuInit answers
 *    CUDA_ERROR_NO_DEVICE.
 *
 * Kernels: the fake has one module and one kernel.  cuModuleLoadData takes the image
 * FAKE_CUDA_MODULE_IMAGE (any other is CUDA_ERROR_INVALID_IMAGE); cuModuleGetFunction gives its
 * kernel "fake_gpu_busy" (any other name is CUDA_ERROR_NOT_FOUND), whose one parameter is an
 * unsigned int: the milliseconds of GPU time it needs.  So cuLaunchKernel(f, ..., kernelParams =
 * {&ms}, NULL) asks for ms of GPU time, as a real kernel's parameters decide how long it runs.
 * The launch returns at once (launches are asynchronous, "Execution Control"); the GPU time is
 * given out by fake_gpu.h's clock, shared with every other context on the GPU, and
 * cuStreamSynchronize / cuCtxSynchronize sleep (never spin) until the context's work is done.
 *
 * MPS: "When CUDA is first initialized in a program, the CUDA driver attempts to connect to the
 * MPS control daemon.  If the connection attempt fails, the program continues to run as it
 * normally would without MPS" (nvidia-cuda-mps-control(1)).  So cuInit connects to the control
 * socket in CUDA_MPS_PIPE_DIRECTORY (default /tmp/nvidia-mps) and, when a daemon answers, asks it
 * for its server (the stand-in's own request, see the mps-control stand-in); the process's
 * contexts are then MPS clients of that server, listed by NVML's MPS process list.  The server
 * itself runs with FAKE_CUDA_MPS_SERVER=1 so that it does not connect to its own daemon.
 *
 * Compute modes (the fake NVML's compute-mode-<index> files): cuCtxCreate answers
 * CUDA_ERROR_DEVICE_UNAVAILABLE under PROHIBITED, and under EXCLUSIVE_PROCESS when another
 * process holds a context on the GPU (an MPS server and its clients count as one): the CUresult
 * reference, "CUDA_ERROR_DEVICE_UNAVAILABLE: ... Devices are often unavailable due to use of
 * CU_COMPUTEMODE_EXCLUSIVE_PROCESS or CU_COMPUTEMODE_PROHIBITED".
 */
#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "cuda_api.h"
#include "fake_gpu.h"

#define MAX_DEVICES 16
#define MAX_CONTEXTS 16
#define MAX_MODULES 16
#define MAX_ALLOCATIONS 4096
#define MAX_EVENTS 64
#define FIELD 96
#define OBJECT_MAGIC 0x43554441u

struct device {
    char uuid[FIELD], name[FIELD];
    unsigned index; /* in the profile: NVML's index, and the compute-mode file's */
    uint64_t total_bytes;
    struct fake_gpu_map map;
};

struct fake_ctx {
    uint32_t magic;
    int device;
    int slot;     /* in the GPU's state */
    uint64_t id;  /* the slot's id when this context took it */
};

struct fake_module { uint32_t magic; struct fake_ctx *ctx; };
struct fake_function { uint32_t magic; struct fake_module *module; };

struct allocation { CUdeviceptr ptr; size_t size; struct fake_ctx *ctx; };

struct fake_event {
    uint32_t magic;
    struct fake_ctx *ctx;
    int recorded;
    uint64_t mark; /* the context's work submitted when it was recorded (wait_for_work) */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int initialised;
static struct device devices[MAX_DEVICES];
static int device_count;
static pid_t mps_server; /* the MPS server this process is a client of; 0 without MPS */
static struct fake_ctx contexts[MAX_CONTEXTS];
static struct fake_module modules[MAX_MODULES];
static struct fake_function functions[MAX_MODULES];
static struct allocation allocations[MAX_ALLOCATIONS];
static struct fake_event events[MAX_EVENTS];
static CUdeviceptr next_pointer = 0x7f0000000000ULL;
static __thread struct fake_ctx *current;

/* ---- Initialization ("Initialization": cuInit) ---- */

/* fake_nvml.c's rule: the marker names the version loaded at boot, the version file the one installed. */
static const char *version_file(void) {
    const char *p = getenv("FAKE_NVIDIA_VERSION_FILE");
    return p && *p ? p : "/usr/lib/fake-nvidia/version";
}

static int driver_mismatch(void) {
    char loaded[FIELD], installed[FIELD];
    fake_gpu_first_line(fake_gpu_loaded_marker(), loaded, sizeof loaded);
    fake_gpu_first_line(version_file(), installed, sizeof installed);
    return *loaded && *installed && strcmp(loaded, installed) != 0;
}

static int listed(const char *list, const char *uuid) {
    size_t n = strlen(uuid);
    const char *p = list;
    while (p && *p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == n && !strncmp(p, uuid, n)) return 1;
        p = end ? end + 1 : NULL;
    }
    return 0;
}

/* The profile's GPUs that the process's device nodes give it (FAKE_NVIDIA_CONTAINER_GPUS). */
static int load_hardware(struct device *found, int max) {
    const char *container = getenv("FAKE_NVIDIA_CONTAINER_GPUS");
    FILE *f = fopen(fake_gpu_profile_path(), "r");
    char line[512];
    unsigned index = 0;
    int n = 0;
    if (!f) return 0;
    while (fgets(line, sizeof line, f)) {
        char *fields[5] = {0};
        line[strcspn(line, "\r\n")] = 0;
        if (strncmp(line, "gpu=", 4) || fake_gpu_profile_fields(line + 4, fields) < 4) continue;
        if ((!container || listed(container, fields[0])) && n < max) {
            struct device *d = &found[n++];
            memset(d, 0, sizeof *d);
            snprintf(d->uuid, sizeof d->uuid, "%s", fields[0]);
            snprintf(d->name, sizeof d->name, "%s", fields[1]);
            d->total_bytes = strtoull(fields[2], NULL, 10) * 1024 * 1024;
            d->index = index;
            d->map.fd = -1;
        }
        index++;
    }
    fclose(f);
    return n;
}

/* One CUDA_VISIBLE_DEVICES entry: an index into `all`, or a GPU-<uuid> (unique prefix); -1: none. */
static int visible_entry(const char *entry, size_t len, const struct device *all, int count) {
    char buf[FIELD], *end;
    long ordinal;
    int i, match = -1;
    if (!len || len >= sizeof buf) return -1;
    memcpy(buf, entry, len);
    buf[len] = 0;
    if (!strncmp(buf, "GPU-", 4)) {
        for (i = 0; i < count; i++) {
            if (!strncmp(all[i].uuid, buf, len)) {
                if (match >= 0) return -1; /* ambiguous prefix */
                match = i;
            }
        }
        return match;
    }
    ordinal = strtol(buf, &end, 10);
    return *end || ordinal < 0 || ordinal >= count ? -1 : (int)ordinal;
}

static void apply_visible_devices(struct device *all, int count) {
    const char *list = getenv("CUDA_VISIBLE_DEVICES");
    struct device chosen[MAX_DEVICES];
    int n = 0, i;
    const char *p = list;
    if (!list) {
        memcpy(devices, all, sizeof(struct device) * (size_t)count);
        device_count = count;
        return;
    }
    while (p && *p && n < MAX_DEVICES) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        int pick = visible_entry(p, len, all, count);
        if (pick < 0) break; /* the list ends at the first entry that names no device */
        for (i = 0; i < n; i++)
            if (!strcmp(chosen[i].uuid, all[pick].uuid)) break;
        if (i < n) break;    /* a device named twice ends it too */
        chosen[n++] = all[pick];
        p = end ? end + 1 : NULL;
    }
    memcpy(devices, chosen, sizeof(struct device) * (size_t)n);
    device_count = n;
}

/* Ask the MPS control daemon (if one answers in the pipe directory) for its server's pid. */
static pid_t connect_mps(void) {
    const char *dir = getenv("CUDA_MPS_PIPE_DIRECTORY");
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    char request[64], answer[64];
    ssize_t got;
    size_t have = 0;
    int fd;
    if (getenv("FAKE_CUDA_MPS_SERVER")) return 0;
    snprintf(addr.sun_path, sizeof addr.sun_path, "%s/control", dir && *dir ? dir : "/tmp/nvidia-mps");
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return 0;
    }
    snprintf(request, sizeof request, "gpuaas_standin_mps_client %d %u\n", (int)getpid(), (unsigned)getuid());
    if (write(fd, request, strlen(request)) == (ssize_t)strlen(request)) {
        while (have < sizeof answer - 1 && (got = read(fd, answer + have, sizeof answer - 1 - have)) > 0) {
            have += (size_t)got;
            if (memchr(answer, 0, have)) break; /* the stand-in ends each answer with a NUL */
        }
    }
    close(fd);
    answer[have < sizeof answer ? have : sizeof answer - 1] = 0;
    return (pid_t)atoi(answer);
}

CUresult cuInit(unsigned int flags) {
    struct device all[MAX_DEVICES];
    int count;
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE; /* "Flags: Initialization flag for CUDA. Currently must be 0" */
    pthread_mutex_lock(&lock);
    if (initialised) {
        pthread_mutex_unlock(&lock);
        return CUDA_SUCCESS;
    }
    if (access(fake_gpu_loaded_marker(), F_OK) != 0) {
        pthread_mutex_unlock(&lock);
        return CUDA_ERROR_NO_DEVICE;
    }
    if (driver_mismatch()) {
        pthread_mutex_unlock(&lock);
        return CUDA_ERROR_SYSTEM_DRIVER_MISMATCH;
    }
    count = load_hardware(all, MAX_DEVICES);
    apply_visible_devices(all, count);
    if (!device_count) {
        pthread_mutex_unlock(&lock);
        return CUDA_ERROR_NO_DEVICE;
    }
    mps_server = connect_mps();
    initialised = 1;
    pthread_mutex_unlock(&lock);
    return CUDA_SUCCESS;
}

/* "Returns in *driverVersion the version of CUDA supported by the driver" (works before cuInit): the
 * installed driver's (its version file), else the profile's cuda_version, as the fake NVML says. */
CUresult cuDriverGetVersion(int *version) {
    char line[FIELD];
    FILE *f;
    if (!version) return CUDA_ERROR_INVALID_VALUE;
    fake_gpu_first_line(version_file(), line, sizeof line);
    *version = fake_gpu_cuda_version(line);
    if (!*version && (f = fopen(fake_gpu_profile_path(), "r"))) {
        while (fgets(line, sizeof line, f))
            if (!strncmp(line, "cuda_version=", 13)) *version = atoi(line + 13);
        fclose(f);
    }
    return CUDA_SUCCESS;
}

/* ---- Device Management ---- */

static CUresult check_device(CUdevice dev) {
    if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (dev < 0 || dev >= device_count) return CUDA_ERROR_INVALID_DEVICE;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetCount(int *count) {
    if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!count) return CUDA_ERROR_INVALID_VALUE;
    *count = device_count;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGet(CUdevice *device, int ordinal) {
    CUresult rc = check_device(ordinal);
    if (!initialised) return rc;
    if (!device) return CUDA_ERROR_INVALID_VALUE;
    if (rc) return rc;
    *device = ordinal;
    return CUDA_SUCCESS;
}

CUresult cuDeviceGetName(char *name, int len, CUdevice dev) {
    CUresult rc = check_device(dev);
    if (rc) return rc;
    if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    snprintf(name, (size_t)len, "%s", devices[dev].name); /* "len: Maximum length of string to store in name" */
    return CUDA_SUCCESS;
}

static int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The 16 bytes of GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx (NVML prints the same bytes). */
CUresult cuDeviceGetUuid(CUuuid *uuid, CUdevice dev) {
    CUresult rc = check_device(dev);
    const char *p;
    int n = 0;
    if (rc) return rc;
    if (!uuid) return CUDA_ERROR_INVALID_VALUE;
    memset(uuid, 0, sizeof *uuid);
    p = devices[dev].uuid;
    if (!strncmp(p, "GPU-", 4)) p += 4;
    for (; *p && n < 32; p++) {
        int v = hex_value(*p);
        if (v < 0) continue;
        uuid->bytes[n / 2] = (char)(uuid->bytes[n / 2] | (n % 2 ? v : v << 4));
        n++;
    }
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetUuid_v2(CUuuid *uuid, CUdevice dev) { return cuDeviceGetUuid(uuid, dev); }

CUresult cuDeviceTotalMem_v2(size_t *bytes, CUdevice dev) {
    CUresult rc = check_device(dev);
    if (rc) return rc;
    if (!bytes) return CUDA_ERROR_INVALID_VALUE;
    *bytes = devices[dev].total_bytes;
    return CUDA_SUCCESS;
}

/* ---- Context Management ---- */

static struct fake_gpu_map *gpu(int dev) {
    struct device *d = &devices[dev];
    if (d->map.fd < 0 && fake_gpu_open(&d->map, d->uuid, 1) != 0) return NULL;
    return &d->map;
}

static int live_context(const struct fake_ctx *c) {
    return c && c >= contexts && c < contexts + MAX_CONTEXTS && c->magic == OBJECT_MAGIC;
}

/* The context's slot in the GPU's state, or NULL when it is gone (call with the GPU locked). */
static struct fake_gpu_context *slot_of(const struct fake_ctx *c) {
    struct fake_gpu_context *s = &devices[c->device].map.state->contexts[c->slot];
    return s->pid == getpid() && s->id == c->id ? s : NULL;
}

static int compute_mode(const struct device *d) {
    const char *dir = getenv("FAKE_NVML_STATE_DIR");
    char path[512];
    int mode = 0;
    FILE *f;
    snprintf(path, sizeof path, "%s/compute-mode-%u", dir && *dir ? dir : "/var/lib/fake-nvml", d->index);
    if ((f = fopen(path, "r"))) {
        if (fscanf(f, "%d", &mode) != 1) mode = 0;
        fclose(f);
    }
    return mode;
}

/* Under EXCLUSIVE_PROCESS (3), whether another process (other than our own MPS server and its
 * clients) holds a context on the GPU. */
static int held_by_another(const struct fake_gpu_state *s) {
    pid_t me = getpid();
    int i;
    for (i = 0; i < FAKE_GPU_MAX_CONTEXTS; i++) {
        const struct fake_gpu_context *c = &s->contexts[i];
        if (!c->pid || c->pid == me) continue;
        if (mps_server && (c->pid == mps_server || c->mps_server == mps_server)) continue;
        return 1;
    }
    return 0;
}

static CUresult create_context(CUcontext *pctx, CUdevice dev) {
    struct fake_gpu_map *m;
    struct fake_gpu_state *s;
    struct fake_ctx *c = NULL;
    int i, slot = -1, mode;
    for (i = 0; i < MAX_CONTEXTS && !c; i++)
        if (contexts[i].magic != OBJECT_MAGIC) c = &contexts[i];
    if (!c || !(m = gpu(dev))) return CUDA_ERROR_OUT_OF_MEMORY;
    mode = compute_mode(&devices[dev]);
    fake_gpu_lock(m);
    s = m->state;
    fake_gpu_advance(s, 0);
    if (mode == 2 || (mode == 3 && held_by_another(s))) {
        fake_gpu_unlock(m);
        return CUDA_ERROR_DEVICE_UNAVAILABLE;
    }
    for (i = 0; i < FAKE_GPU_MAX_CONTEXTS && slot < 0; i++)
        if (!s->contexts[i].pid) slot = i;
    if (slot < 0) {
        fake_gpu_unlock(m);
        return CUDA_ERROR_OUT_OF_MEMORY; /* the GPU has no room for another context */
    }
    memset(&s->contexts[slot], 0, sizeof s->contexts[slot]);
    s->contexts[slot].pid = getpid();
    s->contexts[slot].mps_server = mps_server;
    s->contexts[slot].pid_ns = fake_gpu_pid_ns();
    s->contexts[slot].id = s->next_id++;
    s->contexts[slot].created_us = fake_gpu_now_us();
    fake_gpu_ring_push(&s->contexts[slot].history, s->contexts[slot].created_us, 0, 1);
    fake_gpu_unlock(m);
    c->magic = OBJECT_MAGIC;
    c->device = dev;
    c->slot = slot;
    c->id = s->contexts[slot].id;
    *pctx = c;
    current = c; /* "associates it with the calling thread" */
    return CUDA_SUCCESS;
}

CUresult cuCtxCreate_v2(CUcontext *pctx, unsigned int flags, CUdevice dev) {
    CUresult rc;
    (void)flags; /* scheduling flags only change how a real driver waits; this one always sleeps */
    pthread_mutex_lock(&lock);
    rc = check_device(dev);
    if (!rc && !pctx) rc = CUDA_ERROR_INVALID_VALUE;
    if (!rc) rc = create_context(pctx, dev);
    pthread_mutex_unlock(&lock);
    return rc;
}
CUresult cuCtxCreate(CUcontext *pctx, unsigned int flags, CUdevice dev) { return cuCtxCreate_v2(pctx, flags, dev); }

/* Drop the context's allocations, modules and slot (call with `lock` held). */
static void destroy_context(struct fake_ctx *c) {
    struct fake_gpu_map *m = &devices[c->device].map;
    struct fake_gpu_context *s;
    int i;
    fake_gpu_lock(m);
    fake_gpu_advance(m->state, 0);
    if ((s = slot_of(c))) memset(s, 0, sizeof *s);
    fake_gpu_unlock(m);
    for (i = 0; i < MAX_ALLOCATIONS; i++)
        if (allocations[i].ctx == c) memset(&allocations[i], 0, sizeof allocations[i]);
    for (i = 0; i < MAX_MODULES; i++)
        if (modules[i].magic == OBJECT_MAGIC && modules[i].ctx == c) modules[i].magic = 0;
    for (i = 0; i < MAX_EVENTS; i++)
        if (events[i].magic == OBJECT_MAGIC && events[i].ctx == c) events[i].magic = 0;
    c->magic = 0;
    if (current == c) current = NULL;
}

CUresult cuCtxDestroy_v2(CUcontext ctx) {
    pthread_mutex_lock(&lock);
    if (!initialised) {
        pthread_mutex_unlock(&lock);
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    if (!live_context(ctx)) {
        pthread_mutex_unlock(&lock);
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    destroy_context(ctx);
    pthread_mutex_unlock(&lock);
    return CUDA_SUCCESS;
}
CUresult cuCtxDestroy(CUcontext ctx) { return cuCtxDestroy_v2(ctx); }

CUresult cuCtxSetCurrent(CUcontext ctx) {
    if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (ctx && !live_context(ctx)) return CUDA_ERROR_INVALID_CONTEXT;
    current = ctx;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetCurrent(CUcontext *pctx) {
    if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!pctx) return CUDA_ERROR_INVALID_VALUE;
    *pctx = live_context(current) ? current : NULL;
    return CUDA_SUCCESS;
}

CUresult cuCtxGetDevice(CUdevice *device) {
    if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!live_context(current)) return CUDA_ERROR_INVALID_CONTEXT;
    if (!device) return CUDA_ERROR_INVALID_VALUE;
    *device = current->device;
    return CUDA_SUCCESS;
}

/* Every call that works in "the current context" starts here. */
static CUresult check_current(void) {
    if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!live_context(current)) return CUDA_ERROR_INVALID_CONTEXT;
    return CUDA_SUCCESS;
}

#define ALL_WORK UINT64_MAX

/* Sleep until context c's work up to `mark` (GPU ns submitted, counted from its creation; ALL_WORK:
 * everything launched so far) has received its GPU time.  A context's kernels run in launch order
 * (one stream), so work up to a mark is done when the context has received that much. */
static CUresult wait_for_work(struct fake_ctx *c, uint64_t mark) {
    struct fake_gpu_map *m = &devices[c->device].map;
    for (;;) {
        struct fake_gpu_context *s;
        uint64_t left = 0, wait_ns;
        unsigned running;
        struct timespec ts;
        fake_gpu_lock(m);
        fake_gpu_advance(m->state, 0);
        if ((s = slot_of(c)))
            left = mark == ALL_WORK ? s->outstanding_ns : mark > s->received_ns ? mark - s->received_ns : 0;
        running = fake_gpu_running(m->state);
        fake_gpu_unlock(m);
        if (!s) return CUDA_ERROR_INVALID_CONTEXT;
        if (!left) return CUDA_SUCCESS;
        /* The time it needs at today's share, between 1 and 20 ms: a later change of who runs is
         * seen at the next step, and the clock (not this sleep) decides what each context got. */
        wait_ns = left * (running ? running : 1);
        if (wait_ns < 1000000ULL) wait_ns = 1000000ULL;
        if (wait_ns > 20000000ULL) wait_ns = 20000000ULL;
        ts.tv_sec = 0;
        ts.tv_nsec = (long)wait_ns;
        nanosleep(&ts, NULL);
    }
}

static CUresult wait_for_context(void) { return wait_for_work(current, ALL_WORK); }

CUresult cuCtxSynchronize(void) {
    CUresult rc = check_current();
    return rc ? rc : wait_for_context();
}

/* ---- Memory Management ---- */

static CUresult allocate(CUdeviceptr *dptr, size_t bytesize) {
    struct fake_gpu_map *m = &devices[current->device].map;
    struct fake_gpu_context *s;
    uint64_t room;
    int i, free_entry = -1;
    for (i = 0; i < MAX_ALLOCATIONS && free_entry < 0; i++)
        if (!allocations[i].ptr) free_entry = i;
    if (free_entry < 0) return CUDA_ERROR_OUT_OF_MEMORY;
    fake_gpu_lock(m);
    fake_gpu_advance(m->state, 0);
    s = slot_of(current);
    room = devices[current->device].total_bytes - fake_gpu_footprint_bytes(devices[current->device].index);
    if (!s) {
        fake_gpu_unlock(m);
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    /* Full across every process's contexts: the GPU's memory is one pool. */
    if (fake_gpu_memory_held(m->state) + bytesize > room) {
        fake_gpu_unlock(m);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    s->memory_bytes += bytesize;
    fake_gpu_unlock(m);
    allocations[free_entry].ptr = next_pointer;
    allocations[free_entry].size = bytesize;
    allocations[free_entry].ctx = current;
    *dptr = next_pointer;
    next_pointer += (bytesize + 0x1fffffULL) & ~0x1fffffULL; /* 2 MiB apart, like large-page allocations */
    return CUDA_SUCCESS;
}

CUresult cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) {
    CUresult rc;
    pthread_mutex_lock(&lock);
    rc = check_current();
    /* "If bytesize is 0, cuMemAlloc() returns CUDA_ERROR_INVALID_VALUE." */
    if (!rc && (!dptr || !bytesize)) rc = CUDA_ERROR_INVALID_VALUE;
    if (!rc) rc = allocate(dptr, bytesize);
    pthread_mutex_unlock(&lock);
    return rc;
}

CUresult cuMemFree_v2(CUdeviceptr dptr) {
    struct fake_gpu_map *m;
    struct fake_gpu_context *s;
    int i;
    pthread_mutex_lock(&lock);
    if (!initialised) {
        pthread_mutex_unlock(&lock);
        return CUDA_ERROR_NOT_INITIALIZED;
    }
    for (i = 0; i < MAX_ALLOCATIONS; i++)
        if (dptr && allocations[i].ptr == dptr) break;
    if (i == MAX_ALLOCATIONS) {
        pthread_mutex_unlock(&lock);
        return CUDA_ERROR_INVALID_VALUE; /* not a pointer cuMemAlloc gave */
    }
    m = &devices[allocations[i].ctx->device].map;
    fake_gpu_lock(m);
    fake_gpu_advance(m->state, 0);
    if ((s = slot_of(allocations[i].ctx))) s->memory_bytes -= allocations[i].size;
    fake_gpu_unlock(m);
    memset(&allocations[i], 0, sizeof allocations[i]);
    pthread_mutex_unlock(&lock);
    return CUDA_SUCCESS;
}

CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total) {
    struct device *d;
    CUresult rc;
    uint64_t held;
    pthread_mutex_lock(&lock);
    rc = check_current();
    if (!rc && (!free_bytes || !total)) rc = CUDA_ERROR_INVALID_VALUE;
    if (rc) {
        pthread_mutex_unlock(&lock);
        return rc;
    }
    d = &devices[current->device];
    fake_gpu_lock(&d->map);
    fake_gpu_advance(d->map.state, 0);
    held = fake_gpu_memory_held(d->map.state);
    fake_gpu_unlock(&d->map);
    *total = d->total_bytes;
    *free_bytes = d->total_bytes - fake_gpu_footprint_bytes(d->index) - held;
    pthread_mutex_unlock(&lock);
    return CUDA_SUCCESS;
}

/* ---- Module Management ---- */

CUresult cuModuleLoadData(CUmodule *module, const void *image) {
    CUresult rc;
    int i;
    pthread_mutex_lock(&lock);
    rc = check_current();
    if (!rc && (!module || !image)) rc = CUDA_ERROR_INVALID_VALUE;
    if (!rc && strncmp(image, FAKE_CUDA_MODULE_IMAGE, sizeof FAKE_CUDA_MODULE_IMAGE)) rc = CUDA_ERROR_INVALID_IMAGE;
    for (i = 0; !rc && i < MAX_MODULES; i++) {
        if (modules[i].magic == OBJECT_MAGIC) continue;
        modules[i].magic = OBJECT_MAGIC;
        modules[i].ctx = current; /* a module is loaded into the current context */
        *module = &modules[i];
        break;
    }
    if (!rc && i == MAX_MODULES) rc = CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_unlock(&lock);
    return rc;
}

static int live_module(const struct fake_module *m) {
    return m && m >= modules && m < modules + MAX_MODULES && m->magic == OBJECT_MAGIC;
}

CUresult cuModuleUnload(CUmodule module) {
    if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!live_module(module)) return CUDA_ERROR_INVALID_HANDLE;
    module->magic = 0;
    return CUDA_SUCCESS;
}

CUresult cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name) {
    int index;
    if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!hfunc || !name) return CUDA_ERROR_INVALID_VALUE;
    if (!live_module(hmod)) return CUDA_ERROR_INVALID_HANDLE;
    if (strcmp(name, FAKE_CUDA_KERNEL)) return CUDA_ERROR_NOT_FOUND; /* "no function of that name" */
    index = (int)(hmod - modules);
    functions[index].magic = OBJECT_MAGIC;
    functions[index].module = hmod;
    *hfunc = &functions[index];
    return CUDA_SUCCESS;
}

/* ---- Execution Control / Stream Management ---- */

static int default_stream(CUstream s) {
    return s == NULL || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD;
}

CUresult cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ,
                        unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ,
                        unsigned int sharedMemBytes, CUstream hStream, void **kernelParams, void **extra) {
    struct fake_gpu_map *m;
    struct fake_gpu_context *s;
    unsigned int milliseconds;
    CUresult rc;
    (void)sharedMemBytes;
    pthread_mutex_lock(&lock);
    rc = check_current();
    if (!rc && (!f || f < functions || f >= functions + MAX_MODULES || f->magic != OBJECT_MAGIC
                || !live_module(f->module) || !default_stream(hStream)))
        rc = CUDA_ERROR_INVALID_HANDLE;
    if (!rc && f->module->ctx != current) rc = CUDA_ERROR_INVALID_CONTEXT; /* a kernel runs in its module's context */
    /* The kernel's one parameter goes in kernelParams; "extra" is the other way to pass them, and
     * giving both is CUDA_ERROR_INVALID_VALUE. */
    if (!rc && (!gridDimX || !gridDimY || !gridDimZ || !blockDimX || !blockDimY || !blockDimZ
                || !kernelParams || !kernelParams[0] || extra))
        rc = CUDA_ERROR_INVALID_VALUE;
    if (rc) {
        pthread_mutex_unlock(&lock);
        return rc;
    }
    milliseconds = *(unsigned int *)kernelParams[0];
    m = &devices[current->device].map;
    fake_gpu_lock(m);
    fake_gpu_advance(m->state, 0);
    if ((s = slot_of(current))) s->outstanding_ns += (uint64_t)milliseconds * 1000000ULL;
    else rc = CUDA_ERROR_INVALID_CONTEXT;
    fake_gpu_unlock(m);
    pthread_mutex_unlock(&lock);
    return rc;
}

CUresult cuStreamSynchronize(CUstream hStream) {
    CUresult rc = check_current();
    if (rc) return rc;
    if (!default_stream(hStream)) return CUDA_ERROR_INVALID_HANDLE;
    return wait_for_context();
}

/* ---- Event Management ---- */


static int live_event(const struct fake_event *e) {
    return e && e >= events && e < events + MAX_EVENTS && e->magic == OBJECT_MAGIC && live_context(e->ctx);
}

/* Flags: CU_EVENT_DEFAULT 0, CU_EVENT_BLOCKING_SYNC 1, CU_EVENT_DISABLE_TIMING 2, CU_EVENT_INTERPROCESS 4. */
CUresult cuEventCreate(CUevent *phEvent, unsigned int Flags) {
    CUresult rc;
    int i;
    pthread_mutex_lock(&lock);
    rc = check_current();
    if (!rc && (!phEvent || (Flags & ~7u))) rc = CUDA_ERROR_INVALID_VALUE;
    for (i = 0; !rc && i < MAX_EVENTS; i++) {
        if (live_event(&events[i])) continue;
        memset(&events[i], 0, sizeof events[i]);
        events[i].magic = OBJECT_MAGIC;
        events[i].ctx = current; /* an event belongs to the context current at its creation */
        *phEvent = &events[i];
        break;
    }
    if (!rc && i == MAX_EVENTS) rc = CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_unlock(&lock);
    return rc;
}

CUresult cuEventDestroy_v2(CUevent hEvent) {
    if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!live_event(hEvent)) return CUDA_ERROR_INVALID_HANDLE;
    hEvent->magic = 0;
    return CUDA_SUCCESS;
}

/* "Captures in hEvent the contents of hStream at the time of this call ... hStream and hEvent must
 * be from the same context otherwise CUDA_ERROR_INVALID_HANDLE is returned." */
CUresult cuEventRecord(CUevent hEvent, CUstream hStream) {
    struct fake_gpu_map *m;
    struct fake_gpu_context *s;
    CUresult rc = check_current();
    if (rc) return rc;
    if (!live_event(hEvent) || !default_stream(hStream) || hEvent->ctx != current) return CUDA_ERROR_INVALID_HANDLE;
    m = &devices[current->device].map;
    fake_gpu_lock(m);
    fake_gpu_advance(m->state, 0);
    if ((s = slot_of(current))) hEvent->mark = s->received_ns + s->outstanding_ns;
    else rc = CUDA_ERROR_INVALID_CONTEXT;
    fake_gpu_unlock(m);
    if (!rc) hEvent->recorded = 1;
    return rc;
}

/* "If cuEventRecord() has not been called on this event, the function returns CUDA_SUCCESS" (both). */
CUresult cuEventSynchronize(CUevent hEvent) {
    if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!live_event(hEvent)) return CUDA_ERROR_INVALID_HANDLE;
    return hEvent->recorded ? wait_for_work(hEvent->ctx, hEvent->mark) : CUDA_SUCCESS;
}

/* CUDA_SUCCESS once the work the event captured is done, CUDA_ERROR_NOT_READY until then. */
CUresult cuEventQuery(CUevent hEvent) {
    struct fake_gpu_map *m;
    struct fake_gpu_context *s;
    CUresult rc = CUDA_SUCCESS;
    if (!initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!live_event(hEvent)) return CUDA_ERROR_INVALID_HANDLE;
    if (!hEvent->recorded) return CUDA_SUCCESS;
    m = &devices[hEvent->ctx->device].map;
    fake_gpu_lock(m);
    fake_gpu_advance(m->state, 0);
    if (!(s = slot_of(hEvent->ctx))) rc = CUDA_ERROR_INVALID_CONTEXT;
    else if (s->received_ns < hEvent->mark) rc = CUDA_ERROR_NOT_READY;
    fake_gpu_unlock(m);
    return rc;
}

/* ---- Error Handling ---- */

struct error_text { CUresult code; const char *name, *text; };
static const struct error_text errors[] = {
    {CUDA_SUCCESS, "CUDA_SUCCESS", "no error"},
    {CUDA_ERROR_INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {CUDA_ERROR_DEVICE_UNAVAILABLE, "CUDA_ERROR_DEVICE_UNAVAILABLE", "CUDA-capable device(s) is/are busy or unavailable"},
    {CUDA_ERROR_NO_DEVICE, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {CUDA_ERROR_INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {CUDA_ERROR_INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {CUDA_ERROR_INVALID_CONTEXT, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {CUDA_ERROR_INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {CUDA_ERROR_NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {CUDA_ERROR_NOT_READY, "CUDA_ERROR_NOT_READY", "device not ready"},
    {CUDA_ERROR_SYSTEM_DRIVER_MISMATCH, "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
     "system has unsupported display driver / cuda driver combination"},
    {CUDA_ERROR_UNKNOWN, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

static const struct error_text *error_of(CUresult code) {
    size_t i;
    for (i = 0; i < sizeof errors / sizeof errors[0]; i++)
        if (errors[i].code == code) return &errors[i];
    return NULL;
}

/* "If the error code is not recognized, CUDA_ERROR_INVALID_VALUE will be returned and *pStr will
 * be set to the NULL value." (cuGetErrorName, cuGetErrorString) */
CUresult cuGetErrorName(CUresult error, const char **pStr) {
    const struct error_text *e = error_of(error);
    if (!pStr) return CUDA_ERROR_INVALID_VALUE;
    *pStr = e ? e->name : NULL;
    return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

CUresult cuGetErrorString(CUresult error, const char **pStr) {
    const struct error_text *e = error_of(error);
    if (!pStr) return CUDA_ERROR_INVALID_VALUE;
    *pStr = e ? e->text : NULL;
    return e ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

/* A process that exits normally gives its contexts back at once, as the driver does when the
 * process closes its device files; one killed is reaped by the next advance (fake_gpu.h). */
__attribute__((destructor)) static void release_contexts(void) {
    int i;
    if (!initialised) return;
    pthread_mutex_lock(&lock);
    for (i = 0; i < MAX_CONTEXTS; i++)
        if (contexts[i].magic == OBJECT_MAGIC) destroy_context(&contexts[i]);
    pthread_mutex_unlock(&lock);
}
