/* CPU kernels of our own, float32, channels-last (PyTorch's NHWC memory format), for what
 * PyTorch does slowly on a CPU at the DARTS supernet's sizes (darts/kernels.py says which and
 * by how much):
 *   depthwise_weight_grad  the weight gradient of a depthwise convolution;
 *   bn_forward/backward    BatchNorm in training mode (bn_relu_apply: a forward's ReLU output
 *                          again, for a backward that did not keep it);
 *   mix_forward/backward   the terms that all edges leaving a cell state share;
 *   nbn_forward/backward   a cell node's sum of mixed-op BatchNorms;
 *   dw_relu_forward/backward  the depthwise convolutions of relu(state) on all its edges;
 *   pool_bn_forward/backward  a state's max and average pooling, each with its BatchNorm.
 *
 * Threads: OpenMP. PyTorch's Linux builds run their own parallel work on libgomp, and this
 * library, built with -fopenmp, binds to the libgomp already loaded by PyTorch (the same
 * soname), so both share one pool of threads. With threads of our own, PyTorch's idle
 * workers, which spin for a while after each parallel region, took the cores from them
 * (measured: ~40 % of the time stolen). Without OpenMP the kernels run on one thread.
 *
 * Built by darts/kernels.py with the system's C compiler; no PyTorch headers are needed.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#define THREAD_ID omp_get_thread_num()
#define THREADS omp_get_num_threads()
#else
#define THREAD_ID 0
#define THREADS 1
#endif

/* ---------------------------------------------------------------------------------------------
 * The weight gradient of a depthwise 2-d convolution:
 *
 * dW[c, i, j] = sum over n, oh, ow of  g[n, oh, ow, c] * x[n, oh*s + i*d - p, ow*s + j*d - p, c]
 *
 * with x (N, H, W, C) and g (N, OH, OW, C), taps outside the input being zero padding.
 * oneDNN's kernel for this is fast only for undilated 3x3 kernels at stride 1; the 5x5,
 * dilated and strided ones of the DARTS search space take 3-20 ms each at the supernet's
 * sizes, about 3 s of a search step on 2 cores.
 *
 * Each thread takes a share of the images and keeps its own sums; they are added up at the
 * end. Channels are the innermost loop, in blocks whose running sums stay in registers while
 * the taps of a kernel row sweep an output row. Sums are formed per output row and then
 * added to the thread's total, which keeps the float32 rounding error of the 2^16-term sums
 * small.
 */
#define MAX_KW 8 /* wider kernels are left to PyTorch (darts/kernels.py) */

typedef struct {
    const float *x, *g;
    long N, H, W, C, OH, OW, kh, kw, stride, pad, dil;
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

/* The images [n0, n1) into out (kh * kw * C); 0 on success. */
static int run(const job_t *t, long n0, long n1, float *out) {
    const long C = t->C, K = t->kh * t->kw;
    float *row = (float *)calloc((size_t)(K * C), sizeof(float));
    if (!row) return 1;
    memset(out, 0, sizeof(float) * (size_t)(K * C));
    for (long n = n0; n < n1; n++) {
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
            for (long k = 0; k < K * C; k++) out[k] += row[k];
        }
    }
    free(row);
    return 0;
}

/* Returns 0 on success. out: (C, kh, kw) dense, as PyTorch's (C, 1, kh, kw) weight. */
int depthwise_weight_grad(const float *x, const float *g, float *out, long N, long H, long W,
                          long C, long OH, long OW, long kh, long kw, long stride, long pad,
                          long dil, int threads) {
    if (kw < 1 || kw > MAX_KW) return 2;
    if (threads < 1) threads = 1;
    if (threads > N) threads = (int)N;
    const long K = kh * kw;
    const job_t job = {x, g, N, H, W, C, OH, OW, kh, kw, stride, pad, dil};
    float *sums = (float *)malloc(sizeof(float) * (size_t)(threads * K * C));
    if (!sums) return 1;
    int failed = 0, used = 1;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        const int t = THREAD_ID, nt = THREADS;
        if (t == 0) used = nt;
        failed |= run(&job, N * t / nt, N * (t + 1) / nt, sums + t * K * C);
    }
    if (!failed) {
        /* (kh, kw, C) sums -> (C, kh, kw) */
        for (long c = 0; c < C; c++)
            for (long k = 0; k < K; k++) {
                float v = 0.0f;
                for (int t = 0; t < used; t++) v += sums[(t * K + k) * C + c];
                out[c * K + k] = v;
            }
    }
    free(sums);
    return failed;
}

/* ---------------------------------------------------------------------------------------------
 * BatchNorm in training mode, float32, channels-last: x is (M, C) with M = N * H * W rows.
 *
 * At the supernet's first-stage size (64 x 16 x 32 x 32), where one pass over the tensor takes
 * about 0.25 ms, PyTorch's channels-last CPU BatchNorm takes about 0.9 ms forward and 1.6 ms
 * backward, and torch.var_mean (the statistics of the shared pooling outputs) 11 ms. Here:
 *   forward:  one pass for the per-channel sums, one to normalise;
 *   backward: one pass for the sums of dy and dy * x, one to form dx.
 * Between the two passes the threads meet at a barrier while one of them turns the sums into
 * per-channel constants. Sums run in float32 over chunks of rows and in double across them.
 *
 * Two fusions save whole passes over memory in the supernet (kernels.py says where):
 *   acc:  y = acc + BN(x), the BatchNorm's output added to a running sum in the same pass
 *         (a mixed op's sum of eq. 2 and a node's sum of its edges);
 *   relu: y = max(0, BN(x)) (a separable conv's inner BatchNorm and ReLU); its backward finds
 *         ReLU's mask again from x and the forward's constants (y = k1 * x + k3 > 0), so
 *         neither the BatchNorm's output nor a mask is kept.
 */

typedef float v8f __attribute__((vector_size(32), aligned(4)));
typedef int v8i __attribute__((vector_size(32), aligned(4)));

/* sums[0:C] += a over the rows [m0, m1), sums[C:2C] += a * (b ? b : a). With `mk` (ReLU's
 * mask, a backward's a = dy and b = x): a counts only where mk[c] * b + mk[C + c] > 0. The rows
 * go in chunks of about 16 KiB (in cache while each block of 8 channels sweeps them), summed in
 * float32 registers within a chunk and in double across chunks. */
static void bn_sums(const float *a, const float *b, long m0, long m1, long C, double *sums,
                    const float *mk) {
    long rows = 4096 / C;
    if (rows < 1) rows = 1;
    for (long r0 = m0; r0 < m1; r0 += rows) {
        const long r1 = r0 + rows < m1 ? r0 + rows : m1;
        long c0 = 0;
        for (; c0 + 8 <= C; c0 += 8) {
            v8f s = {0}, q = {0};
            if (mk) {
                const v8f k1 = *(const v8f *)(mk + c0), k3 = *(const v8f *)(mk + C + c0);
                for (long m = r0; m < r1; m++) {
                    const v8f bv = *(const v8f *)(b + m * C + c0);
                    const v8f av = (v8f)((v8i)*(const v8f *)(a + m * C + c0)
                                         & (k1 * bv + k3 > 0));
                    s += av;
                    q += av * bv;
                }
            } else {
                for (long m = r0; m < r1; m++) {
                    v8f av = *(const v8f *)(a + m * C + c0);
                    s += av;
                    q += av * (b ? *(const v8f *)(b + m * C + c0) : av);
                }
            }
            for (int c = 0; c < 8; c++) {
                sums[c0 + c] += s[c];
                sums[C + c0 + c] += q[c];
            }
        }
        for (; c0 < C; c0++) {
            float s = 0, q = 0;
            for (long m = r0; m < r1; m++) {
                float av = a[m * C + c0];
                if (mk && !(mk[c0] * b[m * C + c0] + mk[C + c0] > 0)) av = 0;
                s += av;
                q += av * (b ? b[m * C + c0] : av);
            }
            sums[c0] += s;
            sums[C + c0] += q;
        }
    }
}

/* How a pass writes its output (NULL / 0: not used) */
typedef struct {
    const float *acc; /* out = acc + ... */
    int relu;         /* out = max(0, ...) */
    const float *mk;  /* a backward's ReLU mask (see bn_sums): a -> a * (mk[c] * b + mk[C+c] > 0) */
} bn_out_t;

/* out = k1 * a + k2 * b + k3 per channel over the rows [m0, m1) (k2 NULL: no b term), as
 * `o` says */
static void bn_apply(const float *a, const float *b, float *out, long m0, long m1, long C,
                     const float *restrict k1, const float *restrict k2,
                     const float *restrict k3, const bn_out_t *o) {
    const float *restrict mk = o->mk;
    for (long m = m0; m < m1; m++) {
        const float *restrict ar = a + m * C;
        float *restrict y = out + m * C;
        if (k2 && mk) {
            const float *restrict br = b + m * C;
            for (long c = 0; c < C; c++)
                y[c] = k1[c] * (mk[c] * br[c] + mk[C + c] > 0 ? ar[c] : 0.0f) + k2[c] * br[c]
                       + k3[c];
        } else if (k2) {
            const float *restrict br = b + m * C;
            for (long c = 0; c < C; c++) y[c] = k1[c] * ar[c] + k2[c] * br[c] + k3[c];
        } else if (o->acc) {
            const float *restrict acc = o->acc + m * C;
            for (long c = 0; c < C; c++) y[c] = acc[c] + (k1[c] * ar[c] + k3[c]);
        } else if (o->relu) {
            for (long c = 0; c < C; c++) {
                const float v = k1[c] * ar[c] + k3[c];
                y[c] = v > 0 ? v : 0.0f;
            }
        } else {
            for (long c = 0; c < C; c++) y[c] = k1[c] * ar[c] + k3[c];
        }
    }
}

/* The two passes of a BatchNorm direction over x or dy (M, C): every thread sums its share of
 * the rows, one thread turns the sums into per-channel constants k (finish), every thread
 * applies them to its share. 0 on success. */
typedef void (*finish_t)(const double *sums, long M, long C, void *state, float *k1, float *k2,
                         float *k3);

static int bn_two_passes(const float *a, const float *b, float *out, long M, long C, int with_b,
                         finish_t finish, void *state, const bn_out_t *o, int threads) {
    if (threads < 1) threads = 1;
    if (threads > M) threads = M > 0 ? (int)M : 1;
    double *sums = (double *)calloc((size_t)(2 * C * threads), sizeof(double));
    float *k = (float *)malloc(sizeof(float) * (size_t)(3 * C));
    if (!sums || !k) {
        free(sums); free(k);
        return 1;
    }
    float *k1 = k, *k2 = with_b ? k + C : NULL, *k3 = k + 2 * C;
#pragma omp parallel num_threads(threads)
    {
        const int t = THREAD_ID, nt = THREADS;
        const long m0 = M * t / nt, m1 = M * (t + 1) / nt;
        bn_sums(a, with_b ? b : NULL, m0, m1, C, sums + 2 * C * t, o->mk);
#pragma omp barrier
#pragma omp single
        {
            for (int u = 1; u < nt; u++)
                for (long c = 0; c < 2 * C; c++) sums[c] += sums[2 * C * u + c];
            finish(sums, M, C, state, k1, k2, k3);
        } /* the end of single waits for it */
        bn_apply(a, b, out, m0, m1, C, k1, k2, k3, o);
    }
    free(sums); free(k);
    return 0;
}

typedef struct {
    const float *weight, *bias;
    double eps;
    float *mean, *invstd, *var; /* batch mean, 1 / sqrt(biased var + eps), unbiased var */
    float *grad_weight, *grad_bias;
    float *k; /* the forward's k1 and k3 (2C; NULL: not wanted), for a ReLU's backward */
} bn_state_t;

static void bn_forward_finish(const double *s, long M, long C, void *arg, float *k1, float *k2,
                              float *k3) {
    bn_state_t *st = (bn_state_t *)arg;
    (void)k2;
    for (long c = 0; c < C; c++) {
        const double mean = s[c] / M;
        double var = s[C + c] / M - mean * mean;
        if (var < 0) var = 0;
        const double invstd = 1.0 / sqrt(var + st->eps);
        const double w = st->weight ? st->weight[c] : 1.0;
        st->mean[c] = (float)mean;
        st->invstd[c] = (float)invstd;
        st->var[c] = M > 1 ? (float)(var * M / (M - 1)) : (float)var;
        k1[c] = (float)(w * invstd);
        k3[c] = (float)((st->bias ? st->bias[c] : 0.0) - mean * w * invstd);
        if (st->k) {
            st->k[c] = k1[c];
            st->k[C + c] = k3[c];
        }
    }
}

/* y = (x - mean) / sqrt(var + eps) * weight + bias over the rows of x (M, C); weight and bias
 * may be NULL. With acc (M, C): y = acc + that; with relu: y = max(0, that), and k (2C) gets
 * the constants that bn_backward's mk wants. Writes the batch mean, invstd and unbiased
 * variance (C each). 0 on success. */
int bn_forward(const float *x, float *y, long M, long C, const float *weight, const float *bias,
               double eps, float *mean, float *invstd, float *var, const float *acc, int relu,
               float *k, int threads) {
    bn_state_t st = {weight, bias, eps, mean, invstd, var, NULL, NULL, relu ? k : NULL};
    bn_out_t o = {acc, relu, NULL};
    return bn_two_passes(x, NULL, y, M, C, 0, bn_forward_finish, &st, &o, threads);
}

/* y = max(0, k[c] * x + k[C + c]) over the rows of x (M, C): the output of a bn_forward with
 * relu again, from the k it wrote, by the same arithmetic (bn_apply), so the same values.
 * 0 on success. */
int bn_relu_apply(const float *x, float *y, long M, long C, const float *k, int threads) {
    if (threads < 1) threads = 1;
    if (threads > M) threads = M > 0 ? (int)M : 1;
    const bn_out_t o = {NULL, 1, NULL};
#pragma omp parallel num_threads(threads)
    {
        const int t = THREAD_ID, nt = THREADS;
        bn_apply(x, NULL, y, M * t / nt, M * (t + 1) / nt, C, k, NULL, k + C, &o);
    }
    return 0;
}

static void bn_backward_finish(const double *s, long M, long C, void *arg, float *k1, float *k2,
                               float *k3) {
    bn_state_t *st = (bn_state_t *)arg; /* s[c]: sum of dy; s[C + c]: sum of dy * x */
    for (long c = 0; c < C; c++) {
        const double mean = st->mean[c], invstd = st->invstd[c];
        const double w = st->weight ? st->weight[c] : 1.0;
        const double mean_dy = s[c] / M;
        /* the mean of dy * xhat, xhat = (x - mean) * invstd */
        const double mean_dy_xhat = invstd * (s[C + c] / M - mean * mean_dy);
        if (st->grad_weight) st->grad_weight[c] = (float)(mean_dy_xhat * M);
        if (st->grad_bias) st->grad_bias[c] = (float)s[c];
        /* dx = w * invstd * (dy - mean_dy - xhat * mean_dy_xhat) = k1 dy + k2 x + k3 */
        const double a = w * invstd, b = -w * invstd * invstd * mean_dy_xhat;
        k1[c] = (float)a;
        k2[c] = (float)b;
        k3[c] = (float)(-a * mean_dy - b * mean);
    }
}

/* The gradients of bn_forward's y with respect to x, weight and bias, given dy and the saved
 * mean and invstd; grad_weight and grad_bias may be NULL (not wanted). mk: the k of a forward
 * with relu (the gradient through the ReLU), else NULL. 0 on success. */
int bn_backward(const float *dy, const float *x, float *dx, long M, long C, const float *weight,
                const float *mean, const float *invstd, float *grad_weight, float *grad_bias,
                const float *mk, int threads) {
    bn_state_t st = {weight, NULL, 0.0, (float *)mean, (float *)invstd, NULL, grad_weight,
                     grad_bias, NULL};
    bn_out_t o = {NULL, 0, mk};
    return bn_two_passes(dy, x, dx, M, C, 1, bn_backward_finish, &st, &o, threads);
}

/* ---------------------------------------------------------------------------------------------
 * A cell node's sum of K mixed-op BatchNorms (non-affine, training mode), each scaled by its
 * op's mixing weight w_k:
 *
 *   out = acc + sum_k w_k * (x_k - mean_k) * invstd_k          (acc NULL: zero)
 *
 * and its backward given the node's gradient g: every BatchNorm's dy is w_k * g, so the sums
 * of the backward's first pass share g (sum g once, sum g * x_k per op), and
 *
 *   dx_k = w_k invstd_k (g - mean(g) - xhat_k mean(g xhat_k)),  dw_k = sum_c sum(g xhat_k).
 *
 * One BatchNorm at a time (bn_forward with acc) reads and writes the running sum once per op
 * and reads g twice per op; here the sum is written once and g is read once per pass, each
 * chunk of rows of g staying in cache while the ops' x_k stream by. Rows are split between the
 * threads as in bn_two_passes; sums in float32 within chunks and in double across them.
 */
#define NBN_ROWS 4096 /* floats per chunk of rows: 16 KiB */

static long nbn_chunk(long C) {
    const long rows = NBN_ROWS / C;
    return rows < 1 ? 1 : rows;
}

/* Returns 0 on success, 1 out of memory. mean, invstd, var: K * C each (the batch mean,
 * 1 / sqrt(biased var + eps) and the unbiased variance of each x_k). */
int nbn_forward(const float *const *x, int K, const float *acc, float *out, long M, long C,
                const float *w, const double *eps, float *mean, float *invstd, float *var,
                int threads) {
    if (threads < 1) threads = 1;
    if (threads > M) threads = M > 0 ? (int)M : 1;
    double *sums = (double *)calloc((size_t)(2 * C * K * threads), sizeof(double));
    float *coef = (float *)malloc(sizeof(float) * (size_t)((K + 1) * C));
    if (!sums || !coef) {
        free(sums); free(coef);
        return 1;
    }
    const long chunk = nbn_chunk(C);
#pragma omp parallel num_threads(threads)
    {
        const int t = THREAD_ID, nt = THREADS;
        const long m0 = M * t / nt, m1 = M * (t + 1) / nt;
        double *mine = sums + 2 * C * K * t;
        for (int k = 0; k < K; k++) bn_sums(x[k], NULL, m0, m1, C, mine + 2 * C * k, NULL);
#pragma omp barrier
#pragma omp single
        {
            for (int u = 1; u < nt; u++)
                for (long c = 0; c < 2 * C * K; c++) sums[c] += sums[2 * C * K * u + c];
            for (long c = 0; c < C; c++) {
                double shift = 0.0; /* -sum_k w_k invstd_k mean_k */
                for (int k = 0; k < K; k++) {
                    const double *s = sums + 2 * C * k;
                    const double mu = s[c] / M;
                    double v = s[C + c] / M - mu * mu;
                    if (v < 0) v = 0;
                    const double is = 1.0 / sqrt(v + eps[k]);
                    mean[k * C + c] = (float)mu;
                    invstd[k * C + c] = (float)is;
                    var[k * C + c] = M > 1 ? (float)(v * M / (M - 1)) : (float)v;
                    coef[k * C + c] = (float)(w[k] * is);
                    shift -= w[k] * is * mu;
                }
                coef[K * C + c] = (float)shift;
            }
        }
        const float *restrict b = coef + K * C;
        for (long r0 = m0; r0 < m1; r0 += chunk) {
            const long r1 = r0 + chunk < m1 ? r0 + chunk : m1;
            for (long m = r0; m < r1; m++) {
                float *restrict o = out + m * C;
                if (acc) {
                    const float *restrict a = acc + m * C;
                    for (long c = 0; c < C; c++) o[c] = a[c] + b[c];
                } else {
                    for (long c = 0; c < C; c++) o[c] = b[c];
                }
            }
            for (int k = 0; k < K; k++) {
                const float *restrict a = coef + k * C;
                for (long m = r0; m < r1; m++) {
                    float *restrict o = out + m * C;
                    const float *restrict xr = x[k] + m * C;
                    for (long c = 0; c < C; c++) o[c] += a[c] * xr[c];
                }
            }
        }
    }
    free(sums); free(coef);
    return 0;
}

/* Given g, the x_k and the forward's mean and invstd: dx[k] (NULL: not wanted) and dw (K
 * doubles, NULL: not wanted). Returns 0 on success, 1 out of memory. */
int nbn_backward(const float *g, const float *const *x, float *const *dx, int K, long M, long C,
                 const float *w, const float *mean, const float *invstd, double *dw,
                 int threads) {
    if (threads < 1) threads = 1;
    if (threads > M) threads = M > 0 ? (int)M : 1;
    double *sums = (double *)calloc((size_t)(2 * C * K * threads), sizeof(double));
    float *coef = (float *)malloc(sizeof(float) * (size_t)(3 * K * C));
    if (!sums || !coef) {
        free(sums); free(coef);
        return 1;
    }
    const long chunk = nbn_chunk(C);
    const bn_out_t plain = {NULL, 0, NULL};
#pragma omp parallel num_threads(threads)
    {
        const int t = THREAD_ID, nt = THREADS;
        const long m0 = M * t / nt, m1 = M * (t + 1) / nt;
        double *mine = sums + 2 * C * K * t;
        for (long r0 = m0; r0 < m1; r0 += chunk) {
            const long r1 = r0 + chunk < m1 ? r0 + chunk : m1;
            for (int k = 0; k < K; k++) bn_sums(g, x[k], r0, r1, C, mine + 2 * C * k, NULL);
        }
#pragma omp barrier
#pragma omp single
        {
            for (int u = 1; u < nt; u++)
                for (long c = 0; c < 2 * C * K; c++) sums[c] += sums[2 * C * K * u + c];
            for (int k = 0; k < K; k++) {
                const double *s = sums + 2 * C * k; /* s[c]: sum of g; s[C + c]: of g * x_k */
                double total = 0.0;
                for (long c = 0; c < C; c++) {
                    const double mu = mean[k * C + c], is = invstd[k * C + c];
                    const double mean_g = s[c] / M;
                    const double mean_g_xhat = is * (s[C + c] / M - mu * mean_g);
                    total += mean_g_xhat * M;
                    /* dx = w is (g - mean_g - xhat mean_g_xhat) = k1 g + k2 x + k3 */
                    const double a = w[k] * is, bk = -w[k] * is * is * mean_g_xhat;
                    coef[k * C + c] = (float)a;
                    coef[(K + k) * C + c] = (float)bk;
                    coef[(2 * K + k) * C + c] = (float)(-a * mean_g - bk * mu);
                }
                if (dw) dw[k] = total;
            }
        }
        for (long r0 = m0; r0 < m1; r0 += chunk) {
            const long r1 = r0 + chunk < m1 ? r0 + chunk : m1;
            for (int k = 0; k < K; k++)
                if (dx[k])
                    bn_apply(g, x[k], dx[k], r0, r1, C, coef + k * C, coef + (K + k) * C,
                             coef + (2 * K + k) * C, &plain);
        }
    }
    free(sums); free(coef);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * The terms that every edge leaving a cell state shares (the state itself through
 * skip_connect, and its pooled and normalised outputs), added to E nodes' running sums at once:
 *
 *   out[e] = acc[e] + sum_k w[e, k] * y[k]            (acc[e] NULL: zero)
 *
 * and its backward, given the nodes' gradients g[e]:
 *
 *   dy[k] = sum_e w[e, k] * g[e],   dw[e, k] = sum_i g[e][i] * y[k][i].
 *
 * One pass over all the tensors each way, in blocks small enough that the K + E blocks stay in
 * the first-level cache while every (e, k) pair uses them. Done edge by edge (an addcmul per
 * term and edge, and in the backward a product, a sum and an addition per term and edge) these
 * are 3-9 passes per term and edge. Elementwise: any memory layout, the same for all tensors.
 */
#define MIX_BLOCK 512
#define MIX_MAX 8

static void mix_range(long n, long *i0, long *i1) {
    const int t = THREAD_ID, nt = THREADS;
    const long blocks = (n + MIX_BLOCK - 1) / MIX_BLOCK;
    *i0 = blocks * t / nt * MIX_BLOCK;
    *i1 = blocks * (t + 1) / nt * MIX_BLOCK;
    if (*i1 > n) *i1 = n;
}

int mix_forward(const float *const *y, long K, const float *w, const float *const *acc,
                float *const *out, long E, long n, int threads) {
    if (K > MIX_MAX || E > MIX_MAX) return 1;
#pragma omp parallel num_threads(threads)
    {
        long i0, i1;
        mix_range(n, &i0, &i1);
        for (long b = i0; b < i1; b += MIX_BLOCK) {
            const long len = b + MIX_BLOCK < i1 ? MIX_BLOCK : i1 - b;
            for (long e = 0; e < E; e++) {
                float *restrict o = out[e] + b;
                if (acc[e]) {
                    const float *restrict a = acc[e] + b;
                    for (long i = 0; i < len; i++) o[i] = a[i];
                } else {
                    for (long i = 0; i < len; i++) o[i] = 0.0f;
                }
                for (long k = 0; k < K; k++) {
                    const float c = w[e * K + k];
                    const float *restrict yk = y[k] + b;
                    for (long i = 0; i < len; i++) o[i] += c * yk[i];
                }
            }
        }
    }
    return 0;
}

int mix_backward(const float *const *g, long E, const float *const *y, long K, const float *w,
                 float *const *dy, double *dw, long n, int threads) {
    if (K > MIX_MAX || E > MIX_MAX) return 1;
    if (threads < 1) threads = 1;
    double *part = dw ? (double *)calloc((size_t)(threads * E * K), sizeof(double)) : NULL;
    if (dw && !part) return 1;
#pragma omp parallel num_threads(threads)
    {
        long i0, i1;
        mix_range(n, &i0, &i1);
        double *mine = part ? part + THREAD_ID * E * K : NULL;
        for (long b = i0; b < i1; b += MIX_BLOCK) {
            const long len = b + MIX_BLOCK < i1 ? MIX_BLOCK : i1 - b;
            for (long k = 0; k < K; k++) {
                if (dy[k]) {
                    float *restrict d = dy[k] + b;
                    for (long i = 0; i < len; i++) d[i] = 0.0f;
                    for (long e = 0; e < E; e++) {
                        const float c = w[e * K + k];
                        const float *restrict ge = g[e] + b;
                        for (long i = 0; i < len; i++) d[i] += c * ge[i];
                    }
                }
                if (mine) {
                    const float *yk = y[k] + b;
                    for (long e = 0; e < E; e++) {
                        const float *ge = g[e] + b;
                        v8f s = {0};
                        long i = 0;
                        for (; i + 8 <= len; i += 8)
                            s += *(const v8f *)(ge + i) * *(const v8f *)(yk + i);
                        float tail = 0.0f;
                        for (; i < len; i++) tail += ge[i] * yk[i];
                        mine[e * K + k] += (double)(s[0] + s[1] + s[2] + s[3] + s[4] + s[5]
                                                    + s[6] + s[7] + tail);
                    }
                }
            }
        }
    }
    if (dw) {
        for (long j = 0; j < E * K; j++) {
            double v = 0.0;
            for (int t = 0; t < threads; t++) v += part[t * E * K + j];
            dw[j] = v;
        }
        free(part);
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Depthwise convolutions of one shared input with ReLU in front, all at once:
 *
 *   y_k = dwconv_k(relu(x))                     for k = 0 .. K-1   (forward)
 *   dx  = [x > 0] * sum_k dwconv_k^T(g_k)                          (backward, input gradient)
 *
 * Every edge that leaves a DARTS cell state begins four of its ops (sep_conv 3x3 / 5x5,
 * dil_conv 3x3 / 5x5) with a depthwise convolution of relu(state): 16 of them for a state with
 * four outgoing edges. Op by op that is a ReLU pass, 16 convolutions, and in the backward 16
 * transposed convolutions each writing its own input gradient, 15 additions of them by
 * autograd and ReLU's backward pass. Here each image is read once into a zero-padded buffer
 * (ReLU applied on the way), from which every convolution reads without bounds checks; the
 * backward sums every op's transposed convolution for a block of outputs in registers and
 * writes the input gradient once per op, the last one masked by x > 0.
 *
 * x is (N, H, W, C); op k has taps w_k laid out (kh, kw, C) (the channels innermost) and
 * conf_k = (kh, kw, stride, pad, dil, OH, OW); y_k and g_k are (N, OH_k, OW_k, C). Each
 * thread takes whole images. The backward is a gather: output pixel (h, w) takes tap (i, j) of
 * op k from g_k[(h + p - i*d) / s, (w + p - j*d) / s] where both divide; the outputs of one
 * column phase w = s*m + r, for consecutive m, read consecutive columns of g_k.
 */
#define DW_B 8 /* outputs per register block along a row */
#define DW_MAX_TAPS (MAX_KW * MAX_KW)
#define DW_CONF 7

/* One block of DW_B outputs (FULL) or fewer (PART), NV * sizeof(VT) / 4 channels from c0:
 * dst[b * dstep] (+)= sum over taps t of wt[t] * src[t][off + b * sstep]. add: start from
 * dst, else from zero. The full block keeps its DW_B * NV sums in registers. */
#define DWBLOCK(VT, NV)                                                                        \
    static inline void dwfull_##VT##_##NV(const float *const *src, const float *const *wt,     \
                                          int ntaps, long off, long sstep, float *dst,         \
                                          long dstep, long c0, int add) {                      \
        const long L = sizeof(VT) / sizeof(float);                                             \
        VT acc[DW_B][NV];                                                                      \
        if (add) {                                                                             \
            _Pragma("GCC unroll 16") for (int b = 0; b < DW_B; b++)                            \
                _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                           \
                    acc[b][v] = *(const VT *)(dst + b * dstep + c0 + v * L);                   \
        } else {                                                                               \
            _Pragma("GCC unroll 16") for (int b = 0; b < DW_B; b++)                            \
                _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) acc[b][v] = (VT){0};      \
        }                                                                                      \
        _Pragma("GCC unroll 1") for (int t = 0; t < ntaps; t++) {                              \
            const float *s = src[t] + off + c0, *w = wt[t] + c0;                               \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++) {                             \
                const VT wv = *(const VT *)(w + v * L);                                        \
                _Pragma("GCC unroll 16") for (int b = 0; b < DW_B; b++)                        \
                    acc[b][v] += wv * *(const VT *)(s + b * sstep + v * L);                    \
            }                                                                                  \
        }                                                                                      \
        _Pragma("GCC unroll 16") for (int b = 0; b < DW_B; b++)                                \
            _Pragma("GCC unroll 4") for (int v = 0; v < NV; v++)                               \
                *(VT *)(dst + b * dstep + c0 + v * L) = acc[b][v];                             \
    }                                                                                          \
    static void dwpart_##VT##_##NV(const float *const *src, const float *const *wt, int ntaps, \
                                   long off, long sstep, float *dst, long dstep, long c0,      \
                                   int cnt, int add) {                                         \
        const long L = sizeof(VT) / sizeof(float);                                             \
        for (int b = 0; b < cnt; b++)                                                          \
            for (int v = 0; v < NV; v++) {                                                     \
                VT a = add ? *(const VT *)(dst + b * dstep + c0 + v * L) : (VT){0};            \
                for (int t = 0; t < ntaps; t++)                                                \
                    a += *(const VT *)(wt[t] + c0 + v * L)                                     \
                         * *(const VT *)(src[t] + off + c0 + b * sstep + v * L);               \
                *(VT *)(dst + b * dstep + c0 + v * L) = a;                                     \
            }                                                                                  \
    }                                                                                          \
    static inline void dwblock_##VT##_##NV(const float *const *src, const float *const *wt,    \
                                           int ntaps, long off, long sstep, float *dst,        \
                                           long dstep, long c0, int cnt, int add) {            \
        if (cnt == DW_B) dwfull_##VT##_##NV(src, wt, ntaps, off, sstep, dst, dstep, c0, add);  \
        else dwpart_##VT##_##NV(src, wt, ntaps, off, sstep, dst, dstep, c0, cnt, add);         \
    }
#if defined(__AVX512F__)
typedef float v16 __attribute__((vector_size(64), aligned(4)));
DWBLOCK(v16, 1)
#define DW16(...) dwblock_v16_1(__VA_ARGS__)
#else
DWBLOCK(v8, 2)
#define DW16(...) dwblock_v8_2(__VA_ARGS__)
#endif
DWBLOCK(v8, 1)
DWBLOCK(v4, 1)
DWBLOCK(v1, 1)

/* A row segment of `count` outputs, every channel. */
static void dw_row(const float *const *src, const float *const *wt, int ntaps, long sstep,
                   float *dst, long dstep, long count, long C, int add) {
    for (long m = 0; m < count; m += DW_B) {
        const int cnt = count - m < DW_B ? (int)(count - m) : DW_B;
        const long off = m * sstep;
        float *d = dst + m * dstep;
        long c0 = 0;
        for (; c0 + 16 <= C; c0 += 16) DW16(src, wt, ntaps, off, sstep, d, dstep, c0, cnt, add);
        for (; c0 + 8 <= C; c0 += 8) dwblock_v8_1(src, wt, ntaps, off, sstep, d, dstep, c0, cnt, add);
        for (; c0 + 4 <= C; c0 += 4) dwblock_v4_1(src, wt, ntaps, off, sstep, d, dstep, c0, cnt, add);
        for (; c0 < C; c0++) dwblock_v1_1(src, wt, ntaps, off, sstep, d, dstep, c0, cnt, add);
    }
}

static int dw_conf_ok(const long *conf, int K) {
    for (int k = 0; k < K; k++) {
        const long *f = conf + k * DW_CONF;
        if (f[0] < 1 || f[0] > MAX_KW || f[1] < 1 || f[1] > MAX_KW || f[2] < 1 || f[3] < 0
            || f[4] < 1 || f[5] < 1 || f[6] < 1)
            return 0;
    }
    return 1;
}

/* One image xn (H, W, C), with ReLU where relu, into the interior of xp, a buffer with P zero
 * rows and columns each side (zeroed once). */
static void dw_pad_image(float *xp, const float *xn, long H, long W, long C, long P, int relu) {
    const long Wp = W + 2 * P;
    for (long h = 0; h < H; h++) {
        float *row = xp + ((h + P) * Wp + P) * C;
        const float *in = xn + h * W * C;
        if (relu)
            for (long e = 0; e < W * C; e++) row[e] = in[e] < 0.0f ? 0.0f : in[e];
        else
            memcpy(row, in, sizeof(float) * (size_t)(W * C));
    }
}

/* Returns 0 on success, 1 out of memory, 2 a configuration not covered. */
int dw_relu_forward(const float *x, long N, long H, long W, long C, int K,
                    const float *const *w, float *const *y, const long *conf, int relu,
                    int threads) {
    if (K < 1 || !dw_conf_ok(conf, K)) return 2;
    long P = 0;
    for (int k = 0; k < K; k++)
        if (conf[k * DW_CONF + 3] > P) P = conf[k * DW_CONF + 3];
    const long Hp = H + 2 * P, Wp = W + 2 * P;
    if (threads < 1) threads = 1;
    if (threads > N) threads = (int)N;
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *xp = (float *)calloc((size_t)(Hp * Wp * C), sizeof(float));
        const float *src[DW_MAX_TAPS], *wt[DW_MAX_TAPS];
        if (!xp) failed = 1;
#pragma omp for schedule(static)
        for (long n = 0; n < N; n++) {
            if (!xp) continue;
            dw_pad_image(xp, x + n * H * W * C, H, W, C, P, relu);
            for (int k = 0; k < K; k++) {
                const long *f = conf + k * DW_CONF;
                const long kh = f[0], kw = f[1], s = f[2], p = f[3], d = f[4], OH = f[5], OW = f[6];
                float *yn = y[k] + n * OH * OW * C;
                for (long oh = 0; oh < OH; oh++) {
                    int nt = 0;
                    for (long i = 0; i < kh; i++) {
                        const long r = oh * s + i * d - p + P;
                        for (long j = 0; j < kw; j++) {
                            src[nt] = xp + (r * Wp + j * d - p + P) * C;
                            wt[nt++] = w[k] + (i * kw + j) * C;
                        }
                    }
                    dw_row(src, wt, nt, s * C, yn + oh * OW * C, C, OW, C, 0);
                }
            }
        }
        free(xp);
    }
    return failed;
}

/* The zero columns left and right of op f's gradient rows, so that every column the gather
 * reads, (w + p - j*d) / s for 0 <= w < W, lies in the padded row. */
static void dw_pads(const long *f, long W, long *left, long *right) {
    const long kw = f[1], s = f[2], p = f[3], d = f[4], OW = f[6];
    const long lo = p - (kw - 1) * d, first = lo >= 0 ? lo / s : -((-lo + s - 1) / s);
    const long last = (W - 1 + p) / s;
    *left = first < 0 ? -first : 0;
    *right = last > OW - 1 ? last - (OW - 1) : 0;
}

/* One image's weight-gradient sums of one op into out (kh, kw, C), from its output gradient
 * (padded rows: grow0 is row 0's first column, rows Wg * C apart) and the padded input xp
 * (P zero rows and columns each side, rows Wp * C apart). */
static void dw_weight_image(const float *grow0, long Wg, const float *xp, long Wp, long P,
                            const long *f, long C, float *out) {
    const long kh = f[0], kw = f[1], s = f[2], p = f[3], d = f[4], OH = f[5], OW = f[6];
    /* depthwise_weight_grad's row sweeps, on rows that start p columns left of the image:
     * with no padding left to apply, every output is in their interior */
    const job_t job = {NULL, NULL, 1, 0, Wp - (P - p), C, OH, OW, kh, kw, s, 0, d};
    const job_t *t = &job;
    for (long oh = 0; oh < OH; oh++) {
        const float *grow = grow0 + oh * Wg * C;
        for (long i = 0; i < kh; i++) {
            const float *xrow = xp + ((oh * s + i * d - p + P) * Wp + P - p) * C;
            float *acc = out + i * kw * C;
            if (kw == 3) ROW(3);
            else if (kw == 5) ROW(5);
            else ROW(0);
        }
    }
}

/* The backward of dw_relu_forward given the output gradients g[k] (NULL: op k has none):
 *   dx = [x > 0] * sum_k dwconv_k^T(g_k)   (dx NULL: not wanted; without relu no mask)
 *   dw[k] = the weight gradient of op k, (C, kh, kw) as PyTorch's weight (NULL: not wanted).
 * Returns 0 on success, 1 out of memory, 2 a configuration not covered.
 *
 * Per image, every op's output gradient is first copied into zero-padded rows (in the
 * thread's cache); each block of input-gradient outputs then sums the taps of all the ops of
 * one stride in registers and is written once. The weight gradients read the same padded
 * rows and relu(x) padded once per image (as the forward), so g is read from memory once for
 * both; their sums run in float32 within an image and in double across images. */
int dw_relu_backward(const float *x, float *dx, long N, long H, long W, long C, int K,
                     const float *const *w, const float *const *g, const long *conf,
                     float *const *dw, int relu, int threads) {
    if (K < 1 || !dw_conf_ok(conf, K)) return 2;
    long *lay = (long *)malloc(sizeof(long) * (size_t)(4 * K)); /* offset, left, width, taps */
    if (!lay) return 1;
    long total = 0, taps = 0, P = 0;
    int weights = 0;
    for (int k = 0; k < K; k++) {
        const long *f = conf + k * DW_CONF;
        long left, right;
        dw_pads(f, W, &left, &right);
        lay[4 * k] = total;
        lay[4 * k + 1] = left;
        lay[4 * k + 2] = f[6] + left + right;
        lay[4 * k + 3] = taps * C;
        total += f[5] * lay[4 * k + 2] * C;
        taps += f[0] * f[1];
        if (f[3] > P) P = f[3];
        weights |= dw[k] != NULL && g[k] != NULL;
    }
    const long Hp = H + 2 * P, Wp = W + 2 * P;
    if (threads < 1) threads = 1;
    if (threads > N) threads = (int)N;
    double *sums = weights ? (double *)calloc((size_t)(threads * taps * C), sizeof(double)) : NULL;
    if (weights && !sums) {
        free(lay);
        return 1;
    }
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        float *gp = (float *)malloc(sizeof(float) * (size_t)total);
        const float **src = (const float **)malloc(sizeof(float *) * (size_t)(2 * taps));
        const float **wt = src ? src + taps : NULL;
        float *xp = weights ? (float *)calloc((size_t)(Hp * Wp * C), sizeof(float)) : NULL;
        float *img = weights ? (float *)malloc(sizeof(float) * (size_t)(taps * C)) : NULL;
        double *mine = weights ? sums + THREAD_ID * taps * C : NULL;
        if (!gp || !src || (weights && (!xp || !img))) failed = 1;
#pragma omp for schedule(static)
        for (long n = 0; n < N; n++) {
            if (!gp || !src || (weights && (!xp || !img))) continue;
            for (int k = 0; k < K; k++) {
                if (!g[k]) continue;
                const long *f = conf + k * DW_CONF;
                const long OH = f[5], OW = f[6], left = lay[4 * k + 1], Wg = lay[4 * k + 2];
                const float *gn = g[k] + n * OH * OW * C;
                for (long r = 0; r < OH; r++) {
                    float *row = gp + lay[4 * k] + r * Wg * C;
                    memset(row, 0, sizeof(float) * (size_t)(left * C));
                    memcpy(row + left * C, gn + r * OW * C, sizeof(float) * (size_t)(OW * C));
                    memset(row + (left + OW) * C, 0,
                           sizeof(float) * (size_t)((Wg - left - OW) * C));
                }
            }
            if (weights) {
                dw_pad_image(xp, x + n * H * W * C, H, W, C, P, relu);
                for (int k = 0; k < K; k++) {
                    if (!g[k] || !dw[k]) continue;
                    const long *f = conf + k * DW_CONF, size = f[0] * f[1] * C;
                    memset(img, 0, sizeof(float) * (size_t)size);
                    dw_weight_image(gp + lay[4 * k] + lay[4 * k + 1] * C, lay[4 * k + 2], xp, Wp,
                                    P, f, C, img);
                    double *t = mine + lay[4 * k + 3];
                    for (long e = 0; e < size; e++) t[e] += img[e];
                }
            }
            if (!dx) continue;
            float *dxn = dx + n * H * W * C;
            /* the ops in groups of one stride: the first group stores, the others add */
            int first = 1;
            for (int k0 = 0; k0 < K; k0++) {
                const long s = conf[k0 * DW_CONF + 2];
                int seen = 0;
                for (int k = 0; k < k0; k++) seen |= conf[k * DW_CONF + 2] == s;
                if (seen) continue;
                for (long h = 0; h < H; h++) {
                    for (long ph = 0; ph < s && ph < W; ph++) {
                        const long count = (W - ph + s - 1) / s;
                        int nt = 0;
                        for (int k = k0; k < K; k++) {
                            const long *f = conf + k * DW_CONF;
                            if (!g[k] || f[2] != s) continue;
                            const long kh = f[0], kw = f[1], p = f[3], d = f[4], OH = f[5];
                            const long left = lay[4 * k + 1], Wg = lay[4 * k + 2];
                            for (long i = 0; i < kh; i++) {
                                long r = h + p - i * d;
                                if (s > 1) { /* (divisions are slow: only where strided) */
                                    if (((r % s) + s) % s) continue;
                                    r /= s;
                                }
                                if (r < 0 || r >= OH) continue;
                                const float *grow = gp + lay[4 * k] + (r * Wg + left) * C;
                                const float *wrow = w[k] + i * kw * C;
                                for (long j = 0; j < kw; j++) {
                                    long c = ph + p - j * d;
                                    if (s > 1) {
                                        if (((c % s) + s) % s) continue;
                                        c /= s;
                                    }
                                    src[nt] = grow + c * C;
                                    wt[nt++] = wrow + j * C;
                                }
                            }
                        }
                        if (nt == 0 && !first) continue;
                        dw_row(src, wt, nt, C, dxn + (h * W + ph) * C, s * C, count, C, !first);
                    }
                }
                first = 0;
            }
            if (relu) {
                const float *xn = x + n * H * W * C;
                for (long e = 0; e < H * W * C; e++) dxn[e] = xn[e] > 0.0f ? dxn[e] : 0.0f;
            }
        }
        free(gp);
        free(src);
        free(xp);
        free(img);
    }
    if (weights && !failed) {
        for (int k = 0; k < K; k++) {
            if (!g[k] || !dw[k]) continue;
            const long *f = conf + k * DW_CONF, kk = f[0] * f[1];
            for (long t = 0; t < kk; t++)
                for (long c = 0; c < C; c++) {
                    double v = 0.0;
                    for (int u = 0; u < threads; u++) v += sums[u * taps * C + lay[4 * k + 3] + t * C + c];
                    dw[k][c * kk + t] = (float)v;
                }
        }
    }
    free(sums);
    free(lay);
    return failed;
}

/* ---------------------------------------------------------------------------------------------
 * A cell state's two pooling ops, each followed by a non-affine BatchNorm in training mode (the
 * search supernet's max_pool_3x3 and avg_pool_3x3; the same output on every edge that leaves
 * the state):
 *
 *   ymax = (maxpool(x) - mean) * invstd,   yavg = (avgpool(x) - mean') * invstd'
 *
 * k x k windows at stride s with p rows and columns of padding, which max pooling never takes
 * and average pooling does not count (count_include_pad=False). x (N, H, W, C); outputs
 * (N, OH, OW, C). The first pass pools and sums (nothing written), the second pools again
 * and writes both outputs normalised: x is read twice and each output written once, where
 * pooling then BatchNorm read x twice, wrote the pooled outputs, read them twice and wrote
 * them again. The backward's first pass sums g and g * y of each output; the second forms
 * dx image by image (one thread per image, so each owns its writes): every window adds its
 * average's share to each tap inside the input and its max's gradient to the first tap (in
 * row-major order, as PyTorch's kernel) that holds the window's maximum, found again from x.
 * Sums in float32 per output row and in double across rows.
 */
typedef struct {
    long N, H, W, C, OH, OW, k, s, p;
} pool_t;

/* The window of output (oh, ow): its corner (h0, w0) in the input and the rows [i0, i1) and
 * columns [j0, j1) of it inside the input. */
typedef struct {
    long h0, w0, i0, i1, j0, j1;
} win_t;

static inline win_t pool_window(const pool_t *q, long oh, long ow) {
    const long h0 = oh * q->s - q->p, w0 = ow * q->s - q->p;
    const win_t b = {h0, w0, h0 < 0 ? -h0 : 0, h0 + q->k > q->H ? q->H - h0 : q->k,
                     w0 < 0 ? -w0 : 0, w0 + q->k > q->W ? q->W - w0 : q->k};
    return b;
}

/* Max and average of the window of output (oh, ow) of image xn for the 8 channels from c0. */
static inline void pool8(const float *xn, const pool_t *q, long oh, long ow, long c0, v8f *mx,
                         v8f *av) {
    const win_t b = pool_window(q, oh, ow);
    v8f m = *(const v8f *)(xn + ((b.h0 + b.i0) * q->W + b.w0 + b.j0) * q->C + c0), a = {0};
    for (long i = b.i0; i < b.i1; i++)
        for (long j = b.j0; j < b.j1; j++) {
            const v8f v = *(const v8f *)(xn + ((b.h0 + i) * q->W + b.w0 + j) * q->C + c0);
            const v8i gt = v > m;
            m = (v8f)((gt & (v8i)v) | (~gt & (v8i)m));
            a += v;
        }
    *mx = m;
    *av = a * (1.0f / (float)((b.i1 - b.i0) * (b.j1 - b.j0)));
}

static inline void pool1(const float *xn, const pool_t *q, long oh, long ow, long c, float *mx,
                         float *av) {
    const win_t b = pool_window(q, oh, ow);
    float m = xn[((b.h0 + b.i0) * q->W + b.w0 + b.j0) * q->C + c], a = 0;
    for (long i = b.i0; i < b.i1; i++)
        for (long j = b.j0; j < b.j1; j++) {
            const float v = xn[((b.h0 + i) * q->W + b.w0 + j) * q->C + c];
            if (v > m) m = v;
            a += v;
        }
    *mx = m;
    *av = a * (1.0f / (float)((b.i1 - b.i0) * (b.j1 - b.j0)));
}

/* stats: 6C floats, the mean, invstd (1 / sqrt(biased var + eps)) and unbiased variance of
 * the max output, then the same of the average output. 0 on success, 1 out of memory. */
int pool_bn_forward(const float *x, float *ymax, float *yavg, long N, long H, long W, long C,
                    long k, long s, long p, double eps_max, double eps_avg, float *stats,
                    int threads) {
    const long OH = (H + 2 * p - k) / s + 1, OW = (W + 2 * p - k) / s + 1;
    const pool_t q = {N, H, W, C, OH, OW, k, s, p};
    const long rows = N * OH, M = N * OH * OW;
    if (threads < 1) threads = 1;
    if (threads > rows) threads = rows > 0 ? (int)rows : 1;
    double *sums = (double *)calloc((size_t)(4 * C * threads), sizeof(double));
    float *kk = (float *)malloc(sizeof(float) * (size_t)(4 * C));
    if (!sums || !kk) {
        free(sums); free(kk);
        return 1;
    }
#pragma omp parallel num_threads(threads)
    {
        const int t = THREAD_ID, nt = THREADS;
        const long r0 = rows * t / nt, r1 = rows * (t + 1) / nt;
        double *sm = sums + 4 * C * t; /* sum max, sum max^2, sum avg, sum avg^2 */
        for (long r = r0; r < r1; r++) {
            const long n = r / OH, oh = r % OH;
            const float *xn = x + n * H * W * C;
            long c0 = 0;
            for (; c0 + 8 <= C; c0 += 8) {
                v8f s1 = {0}, q1 = {0}, s2 = {0}, q2 = {0};
                for (long ow = 0; ow < OW; ow++) {
                    v8f m, a;
                    pool8(xn, &q, oh, ow, c0, &m, &a);
                    s1 += m; q1 += m * m; s2 += a; q2 += a * a;
                }
                for (int c = 0; c < 8; c++) {
                    sm[c0 + c] += s1[c]; sm[C + c0 + c] += q1[c];
                    sm[2 * C + c0 + c] += s2[c]; sm[3 * C + c0 + c] += q2[c];
                }
            }
            for (; c0 < C; c0++) {
                float s1 = 0, q1 = 0, s2 = 0, q2 = 0;
                for (long ow = 0; ow < OW; ow++) {
                    float m, a;
                    pool1(xn, &q, oh, ow, c0, &m, &a);
                    s1 += m; q1 += m * m; s2 += a; q2 += a * a;
                }
                sm[c0] += s1; sm[C + c0] += q1; sm[2 * C + c0] += s2; sm[3 * C + c0] += q2;
            }
        }
#pragma omp barrier
#pragma omp single
        {
            for (int u = 1; u < nt; u++)
                for (long c = 0; c < 4 * C; c++) sums[c] += sums[4 * C * u + c];
            for (int o = 0; o < 2; o++) {
                const double eps = o ? eps_avg : eps_max;
                for (long c = 0; c < C; c++) {
                    const double mean = sums[2 * o * C + c] / M;
                    double var = sums[(2 * o + 1) * C + c] / M - mean * mean;
                    if (var < 0) var = 0;
                    const double invstd = 1.0 / sqrt(var + eps);
                    stats[3 * o * C + c] = (float)mean;
                    stats[(3 * o + 1) * C + c] = (float)invstd;
                    stats[(3 * o + 2) * C + c] = M > 1 ? (float)(var * M / (M - 1)) : (float)var;
                    kk[2 * o * C + c] = (float)invstd;               /* y = k1 * v + k3 */
                    kk[(2 * o + 1) * C + c] = (float)(-mean * invstd);
                }
            }
        } /* the end of single waits for it */
        for (long r = r0; r < r1; r++) {
            const long n = r / OH, oh = r % OH;
            const float *xn = x + n * H * W * C;
            float *om = ymax + r * OW * C, *oa = yavg + r * OW * C;
            long c0 = 0;
            for (; c0 + 8 <= C; c0 += 8) {
                const v8f k1m = *(const v8f *)(kk + c0), k3m = *(const v8f *)(kk + C + c0);
                const v8f k1a = *(const v8f *)(kk + 2 * C + c0);
                const v8f k3a = *(const v8f *)(kk + 3 * C + c0);
                for (long ow = 0; ow < OW; ow++) {
                    v8f m, a;
                    pool8(xn, &q, oh, ow, c0, &m, &a);
                    *(v8f *)(om + ow * C + c0) = k1m * m + k3m;
                    *(v8f *)(oa + ow * C + c0) = k1a * a + k3a;
                }
            }
            for (; c0 < C; c0++)
                for (long ow = 0; ow < OW; ow++) {
                    float m, a;
                    pool1(xn, &q, oh, ow, c0, &m, &a);
                    om[ow * C + c0] = kk[c0] * m + kk[C + c0];
                    oa[ow * C + c0] = kk[2 * C + c0] * a + kk[3 * C + c0];
                }
        }
    }
    free(sums); free(kk);
    return 0;
}

/* The max's gradient dm to the first tap holding the maximum m, and the average's da / count
 * to every tap, of the window of output (oh, ow), for the 8 channels from c0 (dxn: image n's
 * input gradient). */
static inline void unpool8(const float *xn, float *dxn, const pool_t *q, long oh, long ow,
                           long c0, v8f m, v8f dm, v8f da) {
    const win_t b = pool_window(q, oh, ow);
    da *= 1.0f / (float)((b.i1 - b.i0) * (b.j1 - b.j0));
    v8i found = {0};
    for (long i = b.i0; i < b.i1; i++)
        for (long j = b.j0; j < b.j1; j++) {
            const long at = ((b.h0 + i) * q->W + b.w0 + j) * q->C + c0;
            const v8i hit = (*(const v8f *)(xn + at) == m) & ~found;
            found |= hit;
            *(v8f *)(dxn + at) += da + (v8f)(hit & (v8i)dm);
        }
}

static inline void unpool1(const float *xn, float *dxn, const pool_t *q, long oh, long ow,
                           long c, float m, float dm, float da) {
    const win_t b = pool_window(q, oh, ow);
    da *= 1.0f / (float)((b.i1 - b.i0) * (b.j1 - b.j0));
    int found = 0;
    for (long i = b.i0; i < b.i1; i++)
        for (long j = b.j0; j < b.j1; j++) {
            const long at = ((b.h0 + i) * q->W + b.w0 + j) * q->C + c;
            float d = da;
            if (!found && xn[at] == m) {
                found = 1;
                d += dm;
            }
            dxn[at] += d;
        }
}

/* dx of pool_bn_forward's outputs given their gradients gmax and gavg (either NULL: zero) and
 * the outputs themselves; stats as pool_bn_forward wrote them. 0 on success, 1 out of memory. */
int pool_bn_backward(const float *x, const float *gmax, const float *gavg, const float *ymax,
                     const float *yavg, float *dx, long N, long H, long W, long C, long k, long s,
                     long p, const float *stats, int threads) {
    const long OH = (H + 2 * p - k) / s + 1, OW = (W + 2 * p - k) / s + 1;
    const pool_t q = {N, H, W, C, OH, OW, k, s, p};
    const long M = N * OH * OW;
    if (threads < 1) threads = 1;
    if (threads > N) threads = N > 0 ? (int)N : 1;
    double *sums = (double *)calloc((size_t)(4 * C * threads), sizeof(double));
    float *kk = (float *)calloc((size_t)(6 * C), sizeof(float));
    if (!sums || !kk) {
        free(sums); free(kk);
        return 1;
    }
#pragma omp parallel num_threads(threads)
    {
        const int t = THREAD_ID, nt = THREADS;
        const long m0 = M * t / nt, m1 = M * (t + 1) / nt;
        if (gmax) bn_sums(gmax, ymax, m0, m1, C, sums + 4 * C * t, NULL);
        if (gavg) bn_sums(gavg, yavg, m0, m1, C, sums + 4 * C * t + 2 * C, NULL);
#pragma omp barrier
#pragma omp single
        {
            for (int u = 1; u < nt; u++)
                for (long c = 0; c < 4 * C; c++) sums[c] += sums[4 * C * u + c];
            /* dv = invstd * (g - mean(g) - y * mean(g * y)) = k1 g + k2 y + k3 (y normalised) */
            for (int o = 0; o < 2; o++) {
                if (!(o ? gavg : gmax)) continue;
                for (long c = 0; c < C; c++) {
                    const double invstd = stats[(3 * o + 1) * C + c];
                    const double mean_g = sums[2 * o * C + c] / M;
                    const double mean_gy = sums[(2 * o + 1) * C + c] / M;
                    kk[3 * o * C + c] = (float)invstd;
                    kk[(3 * o + 1) * C + c] = (float)(-invstd * mean_gy);
                    kk[(3 * o + 2) * C + c] = (float)(-invstd * mean_g);
                }
            }
        } /* the end of single waits for it */
        const float zero8[8] = {0};
        const v8f zero = *(const v8f *)zero8;
        for (long n = N * t / nt; n < N * (t + 1) / nt; n++) {
            const float *xn = x + n * H * W * C;
            float *dxn = dx + n * H * W * C;
            memset(dxn, 0, sizeof(float) * (size_t)(H * W * C));
            for (long oh = 0; oh < OH; oh++)
                for (long ow = 0; ow < OW; ow++) {
                    const long at = ((n * OH + oh) * OW + ow) * C;
                    long c0 = 0;
                    for (; c0 + 8 <= C; c0 += 8) {
                        v8f dm = zero, da = zero, m, a;
                        if (gmax)
                            dm = *(const v8f *)(kk + c0) * *(const v8f *)(gmax + at + c0)
                                 + *(const v8f *)(kk + C + c0) * *(const v8f *)(ymax + at + c0)
                                 + *(const v8f *)(kk + 2 * C + c0);
                        if (gavg)
                            da = *(const v8f *)(kk + 3 * C + c0) * *(const v8f *)(gavg + at + c0)
                                 + *(const v8f *)(kk + 4 * C + c0) * *(const v8f *)(yavg + at + c0)
                                 + *(const v8f *)(kk + 5 * C + c0);
                        pool8(xn, &q, oh, ow, c0, &m, &a);
                        unpool8(xn, dxn, &q, oh, ow, c0, m, dm, da);
                    }
                    for (; c0 < C; c0++) {
                        float dm = 0, da = 0, m, a;
                        if (gmax)
                            dm = kk[c0] * gmax[at + c0] + kk[C + c0] * ymax[at + c0] + kk[2 * C + c0];
                        if (gavg)
                            da = kk[3 * C + c0] * gavg[at + c0] + kk[4 * C + c0] * yavg[at + c0]
                                 + kk[5 * C + c0];
                        pool1(xn, &q, oh, ow, c0, &m, &a);
                        unpool1(xn, dxn, &q, oh, ow, c0, m, dm, da);
                    }
                }
        }
    }
    free(sums); free(kk);
    return 0;
}
