// sparselm CPU sparse matmul: a small worker pool where the caller never waits for a worker that has not started.
// Part of sparse_matmul.cpp (included once, in order); not a stand-alone header.
//
// Why not OpenMP: an OpenMP region ends in a barrier, so a call with T threads finishes only when all T threads
// got a core.  On a shared machine (more runnable threads than cores) one descheduled thread stalls the call
// for a scheduler time slice (ms), while the kernels take ~0.1-1 ms.  Here the rows are cut into chunks of
// equal bytes; the caller and the awake workers claim chunks from one atomic word, and the caller waits only
// for chunks already claimed.  A worker that wakes late finds nothing left and goes back to sleep.
//
// The claim word packs  gen (21 bits) | active workers (7) | chunk count (18) | next chunk (18): a worker's
// compare-and-swap succeeds only for the job it read, and only while chunks remain, which also proves the job
// descriptor it then reads is still that job's (the caller rewrites it only after every chunk is done).
#pragma once

#include <atomic>
#include <new>
#include <pthread.h>
#include <sched.h>

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

typedef void (*chunk_fn)(const void* job, int64_t chunk);

static const int POOL_MAX = 127;                 // workers (7 bits in the claim word)
static const int64_t POOL_MAX_CHUNKS = 1 << 17;  // < 2^18
static const int POOL_SPIN = 500;  // idle polls (~50 us: PAUSE is ~90 ns on Zen 4) before a worker sleeps;
// short, so an idle worker does not take the core from the torch ops that run between two sparse layers.

struct Pool {
    std::atomic<uint64_t> claim{0};
    std::atomic<int64_t> done{0};
    std::atomic<int> sleeping{0};
    chunk_fn fn = nullptr;
    const void* job = nullptr;
    int workers = 0;
    uint32_t gen = 0;
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;  // guards sleeping workers' wake-up
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    pthread_mutex_t busy = PTHREAD_MUTEX_INITIALIZER;  // one job at a time; others run inline
};
static Pool g_pool;

static inline uint64_t claim_pack(uint64_t gen, uint64_t active, uint64_t n, uint64_t next) {
    return (gen << 43) | (active << 36) | (n << 18) | next;
}
static inline uint32_t claim_gen(uint64_t v) { return (uint32_t)(v >> 43); }
static inline int claim_active(uint64_t v) { return (int)((v >> 36) & 127); }
static inline int64_t claim_n(uint64_t v) { return (int64_t)((v >> 18) & 0x3ffff); }
static inline int64_t claim_next(uint64_t v) { return (int64_t)(v & 0x3ffff); }

// Claim and run chunks of job `gen` until none is left (worker index `w`, -1 for the caller).
static void pool_work(uint32_t gen, int w) {
    for (;;) {
        uint64_t v = g_pool.claim.load(std::memory_order_acquire);
        if (claim_gen(v) != gen || claim_next(v) >= claim_n(v) || w >= claim_active(v)) return;
        if (!g_pool.claim.compare_exchange_weak(v, v + 1, std::memory_order_acq_rel)) continue;
        g_pool.fn(g_pool.job, claim_next(v));
        g_pool.done.fetch_add(1, std::memory_order_release);
    }
}

static void* pool_worker(void* arg) {
    int w = (int)(intptr_t)arg;
    uint32_t seen = claim_gen(g_pool.claim.load(std::memory_order_acquire));
    for (;;) {
        uint32_t gen = seen;
        for (int i = 0; i < POOL_SPIN && gen == seen; i++) {
            cpu_relax();
            gen = claim_gen(g_pool.claim.load(std::memory_order_acquire));
        }
        if (gen == seen) {
            pthread_mutex_lock(&g_pool.mu);
            g_pool.sleeping.fetch_add(1);
            while ((gen = claim_gen(g_pool.claim.load(std::memory_order_acquire))) == seen)
                pthread_cond_wait(&g_pool.cv, &g_pool.mu);
            g_pool.sleeping.fetch_sub(1);
            pthread_mutex_unlock(&g_pool.mu);
        }
        seen = gen;
        pool_work(gen, w);
    }
    return nullptr;
}

static void pool_after_fork_child(void) {  // the child has no workers: start afresh
    new (&g_pool) Pool();
}

// Grow the pool to `n` workers (never shrinks: idle workers sleep).  Returns the workers available.
static int pool_reserve(int n) {
    static int atfork = 0;
    if (!atfork) { pthread_atfork(nullptr, nullptr, pool_after_fork_child); atfork = 1; }
    if (n > POOL_MAX) n = POOL_MAX;
    while (g_pool.workers < n) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&t, &attr, pool_worker, (void*)(intptr_t)g_pool.workers);
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        g_pool.workers++;
    }
    return g_pool.workers;
}

// Run fn(job, c) for c in [0, chunks) on the caller plus up to threads-1 workers.
static void pool_run(chunk_fn fn, const void* job, int64_t chunks, int threads) {
    if (threads <= 1 || chunks <= 1 || pthread_mutex_trylock(&g_pool.busy) != 0) {
        for (int64_t c = 0; c < chunks; c++) fn(job, c);  // single thread, or another job holds the pool
        return;
    }
    int active = pool_reserve(threads - 1);
    if (chunks > POOL_MAX_CHUNKS) chunks = POOL_MAX_CHUNKS;  // callers keep chunks small; defensive
    uint32_t gen = (g_pool.gen + 1) & 0x1fffff;
    g_pool.gen = gen;
    g_pool.fn = fn;
    g_pool.job = job;
    g_pool.done.store(0, std::memory_order_relaxed);
    g_pool.claim.store(claim_pack(gen, (uint64_t)active, (uint64_t)chunks, 0), std::memory_order_release);
    if (g_pool.sleeping.load() > 0) {
        pthread_mutex_lock(&g_pool.mu);
        pthread_cond_broadcast(&g_pool.cv);
        pthread_mutex_unlock(&g_pool.mu);
    }
    pool_work(gen, -1);
    // Wait only for chunks that workers claimed and are still running; yield so a preempted one can finish.
    for (int i = 0; g_pool.done.load(std::memory_order_acquire) < chunks; i++) {
        if (i < 1000) cpu_relax(); else sched_yield();
    }
    pthread_mutex_unlock(&g_pool.busy);
}
