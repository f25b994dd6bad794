/*
 * A stand-in for NVIDIA's libnvidia-ml.so.1, loaded by nvidia-ml-py (pynvml)
 * exactly as the real library is: dlopen("libnvidia-ml.so.1") and symbol
 * lookups.  It exists so that the project's NVML code path runs unchanged on
 * test-fleet nodes that have no GPU.
 *
 * Each node describes its GPUs in a profile file (default
 * /etc/fake-nvml/profile, overridable with FAKE_NVML_PROFILE):
 *
 *   driver_version=580.95.05
 *   cuda_version=13000
 *   gpu=<uuid>|<name>|<memory MiB>|<pci bus id>|<mig 0/1>
 *
 * The driver is "loaded" only while the marker /run/fake-nvidia/loaded exists
 * (FAKE_NVML_LOADED_MARKER overrides the path): the fleet's boot unit creates it
 * at boot when the driver package is installed, as a real kernel module is
 * loaded at boot after its install.  Without it every nvmlInit* answers
 * NVML_ERROR_DRIVER_NOT_LOADED, as the real library does with no kernel module
 * (nvml.h: "NVML_ERROR_DRIVER_NOT_LOADED = 9, NVIDIA driver is not loaded").
 * The driver version is the installed package's, /usr/lib/fake-nvidia/version
 * (FAKE_NVIDIA_VERSION_FILE overrides it), else the profile's.  When the marker
 * holds a version (the one loaded at boot) that differs from the installed one,
 * every nvmlInit* answers NVML_ERROR_LIB_RM_VERSION_MISMATCH: a driver
 * installed over a loaded one works only after a reboot.
 *
 * Persistence mode lives beside the marker, <marker dir>/persistence-<index>
 * (present: enabled), so that it is lost at reboot as on a real GPU; the
 * nvidia-smi and nvidia-persistenced stand-ins set it through this library.
 *
 * Settable state (compute mode) persists in the node's own filesystem under
 * FAKE_NVML_STATE_DIR (default /var/lib/fake-nvml): compute-mode-<index>.
 * A GPU is "lost" (NVML_ERROR_GPU_IS_LOST on every query) while the file
 * <state dir>/lost-<index> exists, which is how failure tests pull a GPU.
 * Temperature and power are derived deterministically from the index and the
 * clock, so samples vary but stay in realistic ranges; so is utilisation while
 * no process holds a context on the GPU.
 *
 * Processes come from the GPU's state that the fake libcuda.so.1 keeps
 * (tests/fleet/fake_cuda/fake_gpu.h: <state root>/<uuid>/state, read only when it
 * exists): the compute and MPS process lists with each process's device memory,
 * per-process utilisation from the GPU time each received, memory used (the
 * driver's footprint plus what the contexts hold) and, while any context exists,
 * the GPU's utilisation from its busy time over the last second.  Each query
 * advances the GPU's clock first (fake_gpu_advance), as any libcuda call does.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../fake_cuda/fake_gpu.h"

typedef int nvmlReturn_t;
#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_NO_PERMISSION 4
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_DRIVER_NOT_LOADED 9
#define NVML_ERROR_GPU_IS_LOST 15
#define NVML_ERROR_LIB_RM_VERSION_MISMATCH 18
#define NVML_ERROR_UNKNOWN 999
/* nvml.h: gpuInstanceId/computeInstanceId of a process on a GPU without MIG. */
#define NVML_VALUE_NOT_AVAILABLE_UINT 0xFFFFFFFFu

#define MAX_GPUS 16
#define FIELD 96

struct fake_gpu {
    unsigned index;
    char uuid[FIELD];
    char name[FIELD];
    unsigned long long memory_mib;
    char bus_id[32];
    unsigned mig;
};
typedef struct fake_gpu *nvmlDevice_t;

typedef struct { unsigned long long total, free, used; } nvmlMemory_t;
typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;
typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;

static struct fake_gpu gpus[MAX_GPUS];
static unsigned gpu_count;
static char driver_version[FIELD] = "580.95.05";
static int cuda_version = 13000;
static int initialised;

static const char *profile_path(void) { return fake_gpu_profile_path(); }

static const char *state_dir(void) {
    const char *p = getenv("FAKE_NVML_STATE_DIR");
    return p && *p ? p : "/var/lib/fake-nvml";
}

static const char *loaded_marker(void) { return fake_gpu_loaded_marker(); }

static const char *version_file(void) {
    const char *p = getenv("FAKE_NVIDIA_VERSION_FILE");
    return p && *p ? p : "/usr/lib/fake-nvidia/version";
}

/* <dir of the loaded marker>/<what>-<index>: state that a reboot clears. */
static void runtime_file(char *buf, size_t size, const char *what, unsigned index) {
    const char *marker = loaded_marker();
    const char *slash = strrchr(marker, '/');
    int dir_len = slash ? (int)(slash - marker) : 1;
    snprintf(buf, size, "%.*s/%s-%u", dir_len, slash ? marker : ".", what, index);
}

static void copy_field(char *dst, size_t size, const char *src) {
    snprintf(dst, size, "%s", src ? src : "");
}

/* The marker names the version loaded at boot, the version file the one installed. */
static int loaded_mismatch(void) {
    char loaded[FIELD], installed[FIELD];
    fake_gpu_first_line(loaded_marker(), loaded, sizeof loaded);
    fake_gpu_first_line(version_file(), installed, sizeof installed);
    return *loaded && *installed && strcmp(loaded, installed) != 0;
}

static nvmlReturn_t load_profile(void) {
    FILE *f = fopen(profile_path(), "r");
    char line[512];
    gpu_count = 0;
    /* A missing profile is a driver that is not loaded: the same answer the
     * real library gives on a host whose kernel module is absent. */
    if (!f) return NVML_ERROR_DRIVER_NOT_LOADED;
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!strncmp(line, "driver_version=", 15)) {
            copy_field(driver_version, sizeof driver_version, line + 15);
        } else if (!strncmp(line, "cuda_version=", 13)) {
            cuda_version = atoi(line + 13);
        } else if (!strncmp(line, "gpu=", 4) && gpu_count < MAX_GPUS) {
            struct fake_gpu *g = &gpus[gpu_count];
            char *fields[5] = {0};
            int n = fake_gpu_profile_fields(line + 4, fields);
            if (n < 4) continue;
            g->index = gpu_count;
            copy_field(g->uuid, sizeof g->uuid, fields[0]);
            copy_field(g->name, sizeof g->name, fields[1]);
            g->memory_mib = strtoull(fields[2], NULL, 10);
            copy_field(g->bus_id, sizeof g->bus_id, fields[3]);
            g->mig = n > 4 ? (unsigned)atoi(fields[4]) : 0;
            gpu_count++;
        }
    }
    fclose(f);
    /* The installed driver package's version wins over the profile's, and its CUDA
     * version follows the branch (fake_gpu_cuda_version). */
    if ((f = fopen(version_file(), "r"))) {
        if (fgets(line, sizeof line, f)) {
            line[strcspn(line, "\r\n")] = 0;
            if (*line) {
                copy_field(driver_version, sizeof driver_version, line);
                if (fake_gpu_cuda_version(line)) cuda_version = fake_gpu_cuda_version(line);
            }
        }
        fclose(f);
    }
    return NVML_SUCCESS;
}

static void state_file(char *buf, size_t size, const char *what, unsigned index) {
    snprintf(buf, size, "%s/%s-%u", state_dir(), what, index);
}

static int is_lost(const struct fake_gpu *g) {
    char path[512];
    state_file(path, sizeof path, "lost", g->index);
    return access(path, F_OK) == 0;
}

/* Every per-device call starts here: initialised, valid handle, not lost. */
static nvmlReturn_t check_device(nvmlDevice_t d) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (d < gpus || d >= gpus + gpu_count) return NVML_ERROR_INVALID_ARGUMENT;
    if (is_lost(d)) return NVML_ERROR_GPU_IS_LOST;
    return NVML_SUCCESS;
}

static nvmlReturn_t copy_out(char *dst, unsigned length, const char *src) {
    if (!dst) return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > length) return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(dst, src);
    return NVML_SUCCESS;
}

static void forget_gpu_states(void);

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    nvmlReturn_t rc;
    (void)flags;
    if (access(loaded_marker(), F_OK) != 0) return NVML_ERROR_DRIVER_NOT_LOADED;
    if (loaded_mismatch()) return NVML_ERROR_LIB_RM_VERSION_MISMATCH;
    forget_gpu_states();
    rc = load_profile();
    if (rc == NVML_SUCCESS) initialised = 1;
    return rc;
}
nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlShutdown(void) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    initialised = 0;
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t rc) {
    switch (rc) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
    default: return "Unknown Error";
    }
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    return copy_out(version, length, driver_version);
}
nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    char buf[FIELD + 8];
    snprintf(buf, sizeof buf, "12.%s", driver_version);
    return copy_out(version, length, buf);
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (!version) return NVML_ERROR_INVALID_ARGUMENT;
    *version = cuda_version;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version) {
    return nvmlSystemGetCudaDriverVersion(version);
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    *count = gpu_count;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (!device || index >= gpu_count) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &gpus[index];
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}
nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    unsigned i;
    if (!initialised) return NVML_ERROR_UNINITIALIZED;
    if (!uuid || !device) return NVML_ERROR_INVALID_ARGUMENT;
    for (i = 0; i < gpu_count; i++) {
        if (!strcmp(gpus[i].uuid, uuid)) {
            if (is_lost(&gpus[i])) return NVML_ERROR_GPU_IS_LOST;
            *device = &gpus[i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t d, unsigned int *index) {
    nvmlReturn_t rc = check_device(d);
    if (rc) return rc;
    *index = d->index;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *name, unsigned int length) {
    nvmlReturn_t rc = check_device(d);
    return rc ? rc : copy_out(name, length, d->name);
}
nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *uuid, unsigned int length) {
    nvmlReturn_t rc = check_device(d);
    return rc ? rc : copy_out(uuid, length, d->uuid);
}

/* The GPU's shared state (fake_gpu.h), mapped on first use; NULL while no process has opened a
 * context on it since boot. */
static struct fake_gpu_map maps[MAX_GPUS];
static int mapped[MAX_GPUS];

static struct fake_gpu_map *gpu_state(const struct fake_gpu *g) {
    if (mapped[g->index] && !fake_gpu_current(&maps[g->index], g->uuid)) {
        fake_gpu_close(&maps[g->index]);
        mapped[g->index] = 0;
    }
    if (!mapped[g->index] && fake_gpu_open(&maps[g->index], g->uuid, 0) == 0) mapped[g->index] = 1;
    return mapped[g->index] ? &maps[g->index] : NULL;
}

/* A new profile may put other GPUs at the same indices. */
static void forget_gpu_states(void) {
    unsigned i;
    for (i = 0; i < MAX_GPUS; i++) {
        if (mapped[i]) fake_gpu_close(&maps[i]);
        mapped[i] = 0;
    }
}

static unsigned long long memory_used_bytes(const struct fake_gpu *g) {
    /* A small, stable footprint per GPU (driver context), like an idle card, plus what the
     * processes' contexts hold. */
    unsigned long long used = fake_gpu_footprint_bytes(g->index);
    struct fake_gpu_map *m = gpu_state(g);
    if (m) {
        fake_gpu_lock(m);
        fake_gpu_advance(m->state, 0);
        used += fake_gpu_memory_held(m->state);
        fake_gpu_unlock(m);
    }
    return used;
}

nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t d, nvmlMemory_t *memory) {
    nvmlReturn_t rc = check_device(d);
    if (rc) return rc;
    if (!memory) return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = d->memory_mib * 1024 * 1024;
    memory->used = memory_used_bytes(d);
    memory->free = memory->total - memory->used;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *memory) {
    nvmlReturn_t rc = check_device(d);
    if (rc) return rc;
    if (!memory) return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = d->memory_mib * 1024 * 1024;
    memory->reserved = 0;
    memory->used = memory_used_bytes(d);
    memory->free = memory->total - memory->used;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t d, nvmlPciInfo_t *pci) {
    unsigned domain = 0, bus = 0, device = 0, function = 0;
    nvmlReturn_t rc = check_device(d);
    if (rc) return rc;
    if (!pci) return NVML_ERROR_INVALID_ARGUMENT;
    memset(pci, 0, sizeof *pci);
    sscanf(d->bus_id, "%x:%x:%x.%x", &domain, &bus, &device, &function);
    pci->domain = domain;
    pci->bus = bus;
    pci->device = device;
    pci->pciDeviceId = 0x233010de; /* device id << 16 | NVIDIA's vendor id */
    pci->pciSubSystemId = 0x16c110de;
    snprintf(pci->busId, sizeof pci->busId, "%s", d->bus_id);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04x:%02x:%02x.%x", domain, bus, device, function);
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t d, nvmlPciInfo_t *pci) { return nvmlDeviceGetPciInfo_v3(d, pci); }
nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t d, nvmlPciInfo_t *pci) { return nvmlDeviceGetPciInfo_v3(d, pci); }

nvmlReturn_t nvmlDeviceGetComputeMode(nvmlDevice_t d, int *mode) {
    char path[512];
    FILE *f;
    nvmlReturn_t rc = check_device(d);
    if (rc) return rc;
    if (!mode) return NVML_ERROR_INVALID_ARGUMENT;
    *mode = 0; /* NVML_COMPUTEMODE_DEFAULT until someone sets it */
    state_file(path, sizeof path, "compute-mode", d->index);
    if ((f = fopen(path, "r"))) {
        if (fscanf(f, "%d", mode) != 1) *mode = 0;
        fclose(f);
    }
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceSetComputeMode(nvmlDevice_t d, int mode) {
    char path[512];
    FILE *f;
    nvmlReturn_t rc = check_device(d);
    if (rc) return rc;
    /* 0 DEFAULT, 2 PROHIBITED, 3 EXCLUSIVE_PROCESS; 1 was removed from NVML. */
    if (mode != 0 && mode != 2 && mode != 3) return NVML_ERROR_INVALID_ARGUMENT;
    if (geteuid() != 0) return NVML_ERROR_NO_PERMISSION;
    mkdir(state_dir(), 0755);
    state_file(path, sizeof path, "compute-mode", d->index);
    if (!(f = fopen(path, "w"))) return NVML_ERROR_UNKNOWN;
    fprintf(f, "%d\n", mode);
    fclose(f);
    return NVML_SUCCESS;
}

/* nvml.h: nvmlDeviceGetPersistenceMode / nvmlDeviceSetPersistenceMode, with
 * NVML_FEATURE_DISABLED 0 / NVML_FEATURE_ENABLED 1; setting needs root. */
nvmlReturn_t nvmlDeviceGetPersistenceMode(nvmlDevice_t d, int *mode) {
    char path[512];
    nvmlReturn_t rc = check_device(d);
    if (rc) return rc;
    if (!mode) return NVML_ERROR_INVALID_ARGUMENT;
    runtime_file(path, sizeof path, "persistence", d->index);
    *mode = access(path, F_OK) == 0;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceSetPersistenceMode(nvmlDevice_t d, int mode) {
    char path[512];
    FILE *f;
    nvmlReturn_t rc = check_device(d);
    if (rc) return rc;
    if (mode != 0 && mode != 1) return NVML_ERROR_INVALID_ARGUMENT;
    if (geteuid() != 0) return NVML_ERROR_NO_PERMISSION;
    runtime_file(path, sizeof path, "persistence", d->index);
    if (!mode) {
        if (unlink(path) != 0 && errno != ENOENT) return NVML_ERROR_UNKNOWN;
        return NVML_SUCCESS;
    }
    if (!(f = fopen(path, "w"))) return NVML_ERROR_UNKNOWN;
    fputs("1\n", f);
    fclose(f);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t d, unsigned int *current, unsigned int *pending) {
    nvmlReturn_t rc = check_device(d);
    if (rc) return rc;
    if (!current || !pending) return NVML_ERROR_INVALID_ARGUMENT;
    *current = *pending = d->mig;
    return NVML_SUCCESS;
}

static unsigned wave(const struct fake_gpu *g, unsigned spread) {
    return (unsigned)((time(NULL) / 60 + g->index * 7) % spread);
}

/* nvml.h, nvmlUtilization_t.gpu: "Percent of time over the past sample period during which one
 * or more kernels was executing on the GPU" (the period is 1/6 s to 1 s by product; 1 s here).
 * Returns -1 while no process holds a context on the GPU. */
static int busy_percent(const struct fake_gpu *g) {
    struct fake_gpu_map *m = gpu_state(g);
    uint64_t now_us, from_us, oldest_us, busy_then;
    int percent = -1, i;
    if (!m) return -1;
    fake_gpu_lock(m);
    now_us = fake_gpu_advance(m->state, 0);
    for (i = 0; i < FAKE_GPU_MAX_CONTEXTS; i++)
        if (m->state->contexts[i].pid) break;
    if (i < FAKE_GPU_MAX_CONTEXTS) {
        busy_then = fake_gpu_ring_oldest(&m->state->busy, &oldest_us);
        from_us = now_us - 1000000ULL > oldest_us ? now_us - 1000000ULL : oldest_us;
        busy_then = fake_gpu_ring_value_at(&m->state->busy, from_us, busy_then);
        percent = now_us > from_us ? (int)((m->state->busy_ns - busy_then) / 10ULL / (now_us - from_us)) : 0;
        if (percent > 100) percent = 100;
    }
    fake_gpu_unlock(m);
    return percent;
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) {
    int busy;
    nvmlReturn_t rc = check_device(d);
    if (rc) return rc;
    if (!u) return NVML_ERROR_INVALID_ARGUMENT;
    busy = busy_percent(d);
    u->gpu = busy >= 0 ? (unsigned)busy : 20 + wave(d, 70);
    u->memory = 10 + wave(d, 50); /* memory bandwidth is not modelled */
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned int *temp) {
    nvmlReturn_t rc = check_device(d);
    if (rc) return rc;
    if (sensor != 0 || !temp) return NVML_ERROR_INVALID_ARGUMENT; /* only NVML_TEMPERATURE_GPU */
    *temp = 35 + wave(d, 40);
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned int *milliwatts) {
    nvmlReturn_t rc = check_device(d);
    if (rc) return rc;
    if (!milliwatts) return NVML_ERROR_INVALID_ARGUMENT;
    *milliwatts = 60000 + wave(d, 240) * 1000;
    return NVML_SUCCESS;
}

/* ---- Processes (nvml.h, "Device Queries") ---- */

/* nvmlProcessInfo_v2_t, which nvml.h also names nvmlProcessInfo_t (v3). */
typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil, memUtil, encUtil, decUtil;
} nvmlProcessUtilizationSample_t;

enum process_kind { ORDINARY, MPS_CLIENT };

/* One entry per process (its contexts summed) of the kind asked: ordinary contexts (an MPS server
 * is one) or MPS clients.  Returns the number of processes; fills at most `room`. */
static unsigned list_processes(const struct fake_gpu *g, enum process_kind kind, nvmlProcessInfo_t *out, unsigned room) {
    struct fake_gpu_map *m = gpu_state(g);
    nvmlProcessInfo_t found[FAKE_GPU_MAX_CONTEXTS];
    unsigned n = 0, i, j;
    if (!m) return 0;
    fake_gpu_lock(m);
    fake_gpu_advance(m->state, 0);
    for (i = 0; i < FAKE_GPU_MAX_CONTEXTS; i++) {
        const struct fake_gpu_context *c = &m->state->contexts[i];
        if (!c->pid || (kind == MPS_CLIENT) != (c->mps_server != 0)) continue;
        for (j = 0; j < n && found[j].pid != (unsigned)c->pid; j++) {}
        if (j == n) {
            found[n].pid = (unsigned)c->pid;
            found[n].usedGpuMemory = 0;
            found[n].gpuInstanceId = found[n].computeInstanceId = NVML_VALUE_NOT_AVAILABLE_UINT;
            n++;
        }
        found[j].usedGpuMemory += c->memory_bytes;
    }
    fake_gpu_unlock(m);
    for (i = 0; i < n && i < room && out; i++) out[i] = found[i];
    return n;
}

/* nvmlDeviceGetComputeRunningProcesses_v3: "infoCount: Reference in which to provide the infos
 * array size, and to return the number of returned elements"; NVML_ERROR_INSUFFICIENT_SIZE "if
 * infoCount indicates that the infos array is too small, infoCount will contain minimal amount
 * of space necessary for the call to complete"; with none running and *infoCount 0, success.
 * pynvml calls it first with a count of 0 and no array, then with twice the count plus 5. */
static nvmlReturn_t running_processes(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos, enum process_kind kind) {
    unsigned n;
    nvmlReturn_t rc = check_device(d);
    if (rc) return rc;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    n = list_processes(d, kind, infos, infos ? *count : 0);
    if (n > *count || (n && !infos)) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    *count = n;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos) {
    return running_processes(d, count, infos, ORDINARY);
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos) {
    return running_processes(d, count, infos, ORDINARY); /* v2's struct is v3's */
}
/* "Get information about processes with a MPS compute context on a device" (clients only; the
 * server is in the compute list). */
nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos) {
    return running_processes(d, count, infos, MPS_CLIENT);
}
nvmlReturn_t nvmlDeviceGetMPSComputeRunningProcesses_v2(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos) {
    return running_processes(d, count, infos, MPS_CLIENT);
}

/* The GPU time (ns) pid's contexts received between since_us and now (their counters now minus
 * their counters then, interpolated in each context's snapshots; 0 before a context existed). */
static uint64_t received_since(const struct fake_gpu_state *s, int32_t pid, uint64_t since_us) {
    uint64_t total = 0, oldest_us, before;
    int i;
    for (i = 0; i < FAKE_GPU_MAX_CONTEXTS; i++) {
        const struct fake_gpu_context *c = &s->contexts[i];
        if (c->pid != pid) continue;
        before = fake_gpu_ring_oldest(&c->history, &oldest_us);
        if (since_us < c->created_us) before = 0;
        total += c->received_ns - fake_gpu_ring_value_at(&c->history, since_us, before);
    }
    return total;
}

/* nvmlDeviceGetProcessUtilization(device, utilization, processSamplesCount, lastSeenTimeStamp):
 * one sample per process that received GPU time since lastSeenTimeStamp (a CPU timestamp in µs),
 * timeStamp = now, smUtil = the percentage of the GPU's time it received over
 * [lastSeenTimeStamp, timeStamp], rounded; memUtil/encUtil/decUtil 0 (not modelled).  nvml.h:
 * "first determine the size of buffer required ... by invoking the function with utilization set
 * to NULL"; NVML_ERROR_INSUFFICIENT_SIZE when the buffer is too small (the count then says how
 * many); NVML_ERROR_NOT_FOUND "if sample entries are not found".  Each call snapshots every
 * context at its timeStamp, so the next call, given that timeStamp, measures from an exact point. */
nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t d, nvmlProcessUtilizationSample_t *utilization,
                                             unsigned int *count, unsigned long long lastSeen) {
    nvmlProcessUtilizationSample_t found[FAKE_GPU_MAX_CONTEXTS];
    struct fake_gpu_map *m;
    uint64_t now_us;
    unsigned n = 0, i, j;
    nvmlReturn_t rc = check_device(d);
    if (rc) return rc;
    if (!count) return NVML_ERROR_INVALID_ARGUMENT;
    if ((m = gpu_state(d))) {
        fake_gpu_lock(m);
        now_us = fake_gpu_advance(m->state, 1);
        for (i = 0; now_us > lastSeen && i < FAKE_GPU_MAX_CONTEXTS; i++) {
            int32_t pid = m->state->contexts[i].pid;
            uint64_t got;
            if (!pid) continue;
            for (j = 0; j < n && found[j].pid != (unsigned)pid; j++) {}
            if (j < n || !(got = received_since(m->state, pid, lastSeen))) continue;
            memset(&found[n], 0, sizeof found[n]);
            found[n].pid = (unsigned)pid;
            found[n].timeStamp = now_us;
            found[n].smUtil = (unsigned)((got / 10ULL + (now_us - lastSeen) / 2) / (now_us - lastSeen));
            if (found[n].smUtil > 100) found[n].smUtil = 100;
            n++;
        }
        fake_gpu_unlock(m);
    }
    if (!n) {
        *count = 0;
        return NVML_ERROR_NOT_FOUND;
    }
    if (!utilization || *count < n) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    memcpy(utilization, found, n * sizeof found[0]);
    *count = n;
    return NVML_SUCCESS;
}
