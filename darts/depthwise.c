/* The weight gradient of a depthwise 2-d convolution on the CPU, float32, channels-last.
 *
 * dW[c, i, j] = sum over n, oh, ow of  g[n, oh, ow, c] * x[n, oh*s + i*d - p, ow*s + j*d - p, c]
 *
 * with x (N, H, W, C) and g (N, OH, OW, C) dense in that order (PyTorch's channels_last), taps
 * outside the input being zero padding. oneDNN's kernel for this is fast only for undilated
 * 3x3 kernels at stride 1; the 5x5, dilated and strided ones of the DARTS search space take
 * 5-20 ms each at the supernet's sizes, several seconds per search step (see darts/kernels.py).
 *
 * Here each thread takes a share of the images and keeps its own sums, one vector of
 * channels per tap; the caller's thread adds them up. Channels are the innermost loop, in
 * blocks of BLOCK whose running sums stay in registers while a tap sweeps an output row.
 * Sums are formed per output row and then added to the thread's total, which keeps the
 * float32 rounding error of the 2^16-term sums small.
 *
 * Built by darts/kernels.py with the system's C compiler; no PyTorch headers are needed.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define MAX_KW 8 /* wider kernels are left to PyTorch (darts/kernels.py) */

typedef struct {
    const float *x, *g;
    float *out; /* this thread's sums, (kh * kw * C) */
    long n0, n1, H, W, C, OH, OW, kh, kw, stride, pad, dil;
} job_t;

/* Vectors of 8 and 4 floats (GCC and Clang vector extensions; without AVX the compiler
 * splits them), loaded from and stored to any float address. */
typedef float v8 __attribute__((vector_size(32), aligned(4)));
typedef float v4 __attribute__((vector_size(16), aligned(4)));
typedef float v1;

/* One kernel row i of one output row: every tap j of the row, for the NV * sizeof(VT) / 4
 * channels from c0. Where all taps of the row fall inside the input (the interior of the output
 * row), the output gradient is loaded once for all of them, and the KW running sums are
 * independent chains of multiply-adds held in registers (KW a constant: 3 and 5, the DARTS
 * kernels; KW 0 is any width up to MAX_KW, slower). The few outputs near the borders take
 * the taps one by one. */
#define SWEEP(VT, NV, KW)                                                                      \
    static inline void sweep_##VT##_##NV##_##KW(const float *grow, const float *xrow,          \
                                                float *acc, long c0, const job_t *t) {         \
        const long C = t->C, s = t->stride, kw = KW ? KW : t->kw, d = t->dil;                  \
        const long L = sizeof(VT) / sizeof(float);                                             \
        VT v[KW ? KW : MAX_KW][NV];                                                            \
        for (long j = 0; j < kw; j++)                                                          \
            for (int b = 0; b < NV; b++) v[j][b] = (VT){0};                                    \
        /* interior: 0 <= ow*s - p and ow*s + (kw-1)*d - p <= W - 1 */                          \
        long lo = (t->pad + s - 1) / s, last = t->W - 1 - (kw - 1) * d + t->pad;               \
        long hi = last >= 0 ? last / s + 1 : 0;                                                \
        if (hi > t->OW) hi = t->OW;                                                            \
        if (lo > hi) lo = hi;                                                                  \
        for (long ow = lo; ow < hi; ow++) {                                                    \
            const float *gp = grow + ow * C + c0;                                              \
            const float *xp = xrow + (ow * s - t->pad) * C + c0;                               \
            VT gv[NV];                                                                         \
            for (int b = 0; b < NV; b++) gv[b] = *(const VT *)(gp + b * L);                    \
            for (long j = 0; j < kw; j++)                                                      \
                for (int b = 0; b < NV; b++)                                                   \
                    v[j][b] += gv[b] * *(const VT *)(xp + j * d * C + b * L);                  \
        }                                                                                      \
        for (long ow = 0; ow < t->OW; ow++) {                                                  \
            if (ow == lo) ow = hi;                                                             \
            if (ow >= t->OW) break;                                                            \
            const float *gp = grow + ow * C + c0;                                              \
            for (long j = 0; j < kw; j++) {                                                    \
                const long iw = ow * s + j * d - t->pad;                                       \
                if (iw < 0 || iw >= t->W) continue;                                            \
                const float *xp = xrow + iw * C + c0;                                          \
                for (int b = 0; b < NV; b++)                                                   \
                    v[j][b] += *(const VT *)(gp + b * L) * *(const VT *)(xp + b * L);          \
            }                                                                                  \
        }                                                                                      \
        for (long j = 0; j < kw; j++)                                                          \
            for (int b = 0; b < NV; b++) *(VT *)(acc + j * C + c0 + b * L) += v[j][b];         \
    }
#define SWEEPS(KW) SWEEP(v8, 2, KW) SWEEP(v8, 1, KW) SWEEP(v4, 1, KW) SWEEP(v1, 1, KW)
SWEEPS(3)
SWEEPS(5)
SWEEPS(0)

#define ROW(KW)                                                                                \
    do {                                                                                       \
        long c0 = 0;                                                                           \
        for (; c0 + 16 <= C; c0 += 16) sweep_v8_2_##KW(grow, xrow, acc, c0, t);                 \
        for (; c0 + 8 <= C; c0 += 8) sweep_v8_1_##KW(grow, xrow, acc, c0, t);                   \
        for (; c0 + 4 <= C; c0 += 4) sweep_v4_1_##KW(grow, xrow, acc, c0, t);                   \
        for (; c0 < C; c0++) sweep_v1_1_##KW(grow, xrow, acc, c0, t);                           \
    } while (0)

static void *run(void *arg) {
    const job_t *t = (const job_t *)arg;
    const long C = t->C, K = t->kh * t->kw;
    float *row = (float *)calloc((size_t)(K * C), sizeof(float));
    if (!row) return (void *)1;
    memset(t->out, 0, sizeof(float) * (size_t)(K * C));
    for (long n = t->n0; n < t->n1; n++) {
        for (long oh = 0; oh < t->OH; oh++) {
            const float *grow = t->g + ((n * t->OH + oh) * t->OW) * C;
            memset(row, 0, sizeof(float) * (size_t)(K * C));
            for (long i = 0; i < t->kh; i++) {
                const long ih = oh * t->stride + i * t->dil - t->pad;
                if (ih < 0 || ih >= t->H) continue;
                const float *xrow = t->x + ((n * t->H + ih) * t->W) * C;
                float *acc = row + i * t->kw * C;
                if (t->kw == 3) ROW(3);
                else if (t->kw == 5) ROW(5);
                else ROW(0);
            }
            for (long k = 0; k < K * C; k++) t->out[k] += row[k];
        }
    }
    free(row);
    return NULL;
}

/* Returns 0 on success. out: (C, kh, kw) dense, as PyTorch's (C, 1, kh, kw) weight. */
int depthwise_weight_grad(const float *x, const float *g, float *out, long N, long H, long W,
                          long C, long OH, long OW, long kh, long kw, long stride, long pad,
                          long dil, int threads) {
    if (kw < 1 || kw > MAX_KW) return 2;
    if (threads < 1) threads = 1;
    if (threads > N) threads = (int)N;
    const long K = kh * kw;
    float *sums = (float *)malloc(sizeof(float) * (size_t)(threads * K * C));
    job_t *jobs = (job_t *)malloc(sizeof(job_t) * (size_t)threads);
    pthread_t *ids = (pthread_t *)malloc(sizeof(pthread_t) * (size_t)threads);
    if (!sums || !jobs || !ids) {
        free(sums); free(jobs); free(ids);
        return 1;
    }
    int status = 0, started = 0;
    for (int t = 0; t < threads; t++) {
        job_t j = {x, g, sums + t * K * C, N * t / threads, N * (t + 1) / threads,
                   H, W, C, OH, OW, kh, kw, stride, pad, dil};
        jobs[t] = j;
    }
    /* thread 0's share runs on the caller's thread */
    for (int t = 1; t < threads; t++, started++)
        if (pthread_create(&ids[t], NULL, run, &jobs[t]) != 0) break;
    if (run(&jobs[0]) != NULL) status = 1;
    for (int t = 1; t <= started; t++) {
        void *r = NULL;
        pthread_join(ids[t], &r);
        if (r != NULL) status = 1;
    }
    for (int t = started + 1; t < threads; t++) /* threads that could not start: run here */
        if (run(&jobs[t]) != NULL) status = 1;
    if (status == 0) {
        /* (kh, kw, C) sums -> (C, kh, kw) */
        for (long c = 0; c < C; c++)
            for (long k = 0; k < K; k++) {
                float s = 0.0f;
                for (int t = 0; t < threads; t++) s += sums[(t * K + k) * C + c];
                out[c * K + k] = s;
            }
    }
    free(sums); free(jobs); free(ids);
    return status;
}
