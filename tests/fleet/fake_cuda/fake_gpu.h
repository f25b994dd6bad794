/*
 * The state of one fake GPU, shared by the fake libcuda.so.1 (fake_cuda.c: the processes that
 * hold contexts) and the fake libnvidia-ml.so.1 (fake_nvml.c: who reads what they use).
 *
 * One file per GPU, <state root>/<uuid>/state, where the state root is /run/fake-nvidia/gpus
 * (FAKE_NVIDIA_GPU_STATE_DIR overrides it): beside the driver's loaded marker, on /run, so that
 * it is lost at reboot as a real GPU's contexts are.  Every process maps the file and changes it
 * only while it holds flock(LOCK_EX) on it.
 *
 * What it models: a GPU's throughput is one GPU-millisecond per millisecond of CLOCK_MONOTONIC,
 * divided equally among the contexts that have kernels outstanding (processor sharing: a context
 * whose work runs out leaves its share to the others).  Whichever process takes the lock first
 * advances the GPU's clock to "now" for every context (fake_gpu_advance), so a context's progress
 * is the GPU time it was given, never the CPU its process burnt, and two CPU cores or twenty
 * change nothing.  The device memory a context holds is counted against the GPU's total.
 *
 * A context whose process died without destroying it (SIGKILL) is reaped at the next advance
 * (kill(pid, 0) answering ESRCH), as the real driver frees a dead process's contexts; only by a
 * process of the same PID namespace, the only one for which that pid means that process.
 *
 * Per context the state keeps the GPU time received and a ring of (CPU time in µs, received)
 * snapshots, so that NVML can answer "what share of the GPU did this process get since
 * lastSeenTimeStamp" (nvmlDeviceGetProcessUtilization); the GPU keeps the same for its busy time
 * (nvmlDeviceGetUtilizationRates).
 */
#ifndef FAKE_GPU_H
#define FAKE_GPU_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define FAKE_GPU_MAGIC 0x46475055u /* "FGPU" */
#define FAKE_GPU_VERSION 2u
#define FAKE_GPU_MAX_CONTEXTS 64
#define FAKE_GPU_HISTORY 256                 /* snapshots per context: 25.6 s at the spacing below */
#define FAKE_GPU_SNAPSHOT_US 100000ULL       /* at most one ordinary snapshot per 100 ms */
#define FAKE_GPU_REAP_NS 100000000ULL        /* each process looks for dead ones every 100 ms at most */
#define FAKE_GPU_DEFAULT_ROOT "/run/fake-nvidia/gpus"

struct fake_gpu_snapshot {
    uint64_t at_us;    /* CLOCK_REALTIME, µs: NVML's "CPU timestamp" */
    uint64_t value_ns; /* GPU time received (context) or busy (GPU) by then */
};

struct fake_gpu_ring {
    uint32_t next, len;
    struct fake_gpu_snapshot at[FAKE_GPU_HISTORY];
};

struct fake_gpu_context {
    int32_t pid;            /* 0: a free slot */
    int32_t mps_server;     /* an MPS client's server pid; 0 for an ordinary context */
    uint64_t pid_ns;        /* the inode of its PID namespace: only a process in it can judge the pid */
    uint64_t id;            /* unique on this GPU, so a reused slot is never taken for the old one */
    uint64_t memory_bytes;  /* device memory it holds (cuMemAlloc) */
    uint64_t received_ns;   /* GPU time it has received */
    uint64_t outstanding_ns; /* GPU time its launched kernels still need */
    uint64_t created_us;
    struct fake_gpu_ring history;
};

struct fake_gpu_state {
    uint32_t magic, version;
    uint64_t clock_ns;      /* CLOCK_MONOTONIC of the last advance; 0 before the first */
    uint64_t busy_ns;       /* wall time with at least one kernel running */
    uint64_t next_id;
    struct fake_gpu_ring busy;
    struct fake_gpu_context contexts[FAKE_GPU_MAX_CONTEXTS];
};

struct fake_gpu_map {
    int fd;
    struct fake_gpu_state *state;
};

/* The driver's own footprint on a GPU (what an idle card reports as used): the fake NVML has
 * always reported it, and cuMemAlloc cannot have it. */
/* The first line of a small file (a version, a marker), without its newline; empty when unreadable. */
static inline void fake_gpu_first_line(const char *path, char *buf, size_t size) {
    FILE *f = fopen(path, "r");
    buf[0] = 0;
    if (!f) return;
    if (!fgets(buf, (int)size, f)) buf[0] = 0;
    buf[strcspn(buf, "\r\n")] = 0;
    fclose(f);
}

static inline uint64_t fake_gpu_footprint_bytes(unsigned index) {
    return (uint64_t)(512 + 64 * index) * 1024 * 1024;
}

static inline uint64_t fake_gpu_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static inline uint64_t fake_gpu_now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000ULL + (uint64_t)ts.tv_nsec / 1000;
}

static inline const char *fake_gpu_root(void) {
    const char *p = getenv("FAKE_NVIDIA_GPU_STATE_DIR");
    return p && *p ? p : FAKE_GPU_DEFAULT_ROOT;
}

/* A profile line's GPU, after "gpu=": <uuid>|<name>|<memory MiB>|<pci bus id>[|<mig 0/1>] (the
 * profile format, fake_nvml.c's header).  Splits `line` in place; returns the number of fields. */
static inline int fake_gpu_profile_fields(char *line, char *fields[5]) {
    char *save = NULL, *tok;
    int n = 0;
    for (tok = strtok_r(line, "|", &save); tok && n < 5; tok = strtok_r(NULL, "|", &save))
        fields[n++] = tok;
    return n;
}

static inline const char *fake_gpu_profile_path(void) {
    const char *p = getenv("FAKE_NVML_PROFILE");
    return p && *p ? p : "/etc/fake-nvml/profile";
}

/* A driver version's CUDA version (CUDA Toolkit release notes, "CUDA Toolkit and Corresponding
 * Driver Versions": 13.0 from 580.65.06, 12.4 from 550.54.14, 12.2 from 535.54.03); 0: unknown. */
static inline int fake_gpu_cuda_version(const char *driver) {
    if (!strncmp(driver, "580.", 4)) return 13000;
    if (!strncmp(driver, "550.", 4)) return 12040;
    if (!strncmp(driver, "535.", 4)) return 12020;
    return 0;
}

static inline const char *fake_gpu_loaded_marker(void) {
    const char *p = getenv("FAKE_NVML_LOADED_MARKER");
    return p && *p ? p : "/run/fake-nvidia/loaded";
}

static inline void fake_gpu_path(char *buf, size_t size, const char *uuid) {
    snprintf(buf, size, "%s/%s/state", fake_gpu_root(), uuid);
}

/* mkdir -p, each level made world-writable and sticky (like /tmp), so that any user's process can
 * open a context, as any user can open a GPU's device node (crw-rw-rw-); a level that exists is
 * left as it is. */
static inline void fake_gpu_mkdirs(const char *dir) {
    char path[512];
    size_t i;
    snprintf(path, sizeof path, "%s", dir);
    for (i = 1; path[i]; i++) {
        if (path[i] != '/') continue;
        path[i] = 0;
        if (mkdir(path, 01777) == 0) chmod(path, 01777);
        path[i] = '/';
    }
    if (mkdir(path, 01777) == 0) chmod(path, 01777);
}

/* Map the GPU's state.  create: make it when missing (libcuda); NVML only reads what exists.
 * Returns 0, or -1 with no map. */
static inline int fake_gpu_open(struct fake_gpu_map *m, const char *uuid, int create) {
    char path[512], dir[512];
    struct stat st;
    int fd;
    fake_gpu_path(path, sizeof path, uuid);
    m->fd = -1;
    m->state = NULL;
    fd = open(path, O_RDWR | O_CLOEXEC);
    if (fd < 0 && create && errno == ENOENT) {
        snprintf(dir, sizeof dir, "%s/%s", fake_gpu_root(), uuid);
        fake_gpu_mkdirs(dir);
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
        if (fd >= 0) fchmod(fd, 0666);
    }
    if (fd < 0) return -1;
    flock(fd, LOCK_EX);
    if (fstat(fd, &st) != 0 || ((size_t)st.st_size < sizeof(struct fake_gpu_state)
                                && ftruncate(fd, sizeof(struct fake_gpu_state)) != 0)) {
        flock(fd, LOCK_UN);
        close(fd);
        return -1;
    }
    m->state = mmap(NULL, sizeof(struct fake_gpu_state), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m->state == MAP_FAILED) {
        m->state = NULL;
        flock(fd, LOCK_UN);
        close(fd);
        return -1;
    }
    if (m->state->magic != FAKE_GPU_MAGIC || m->state->version != FAKE_GPU_VERSION) {
        memset(m->state, 0, sizeof *m->state);
        m->state->magic = FAKE_GPU_MAGIC;
        m->state->version = FAKE_GPU_VERSION;
        m->state->next_id = 1;
    }
    flock(fd, LOCK_UN);
    m->fd = fd;
    return 0;
}

static inline void fake_gpu_close(struct fake_gpu_map *m) {
    if (m->state) munmap(m->state, sizeof(struct fake_gpu_state));
    if (m->fd >= 0) close(m->fd);
    m->state = NULL;
    m->fd = -1;
}

/* Whether the map is still the file at the GPU's path (a long-lived reader's view, after someone
 * removed the state directory: a reboot of the node does, and so may a test). */
static inline int fake_gpu_current(const struct fake_gpu_map *m, const char *uuid) {
    char path[512];
    struct stat at_path, mapped;
    fake_gpu_path(path, sizeof path, uuid);
    return stat(path, &at_path) == 0 && fstat(m->fd, &mapped) == 0 && at_path.st_ino == mapped.st_ino
           && at_path.st_dev == mapped.st_dev;
}

static inline void fake_gpu_lock(struct fake_gpu_map *m) { flock(m->fd, LOCK_EX); }
static inline void fake_gpu_unlock(struct fake_gpu_map *m) { flock(m->fd, LOCK_UN); }

static inline void fake_gpu_ring_push(struct fake_gpu_ring *r, uint64_t at_us, uint64_t value, int force) {
    if (r->len) {
        struct fake_gpu_snapshot *last = &r->at[(r->next + FAKE_GPU_HISTORY - 1) % FAKE_GPU_HISTORY];
        if (at_us <= last->at_us) return;
        if (!force && at_us - last->at_us < FAKE_GPU_SNAPSHOT_US) return;
    }
    r->at[r->next].at_us = at_us;
    r->at[r->next].value_ns = value;
    r->next = (r->next + 1) % FAKE_GPU_HISTORY;
    if (r->len < FAKE_GPU_HISTORY) r->len++;
}

/* The value at CPU time at_us, interpolated linearly between snapshots; before the first
 * snapshot, `before` (a context's 0 when at_us precedes its creation, else the oldest value). */
static inline uint64_t fake_gpu_ring_value_at(const struct fake_gpu_ring *r, uint64_t at_us, uint64_t before) {
    uint32_t i;
    const struct fake_gpu_snapshot *prev = NULL;
    for (i = 0; i < r->len; i++) {
        const struct fake_gpu_snapshot *s = &r->at[(r->next + FAKE_GPU_HISTORY - r->len + i) % FAKE_GPU_HISTORY];
        if (s->at_us == at_us) return s->value_ns;
        if (s->at_us > at_us) {
            if (!prev) return before;
            return prev->value_ns + (uint64_t)((double)(s->value_ns - prev->value_ns)
                                               * (double)(at_us - prev->at_us) / (double)(s->at_us - prev->at_us));
        }
        prev = s;
    }
    return prev ? prev->value_ns : before;
}

static inline int fake_gpu_pid_alive(int32_t pid) {
    return pid > 0 && (kill(pid, 0) == 0 || errno != ESRCH);
}

/* The calling process's PID namespace (the inode of /proc/self/ns/pid; 0 when unknown). */
static inline uint64_t fake_gpu_pid_ns(void) {
    static uint64_t cached;
    struct stat st;
    if (!cached && stat("/proc/self/ns/pid", &st) == 0) cached = (uint64_t)st.st_ino;
    return cached;
}

/* A context whose process is gone is freed.  Only a process of the context's own PID namespace can
 * tell (elsewhere its pid means another process or none), so each judges only those. */
static inline void fake_gpu_reap(struct fake_gpu_state *s, uint64_t now_ns) {
    static uint64_t last_reap_ns; /* this process's: each namespace's processes reap their own */
    uint64_t ns = fake_gpu_pid_ns();
    int i;
    if (last_reap_ns && now_ns - last_reap_ns < FAKE_GPU_REAP_NS) return;
    last_reap_ns = now_ns;
    for (i = 0; i < FAKE_GPU_MAX_CONTEXTS; i++)
        if (s->contexts[i].pid && s->contexts[i].pid_ns == ns && !fake_gpu_pid_alive(s->contexts[i].pid))
            memset(&s->contexts[i], 0, sizeof s->contexts[i]);
}

/* Give out the GPU time between the last advance and now, equally among the contexts with work
 * outstanding; snapshot the counters (force: whatever the spacing, for an NVML sample's time).
 * Call with the lock held.  Returns the CPU time (µs) it advanced to. */
static inline uint64_t fake_gpu_advance(struct fake_gpu_state *s, int force_snapshot) {
    uint64_t now_ns = fake_gpu_now_ns(), now_us = fake_gpu_now_us();
    uint64_t dt = s->clock_ns && now_ns > s->clock_ns ? now_ns - s->clock_ns : 0;
    int i;
    s->clock_ns = now_ns;
    fake_gpu_reap(s, now_ns);
    while (dt > 0) {
        unsigned running = 0;
        uint64_t least = UINT64_MAX, share, step;
        for (i = 0; i < FAKE_GPU_MAX_CONTEXTS; i++) {
            struct fake_gpu_context *c = &s->contexts[i];
            if (c->pid && c->outstanding_ns) {
                running++;
                if (c->outstanding_ns < least) least = c->outstanding_ns;
            }
        }
        if (!running || !(share = dt / running)) break;
        /* Until the first kernel ends, each gets `step`; then the others share what is left. */
        step = least < share ? least : share;
        for (i = 0; i < FAKE_GPU_MAX_CONTEXTS; i++) {
            struct fake_gpu_context *c = &s->contexts[i];
            if (c->pid && c->outstanding_ns) {
                c->outstanding_ns -= step;
                c->received_ns += step;
            }
        }
        s->busy_ns += step * running;
        dt -= step * running;
    }
    for (i = 0; i < FAKE_GPU_MAX_CONTEXTS; i++)
        if (s->contexts[i].pid)
            fake_gpu_ring_push(&s->contexts[i].history, now_us, s->contexts[i].received_ns, force_snapshot);
    fake_gpu_ring_push(&s->busy, now_us, s->busy_ns, force_snapshot);
    return now_us;
}

/* The ring's oldest snapshot's value (0 when empty). */
static inline uint64_t fake_gpu_ring_oldest(const struct fake_gpu_ring *r, uint64_t *at_us) {
    const struct fake_gpu_snapshot *s = &r->at[(r->next + FAKE_GPU_HISTORY - r->len) % FAKE_GPU_HISTORY];
    if (at_us) *at_us = r->len ? s->at_us : 0;
    return r->len ? s->value_ns : 0;
}

static inline unsigned fake_gpu_running(const struct fake_gpu_state *s) {
    unsigned n = 0;
    int i;
    for (i = 0; i < FAKE_GPU_MAX_CONTEXTS; i++)
        if (s->contexts[i].pid && s->contexts[i].outstanding_ns) n++;
    return n;
}

static inline uint64_t fake_gpu_memory_held(const struct fake_gpu_state *s) {
    uint64_t total = 0;
    int i;
    for (i = 0; i < FAKE_GPU_MAX_CONTEXTS; i++)
        if (s->contexts[i].pid) total += s->contexts[i].memory_bytes;
    return total;
}

#endif
