/* Counts the daemon's heap allocations (malloc, calloc, realloc) for scripts/bench-allocs.sh.
 * Preloaded into the daemon (LD_PRELOAD); on SIGUSR2 it writes "ALLOCS <count>" to stderr,
 * which the benchmark sends to the daemon's log. A development tool, never shipped. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static atomic_ulong allocs;
static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void (*real_free)(void *);

/* dlsym itself may calloc before real_calloc is known: served from this buffer, never freed. */
static char early[4096];
static size_t early_used;

static int is_early(void *p) { return (char *)p >= early && (char *)p < early + sizeof early; }

void *malloc(size_t n) {
    if (!real_malloc) real_malloc = dlsym(RTLD_NEXT, "malloc");
    atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed);
    return real_malloc(n);
}

void *calloc(size_t n, size_t size) {
    if (!real_calloc) {
        size_t want = n * size;
        if (early_used + want > sizeof early) return NULL;
        void *p = early + early_used;
        early_used += (want + 15) & ~(size_t)15;
        real_calloc = dlsym(RTLD_NEXT, "calloc");
        return p;
    }
    atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed);
    return real_calloc(n, size);
}

void *realloc(void *p, size_t n) {
    if (!real_realloc) real_realloc = dlsym(RTLD_NEXT, "realloc");
    atomic_fetch_add_explicit(&allocs, 1, memory_order_relaxed);
    return real_realloc(p, n);
}

void free(void *p) {
    if (is_early(p)) return;
    if (!real_free) real_free = dlsym(RTLD_NEXT, "free");
    real_free(p);
}

static void report(int sig) {
    (void)sig;
    char line[64];
    int len = snprintf(line, sizeof line, "ALLOCS %lu\n", atomic_load(&allocs));
    if (len > 0) (void)write(2, line, (size_t)len);
}

__attribute__((constructor)) static void init(void) { signal(SIGUSR2, report); }
