/* The native stream step: stacked LSTM cells, the Dense layer, softmax and
 * sampling, for `batch` independent streams, in plain C with no Python objects.
 *
 * Keras's LSTM exactly: z = x @ kernel + h @ recurrent_kernel + bias, split into
 * four gates in Keras's order [i, f, g, o] (input, forget, candidate, output;
 * Keras names the candidate c, and stream.npz records the order as "ifco"):
 * i, f, o = sigmoid, g = tanh, c' = f * c + i * g, h' = o * tanh(c'). Layer 0's
 * input is one-hot, so x @ kernel is one row of the kernel.
 *
 * Matrix products are written as rows of axpy (z += a * w_row, four rows at a
 * time), which compilers vectorise; streams are processed CS_CHUNK at a time so
 * a weight row is read once from L2 per chunk while the chunk's accumulators
 * stay in L1. exp is a branch-free polynomial so the gate loops vectorise. On
 * x86-64 Linux with GCC, cs_step is compiled for AVX-512, AVX2+FMA and the
 * baseline, and the loader picks the best the CPU has (target_clones).
 */
#ifndef CHARSTREAM_LSTM_STEP_H
#define CHARSTREAM_LSTM_STEP_H

#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE__)
#include <xmmintrin.h>
/* Flush subnormal results to zero (FTZ, bit 15 of MXCSR) and treat subnormal
 * inputs as zero (DAZ, bit 6): 0x8040, as TensorFlow's CPU kernels do. A trained
 * model's gates produce subnormals, and each costs ~100 cycles in hardware. */
#define CS_FTZ_BEGIN const unsigned int cs_csr = _mm_getcsr(); _mm_setcsr(cs_csr | 0x8040);
#define CS_FTZ_END _mm_setcsr(cs_csr);
#else
#define CS_FTZ_BEGIN
#define CS_FTZ_END
#endif

#define CS_CHUNK 8

/* Helpers must inline into each target clone of cs_step, or they would be
 * compiled once, for the baseline CPU. */
#if defined(__GNUC__)
#define CS_INLINE static inline __attribute__((always_inline))
#else
#define CS_INLINE static inline
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define CS_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CS_CLONES
#endif

typedef struct {
    int layers;                     /* stacked LSTMs */
    int depth;                      /* vocabulary size */
    int batch;                      /* streams */
    const int *units;               /* [layers] */
    const float **kernel;           /* [layers] (in_k, 4 u_k); in_0 = depth */
    const float **recurrent;        /* [layers] (u_k, 4 u_k) */
    const float **bias;             /* [layers] (4 u_k) */
    const float *dense_w;           /* (u_last, depth) */
    const float *dense_b;           /* (depth) */
    float **h;                      /* [layers] (batch, u_k), updated in place */
    float **c;                      /* [layers] (batch, u_k), updated in place */
    int gmax;                       /* 4 u_max: the largest gate row */
    float *z;                       /* scratch: CS_CHUNK * gmax floats per chunk; layer k
                                       uses its chunk's as (CS_CHUNK, 4 u_k), row stride 4 u_k */
} cs_net;

CS_INLINE void cs_axpy(float *restrict y, float a, const float *restrict x, int n) {
    for (int k = 0; k < n; k++) y[k] += a * x[k];
}

/* y += a0 w0 + a1 w1 + a2 w2 + a3 w3 for four consecutive weight rows (stride ld):
 * one load and store of y per four multiply-adds. */
CS_INLINE void cs_axpy4(float *restrict y, float a0, float a1, float a2, float a3,
                            const float *restrict w, size_t ld, int n) {
    const float *restrict w0 = w, *restrict w1 = w + ld;
    const float *restrict w2 = w + 2 * ld, *restrict w3 = w + 3 * ld;
    for (int k = 0; k < n; k++) y[k] += a0 * w0[k] + a1 * w1[k] + a2 * w2[k] + a3 * w3[k];
}

/* A register tile: y[0:R, 0:64] += x[0:R, :] @ W[:, 0:64] with the R x 64
 * accumulators in vector registers for the whole reduction, so each weight vector
 * loaded feeds R multiply-adds and y is read and written once. GCC/clang vector
 * extensions: 64-byte vectors become one AVX-512 register, two AVX2 registers or
 * four SSE registers, depending on the clone. */
#define CS_TC 64
typedef float cs_v16 __attribute__((vector_size(64)));

CS_INLINE cs_v16 cs_load(const float *p) { cs_v16 v; memcpy(&v, p, sizeof v); return v; }
CS_INLINE void cs_store(float *p, cs_v16 v) { memcpy(p, &v, sizeof v); }

#define CS_TILE(R)                                                                      \
CS_INLINE void cs_tile##R(float *y, size_t ldy, const float *x, size_t ldx,         \
                              const float *W, size_t ldw, int n) {                      \
    cs_v16 acc[R][4];                                                                   \
    for (int r = 0; r < R; r++)                                                         \
        for (int q = 0; q < 4; q++) acc[r][q] = cs_load(y + r * ldy + 16 * q);          \
    for (int j = 0; j < n; j++) {                                                       \
        const float *w = W + (size_t)j * ldw;                                           \
        const cs_v16 w0 = cs_load(w), w1 = cs_load(w + 16);                             \
        const cs_v16 w2 = cs_load(w + 32), w3 = cs_load(w + 48);                        \
        for (int r = 0; r < R; r++) {                                                   \
            const float a = x[r * ldx + j];                                             \
            acc[r][0] += a * w0;                                                        \
            acc[r][1] += a * w1;                                                        \
            acc[r][2] += a * w2;                                                        \
            acc[r][3] += a * w3;                                                        \
        }                                                                               \
    }                                                                                   \
    for (int r = 0; r < R; r++)                                                         \
        for (int q = 0; q < 4; q++) cs_store(y + r * ldy + 16 * q, acc[r][q]);          \
}
CS_TILE(1)
CS_TILE(4)

/* Whether the register tiles pay: only with AVX-512, where a 64-byte vector is one
 * register. Without it GCC lowers the tiles' 64-byte vectors piecewise through the
 * stack: on an AVX2 CPU (AMD EPYC, 2 cores) the tiled product ran at 3 GFLOP/s
 * against 48 for the rows of axpy (benchmarks/gemm.c). Decided once, at run time:
 * every clone of cs_step inlines both paths and takes the same branch, so a CPU
 * always computes the same sums (results do not depend on the batch either way). */
static int cs_tiles_pay = -1;

CS_INLINE int cs_use_tiles(void) {
    if (cs_tiles_pay < 0) {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
        __builtin_cpu_init();
        cs_tiles_pay = __builtin_cpu_supports("avx512f") ? 1 : 0;
#else
        cs_tiles_pay = 0;
#endif
    }
    return cs_tiles_pay;
}

/* y[r] += x[r] @ W for the nb rows of a chunk: x (nb, n_in) with row stride ldx,
 * W (n_in, g), y (nb, g). With AVX-512, column tiles of CS_TC use the register
 * tiles; the rest (all of it without AVX-512) is rows of axpy, weight rows
 * outermost so each is read from L2 once per chunk. */
CS_INLINE void cs_gemm_acc(float *y, const float *x, int ldx, const float *W,
                               int n_in, int g, int nb) {
    const int tiled = cs_use_tiles() ? g - g % CS_TC : 0, rest = g - tiled;
    for (int k0 = 0; k0 < tiled; k0 += CS_TC) {
        int r = 0;
        for (; r + 4 <= nb; r += 4)
            cs_tile4(y + (size_t)r * g + k0, g, x + (size_t)r * ldx, ldx, W + k0, g, n_in);
        for (; r < nb; r++)
            cs_tile1(y + (size_t)r * g + k0, g, x + (size_t)r * ldx, ldx, W + k0, g, n_in);
    }
    if (!rest) return;
    /* The last `rest` columns: rows of axpy over the row stride g. */
    int j = 0;
    for (; j + 4 <= n_in; j += 4) {
        const float *w = W + (size_t)j * g + tiled;
        for (int r = 0; r < nb; r++) {
            const float *xr = x + (size_t)r * ldx + j;
            cs_axpy4(y + (size_t)r * g + tiled, xr[0], xr[1], xr[2], xr[3], w, g, rest);
        }
    }
    for (; j < n_in; j++)
        for (int r = 0; r < nb; r++)
            cs_axpy(y + (size_t)r * g + tiled, x[(size_t)r * ldx + j],
                    W + (size_t)j * g + tiled, rest);
}

/* exp(x) for float, branch-free so the gate loops vectorise (libm's expf is a
 * call per element): Cody-Waite range reduction and Cephes's degree-6
 * polynomial, within 2 ulp of expf over the clamped range [-87, 88]. */
CS_INLINE float cs_expf(float x) {
    x = x < -87.0f ? -87.0f : x;    /* selects, not branches: the loops stay vectorised */
    x = x > 88.0f ? 88.0f : x;
    /* n = round(x / ln 2) by the 1.5 * 2^23 trick: exact and branch-free. */
    const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    const float f = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * f + 1.3981999507e-3f;
    p = p * f + 8.3334519073e-3f;
    p = p * f + 4.1665795894e-2f;
    p = p * f + 1.6666665459e-1f;
    p = p * f + 5.0000001201e-1f;
    p = p * f * f + f + 1.0f;
    union { int32_t i; float f; } scale;
    scale.i = ((int32_t)n + 127) << 23;
    return p * scale.f;
}

CS_INLINE float cs_sigmoid(float x) { return 1.0f / (1.0f + cs_expf(-x)); }

/* tanh(x) = 1 - 2 / (1 + exp(2x)): absolute error about 1e-7 near 0. */
CS_INLINE float cs_tanh(float x) { return 1.0f - 2.0f / (1.0f + cs_expf(2.0f * x)); }

/* Gates in place, one simple loop per activation so each vectorises. */
CS_INLINE void cs_sigmoid_n(float *restrict x, int n) {
    for (int j = 0; j < n; j++) x[j] = cs_sigmoid(x[j]);
}

CS_INLINE void cs_tanh_n(float *restrict x, int n) {
    for (int j = 0; j < n; j++) x[j] = cs_tanh(x[j]);
}

/* c' = f c + i g, h' = o tanh(c') over one stream's activated gates z = [i, f, g, o]. */
CS_INLINE void cs_cell(const float *restrict z, float *restrict h, float *restrict c, int u) {
    const float *restrict i_g = z, *restrict f_g = z + u, *restrict g_g = z + 2 * u;
    const float *restrict o_g = z + 3 * u;
    for (int j = 0; j < u; j++) {
        const float cn = f_g[j] * c[j] + i_g[j] * g_g[j];
        c[j] = cn;
        h[j] = o_g[j] * cs_tanh(cn);
    }
}

/* softmax(logits * inv) into p[0:depth] (double), inv = 1 / temperature as a
 * finite float. The exponentials are cs_expf (float, vectorised): libm's double
 * exp was half of a batched step. */
CS_INLINE void cs_softmax(const float *logits, int depth, float inv, double *p) {
    float m = logits[0];
    for (int i = 1; i < depth; i++) m = logits[i] > m ? logits[i] : m;
    double total = 0.0;
    for (int i = 0; i < depth; i++) {
        p[i] = cs_expf((logits[i] - m) * inv);
        total += p[i];
    }
    for (int i = 0; i < depth; i++) p[i] /= total;
}

/* The first maximum of logits[0:depth]. */
CS_INLINE int32_t cs_argmax(const float *logits, int depth) {
    int best = 0;
    for (int i = 1; i < depth; i++) if (logits[i] > logits[best]) best = i;
    return best;
}

/* order[0:depth] = the ids by p descending, ties to the lower id (an insertion
 * sort: depth <= 256). */
CS_INLINE void cs_order(const double *p, int depth, int *order) {
    for (int i = 0; i < depth; i++) {
        int j = i;
        while (j > 0 && p[order[j - 1]] < p[i]) { order[j] = order[j - 1]; j--; }
        order[j] = i;
    }
}

/* Sample one id under charstream's contract (see charstream/streaming/sampling.py):
 * temperature 0 is argmax (first maximum), and so is a temperature whose
 * inverse is no float32 (below about 2.9e-39, where inf * 0 would be NaN).
 * Otherwise p = softmax(logits / T), then, in this order, each on what the
 * previous left: keep the top_k most likely (ties to the lower id; <= 0 keeps
 * all); keep the fewest most likely whose sum reaches top_p of what is left
 * (>= 1 keeps all); drop those below min_p times the most likely (<= 0 keeps
 * all). Return the first id whose cumulative weight exceeds u times the total.
 * p: depth doubles of scratch, left holding the kept weights; *kept: their
 * total, or 0 for argmax (a point mass; p untouched). */
CS_INLINE int32_t cs_sample(const float *logits, int depth, double temperature, int top_k,
                            double top_p, double min_p, double u, double *p, double *kept) {
    const float inv = (float)(1.0 / temperature);
    if (temperature == 0.0 || isinf(inv)) {
        *kept = 0.0;
        return cs_argmax(logits, depth);
    }
    cs_softmax(logits, depth, inv, p);
    if ((top_k > 0 && top_k < depth) || top_p < 1.0 || min_p > 0.0) {
        int order[256], keep = top_k > 0 && top_k < depth ? top_k : depth;
        cs_order(p, depth, order);
        for (int r = keep; r < depth; r++) p[order[r]] = 0.0;
        if (top_p < 1.0) {
            double total = 0.0, acc = 0.0;
            for (int i = 0; i < depth; i++) total += p[i];
            for (int r = 0; r < keep; r++) {
                acc += p[order[r]];
                if (acc >= top_p * total) { keep = r + 1; break; }
            }
        }
        if (min_p > 0.0) {
            const double floor = min_p * p[order[0]];
            for (int r = 1; r < keep; r++) if (p[order[r]] < floor) { keep = r; break; }
        }
        for (int r = keep; r < depth; r++) p[order[r]] = 0.0;
    }
    {
        double total = 0.0, acc = 0.0, target;
        for (int i = 0; i < depth; i++) total += p[i];
        *kept = total;
        target = u * total;
        for (int i = 0; i < depth; i++) {
            acc += p[i];
            if (acc > target) return i;
        }
        return depth - 1;
    }
}

#define CS_TOP 5   /* the most log-probabilities a row reports */

/* The n (<= CS_TOP) largest weights of p (ties to the lower id; zeros never) as
 * ids and log(p / total); the rest of the CS_TOP places get id -1. */
CS_INLINE void cs_top(const double *p, int depth, int n, double total,
                      int32_t *ids, double *lp) {
    for (int k = 0; k < CS_TOP; k++) {
        int best = -1;
        if (k < n)
            for (int i = 0; i < depth; i++) {
                int taken = 0;
                for (int j = 0; j < k; j++) taken |= ids[j] == i;
                if (!taken && p[i] > 0.0 && (best < 0 || p[i] > p[best])) best = i;
            }
        ids[k] = best;
        lp[k] = best < 0 ? 0.0 : log(p[best] / total);
    }
}

/* Sampling done inside cs_step, per stream, on the core that computed it; each
 * stream has its own settings (streams of a server batch differ). Arrays
 * marked "or NULL" are optional. */
typedef struct {
    const double *temperature;  /* (batch) */
    const int *top_k;           /* (batch); <= 0 keeps every id */
    const double *top_p;        /* (batch) or NULL: keep all */
    const double *min_p;        /* (batch) or NULL: keep all */
    const double *u;            /* (batch) uniforms */
    int32_t *out;               /* (batch) sampled ids */
    double *p;                  /* (batch, depth) scratch */
    /* Log-probabilities, when `want` is given: a row with want[b] >= 0 reports
     * the log-probability of its id in logprob[b] and its want[b] most likely
     * ids in top_ids/top_lp[b, :], under the distribution it sampled from (a
     * point mass for argmax). A row with score[b] >= 0 samples nothing: it
     * reports score[b]'s log-probability under the model (temperature 1,
     * nothing cut, clipped below at 1e-12 as evaluation clips it) and its
     * want[b] most likely ids, and out[b] = score[b]. */
    const int *want;            /* (batch) or NULL */
    const int32_t *score;       /* (batch) or NULL */
    double *logprob;            /* (batch) */
    int32_t *top_ids;           /* (batch, CS_TOP) */
    double *top_lp;             /* (batch, CS_TOP) */
} cs_sampling;

/* Stream b's sample (or score) from its logits, under `s`. */
CS_INLINE void cs_sample_row(const cs_sampling *s, int b, const float *logits, int d) {
    double *p = s->p + (size_t)b * d, kept;
    int32_t *ids = s->top_ids ? s->top_ids + (size_t)b * CS_TOP : NULL;
    double *lp = s->top_lp ? s->top_lp + (size_t)b * CS_TOP : NULL;
    const int want = s->want ? s->want[b] : -1;
    const int32_t score = s->score ? s->score[b] : -1;
    if (score >= 0) {
        cs_softmax(logits, d, 1.0f, p);
        s->out[b] = score;
        if (want >= 0) {
            s->logprob[b] = log(p[score] > 1e-12 ? p[score] : 1e-12);
            cs_top(p, d, want, 1.0, ids, lp);
        }
        return;
    }
    const int32_t id = s->out[b] = cs_sample(
        logits, d, s->temperature[b], s->top_k[b], s->top_p ? s->top_p[b] : 1.0,
        s->min_p ? s->min_p[b] : 0.0, s->u[b], p, &kept);
    if (want < 0) return;
    if (kept == 0.0) {  /* argmax: all the mass on id */
        s->logprob[b] = 0.0;
        for (int k = 0; k < CS_TOP; k++) { ids[k] = k == 0 && want > 0 ? id : -1; lp[k] = 0.0; }
        return;
    }
    s->logprob[b] = log(p[id] / kept);
    cs_top(p, d, want, kept, ids, lp);
}

/* One step of every stream: feed ids[b] to stream b, leave its next-character
 * logits in logits[b * depth : (b + 1) * depth], and, when `sampling` is given,
 * sample each stream's next id into sampling->out[b]. */
CS_CLONES
static void cs_step(const cs_net *net, const int32_t *ids, float *logits,
                    const cs_sampling *sampling) {
    const int B = net->batch, chunks = (B + CS_CHUNK - 1) / CS_CHUNK;
    (void)cs_use_tiles();  /* decided before the threads read it */
    /* Chunks of streams are independent: with OpenMP, one per core. */
#pragma omp parallel for schedule(static) if (chunks > 1)
    for (int ci = 0; ci < chunks; ci++) {
        CS_FTZ_BEGIN  /* per chunk: each OpenMP thread has its own control register */
        const int b0 = ci * CS_CHUNK;
        const int nb = B - b0 < CS_CHUNK ? B - b0 : CS_CHUNK;
        for (int k = 0; k < net->layers; k++) {
            const int u = net->units[k], g = 4 * u;
            const int in = k == 0 ? net->depth : net->units[k - 1];
            float *z = net->z + (size_t)ci * CS_CHUNK * net->gmax;
            for (int r = 0; r < nb; r++) {
                float *zr = z + (size_t)r * g;
                const float *bias = net->bias[k];
                if (k == 0) {  /* one-hot input: x @ kernel is one kernel row */
                    const float *row = net->kernel[0] + (size_t)ids[b0 + r] * g;
                    for (int j = 0; j < g; j++) zr[j] = bias[j] + row[j];
                } else {
                    memcpy(zr, bias, sizeof(float) * g);
                }
            }
            if (k > 0)  /* the layer below's new h */
                cs_gemm_acc(z, net->h[k - 1] + (size_t)b0 * in, in, net->kernel[k], in, g, nb);
            cs_gemm_acc(z, net->h[k] + (size_t)b0 * u, u, net->recurrent[k], u, g, nb);
            for (int r = 0; r < nb; r++) {
                float *zr = z + (size_t)r * g;
                cs_sigmoid_n(zr, 2 * u);          /* i, f */
                cs_tanh_n(zr + 2 * u, u);         /* g, the candidate */
                cs_sigmoid_n(zr + 3 * u, u);      /* o */
                cs_cell(zr, net->h[k] + (size_t)(b0 + r) * u, net->c[k] + (size_t)(b0 + r) * u, u);
            }
        }
        {
            const int u = net->units[net->layers - 1], d = net->depth;
            float *out = logits + (size_t)b0 * d;
            for (int r = 0; r < nb; r++) memcpy(out + (size_t)r * d, net->dense_b, sizeof(float) * d);
            cs_gemm_acc(out, net->h[net->layers - 1] + (size_t)b0 * u, u, net->dense_w, u, d, nb);
            if (sampling)
                for (int r = 0; r < nb; r++)
                    cs_sample_row(sampling, b0 + r, out + (size_t)r * d, d);
        }
        CS_FTZ_END
    }
}

#endif
