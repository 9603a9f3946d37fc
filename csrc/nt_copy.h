/* Copies that bypass the cache (non-temporal stores), for outputs far larger than
 * the caches: a normal store first reads the destination line into the cache
 * (read-for-ownership), so writing a fresh 642 MB one-hot tensor with plain
 * stores moves about twice its size over the memory bus; streaming stores move it
 * once. SSE2 (every x86-64 CPU); elsewhere a plain memcpy. */
#ifndef CHARSTREAM_NT_COPY_H
#define CHARSTREAM_NT_COPY_H

#include <stdint.h>
#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>

static inline void cs_copy_nt(uint8_t *dst, const uint8_t *src, size_t n) {
    size_t head = (16 - ((uintptr_t)dst & 15)) & 15;
    if (head > n) head = n;
    memcpy(dst, src, head);
    dst += head;
    src += head;
    n -= head;
    for (; n >= 16; n -= 16, dst += 16, src += 16)
        _mm_stream_si128((__m128i *)dst, _mm_loadu_si128((const __m128i *)src));
    memcpy(dst, src, n);
}

/* Order the streaming stores before anything that follows (another thread may
 * read the array as soon as the kernel returns). */
static inline void cs_nt_fence(void) { _mm_sfence(); }

#else
static inline void cs_copy_nt(uint8_t *dst, const uint8_t *src, size_t n) { memcpy(dst, src, n); }
static inline void cs_nt_fence(void) {}
#endif

#endif
