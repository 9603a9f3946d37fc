/* The recurrent product of one step, h (1, 128) @ R (128, 512), both ways
 * lstm_step.h can compute it, side by side in one process: its register tiles
 * (64-byte vectors) and its rows of axpy. They give the same sums up to order.
 *
 *   gcc -O3 -march=native -Icsrc benchmarks/gemm.c -o /tmp/gemm -lm && /tmp/gemm
 *
 * On an AVX2 CPU without AVX-512 the tiles ran at 3 GFLOP/s and the axpy rows at
 * 48 (AMD EPYC, 2 cores): GCC lowers a 64-byte vector there piecewise through the
 * stack. That is why cs_gemm_acc takes the tiles only where AVX-512 is.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "lstm_step.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double rate(int tiles, const float *h, const float *R, float *z, int u, int g) {
    cs_tiles_pay = tiles;
    const int n = 20000;
    const double t = now();
    for (int s = 0; s < n; s++) {
        cs_gemm_acc(z, h, u, R, u, g, 1);
        z[s % g] *= 0.5f;  /* keeps the sums bounded and the loop from being hoisted */
    }
    return n * 2.0 * u * g / (now() - t) / 1e9;
}

int main(void) {
    const int u = 128, g = 4 * u;
    float *R = malloc(sizeof(float) * u * g), *h = malloc(sizeof(float) * u);
    float *z = calloc(g, sizeof(float));
    srand(0);
    for (int i = 0; i < u * g; i++) R[i] = (rand() / (float)RAND_MAX - 0.5f) * 0.1f;
    for (int i = 0; i < u; i++) h[i] = rand() / (float)RAND_MAX;
    for (int round = 0; round < 3; round++)
        printf("register tiles %5.1f GFLOP/s   rows of axpy %5.1f GFLOP/s\n",
               rate(1, h, R, z, u, g), rate(0, h, R, z, u, g));
    free(R); free(h); free(z);
    return 0;
}
