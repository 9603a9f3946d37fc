# charstream.streaming._lstm, the native LSTM step: a Python-level class that checks and owns the weights
# and state, around the C kernel in lstm_step.h (cs_step, cs_sample), which runs
# without the GIL. One call per character does every layer, the Dense layer, the
# softmax and the sampling for all streams of the batch.

from libc.stdint cimport int32_t, int64_t, uint8_t
from libc.math cimport log
from libc.stdlib cimport calloc, free

import numpy as np

cdef extern from "lstm_step.h" nogil:
    ctypedef struct cs_net:
        int layers
        int depth
        int batch
        const int* units
        const float** kernel
        const float** recurrent
        const float** bias
        const float* dense_w
        const float* dense_b
        float** h
        float** c
        int gmax
        float* z
    ctypedef struct cs_sampling:
        const double* temperature
        const int* top_k
        const double* top_p
        const double* min_p
        const double* u
        int32_t* out
        double* p
        const int* want
        const int32_t* score
        double* logprob
        int32_t* top_ids
        double* top_lp
    int CS_CHUNK
    int CS_TOP
    void cs_step(const cs_net* net, const int32_t* ids, float* logits,
                 const cs_sampling* sampling)
    void cs_softmax(const float* logits, int depth, float inv, double* p)
    int32_t cs_sample(const float* logits, int depth, double temperature, int top_k,
                      double top_p, double min_p, double u, double* p, double* kept)


TOP = CS_TOP    # the most log-probabilities a row reports


cdef int _check_rule(double temperature, double top_p, double min_p, str at) except -1:
    if not 0 <= temperature < float("inf"):
        raise ValueError(f"temperature{at} must be a finite number >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p{at} must be in (0, 1], got {top_p}")
    if not 0 <= min_p <= 1:
        raise ValueError(f"min_p{at} must be in [0, 1], got {min_p}")
    return 0


cdef void _zero(cs_sampling* s) noexcept nogil:
    s.top_p = s.min_p = NULL
    s.want = NULL
    s.score = NULL
    s.logprob = s.top_lp = NULL
    s.top_ids = NULL


def _f32(array, name, shape):
    """A checked float32 copy of `array`, starting on a 64-byte boundary: a vector
    load that straddles two cache lines costs two (arrays read from an .npz come
    at arbitrary offsets, and the kernel ran 1.6x slower on them)."""
    src = np.asarray(array)
    if src.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {src.shape}")
    n = int(np.prod(shape))
    raw = np.empty(n + 16, dtype=np.float32)
    skip = (-raw.ctypes.data % 64) // 4
    arr = raw[skip:skip + n].reshape(shape)
    arr[...] = src
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds non-finite values")
    return arr


cdef extern from *:
    """
    /* The ring's count is published after the id it counts (the readers on the
     * event loop read the count, then the ids), and the readers' count is read
     * fresh each tick: they move it while the ticks run. */
    #if defined(__GNUC__)
    static inline void cs_publish(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline int64_t cs_seen(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    #else
    static inline void cs_publish(int64_t *p, int64_t v) { *(volatile int64_t *)p = v; }
    static inline int64_t cs_seen(const int64_t *p) { return *(const volatile int64_t *)p; }
    #endif
    """
    void cs_publish(int64_t* p, int64_t v) nogil
    int64_t cs_seen(const int64_t* p) nogil


cdef struct _Book:
    # A serving batch's bookkeeping (`charstream.serving.slots.Slots`): per-slot
    # arrays (indexed by slot), `slot[b]` the slot of row b, and per-row scratch.
    int rows, depth, max_prime, uniforms, buffer, n_watch
    const int64_t* slot
    int32_t* next
    int64_t* feed_left
    const int32_t* prime        # (slots, max_prime)
    int64_t* prime_pos
    const double* temperature
    const int* top_k
    const double* top_p         # NULL: every slot keeps all the mass
    const double* min_p
    const double* u             # (slots, uniforms)
    int64_t* u_pos
    int32_t* ring               # (slots, buffer)
    int64_t* written
    const int64_t* read
    const int64_t* limit
    const uint8_t* stop_end     # (slots, depth); NULL: no slot has stops
    const int64_t* watch
    uint8_t* hit                # (rows,): the last tick sampled an id that may end a stop
    int32_t* ids                # (rows,) scratch: this tick's ids and settings
    double* t_row
    int* k_row
    double* u_row
    double* p_row
    double* m_row


cdef int _book_ticks(cs_net* part, float* logits, cs_sampling* smp, _Book* k, int max_ticks,
                     int64_t* produced) noexcept nogil:
    """Up to `max_ticks` ticks of `Slots.work` (the Python loop is its twin):
    returns the ticks run, after the first that ends a row, fills a ring, writes
    a watched slot's first id, uses a slot's last uniform or samples a possible
    stop end; `-1 - b` if row b's id is out of range (nothing stepped)."""
    cdef int ticks = 0, b, stop
    cdef int64_t s, w
    cdef int32_t new, fid
    while ticks < max_ticks:
        for b in range(k.rows):
            s = k.slot[b]
            fid = k.next[s]
            if fid < 0 or fid >= k.depth:
                return -1 - b
            k.ids[b] = fid
            if k.feed_left[s] > 0:      # feeding its prime: argmax, the cheapest
                k.t_row[b], k.k_row[b] = 0.0, 0
            else:
                k.t_row[b], k.k_row[b] = k.temperature[s], k.top_k[s]
            k.u_row[b] = k.u[s * k.uniforms + k.u_pos[s]]
            if k.top_p != NULL:
                k.p_row[b], k.m_row[b] = k.top_p[s], k.min_p[s]
        cs_step(part, k.ids, logits, smp)
        ticks += 1
        stop = 0
        for b in range(k.rows):
            s = k.slot[b]
            k.hit[b] = 0
            if k.feed_left[s] > 0:
                k.prime_pos[s] += 1
                k.feed_left[s] -= 1
                k.next[s] = k.prime[s * k.max_prime + k.prime_pos[s]]
            elif k.written[s] < k.limit[s]:
                new, w = smp.out[b], k.written[s]
                k.ring[s * k.buffer + w % k.buffer] = new
                cs_publish(&k.written[s], w + 1)
                k.next[s] = new
                k.u_pos[s] += 1
                produced[0] += 1
                if k.u_pos[s] == k.uniforms:
                    stop = 1
                if k.stop_end != NULL and k.stop_end[s * k.depth + new]:
                    k.hit[b], stop = 1, 1
        if stop:
            return ticks
        for b in range(k.rows):
            s = k.slot[b]
            if ((k.feed_left[s] == 0 and k.written[s] >= k.limit[s])
                    or k.written[s] - cs_seen(&k.read[s]) >= k.buffer):
                return ticks
        for b in range(k.n_watch):
            if k.written[k.watch[b]] > 0:
                return ticks
    return ticks


cdef class NativeLSTM:
    """Stacked LSTM + Dense softmax for `batch` streams, stepped in C.

    Args:
        lstms: one `(kernel, recurrent_kernel, bias)` per layer, bottom first, as
            Keras's `LSTM.get_weights()` gives them: `(in, 4u)`, `(u, 4u)`, `(4u,)`
            float32, gates in Keras's order `[i, f, g, o]` (g, the candidate, is
            what Keras calls c); `in` is `depth` for
            layer 0 and the layer below's `u` otherwise.
        dense_kernel: `(u_last, depth)`.
        dense_bias: `(depth,)`, 1 <= depth <= 256.
        batch: independent streams advanced together.

    Raises:
        ValueError: for inconsistent shapes, non-finite weights or `batch < 1`.
    """
    cdef cs_net net
    cdef int* _units
    cdef const float** _kernel
    cdef const float** _recurrent
    cdef const float** _bias
    cdef float** _h
    cdef float** _c
    cdef list _weights       # owners of the weight buffers the net's pointers point into
    cdef list _h_state       # (batch, u) float32 per layer: the arrays _h points into
    cdef list _c_state       # (batch, u) float32 per layer: the arrays _c points into
    cdef object _z
    cdef float[:, ::1] _logits
    cdef double[:, ::1] _p
    cdef double[::1] _temperature   # per-stream settings for the scalar APIs
    cdef int[::1] _top_k
    cdef readonly int depth, batch, layers
    cdef readonly tuple units
    cdef readonly long flops_per_step

    def __cinit__(self):
        self._units = NULL
        self._kernel = self._recurrent = self._bias = NULL
        self._h = self._c = NULL

    def __init__(self, lstms, dense_kernel, dense_bias, int batch=1):
        lstms = list(lstms)
        if not lstms:
            raise ValueError("at least one LSTM layer is needed")
        if batch < 1:
            raise ValueError(f"batch must be a positive integer, got {batch}")
        bias_d = np.asarray(dense_bias)
        if bias_d.ndim != 1 or not 1 <= bias_d.shape[0] <= 256:
            raise ValueError(f"dense bias must have shape (depth,) with 1 <= depth <= 256, "
                             f"got {bias_d.shape}")
        cdef int depth = bias_d.shape[0], n = len(lstms), k, u, inp = depth
        self._weights, self._h_state, self._c_state = [], [], []
        units, flops = [], 0
        self._units = <int*>calloc(n, sizeof(int))
        self._kernel = <const float**>calloc(n, sizeof(float*))
        self._recurrent = <const float**>calloc(n, sizeof(float*))
        self._bias = <const float**>calloc(n, sizeof(float*))
        self._h = <float**>calloc(n, sizeof(float*))
        self._c = <float**>calloc(n, sizeof(float*))
        if not (self._units and self._kernel and self._recurrent and self._bias
                and self._h and self._c):
            raise MemoryError()
        cdef float[:, ::1] m2
        cdef float[::1] m1
        for k in range(n):
            try:
                kernel, recurrent, bias = lstms[k]
            except (TypeError, ValueError):
                raise ValueError(f"layer {k}: expected (kernel, recurrent_kernel, bias)") from None
            if np.ndim(recurrent) != 2:
                raise ValueError(f"layer {k}: recurrent kernel must be 2-D, got {np.shape(recurrent)}")
            u = np.shape(recurrent)[0]
            if u < 1:
                raise ValueError(f"layer {k}: no units")
            kernel = _f32(kernel, f"layer {k} kernel", (inp, 4 * u))
            recurrent = _f32(recurrent, f"layer {k} recurrent kernel", (u, 4 * u))
            bias = _f32(bias, f"layer {k} bias", (4 * u,))
            h = _f32(np.zeros((batch, u)), f"layer {k} h", (batch, u))
            c = _f32(np.zeros((batch, u)), f"layer {k} c", (batch, u))
            self._weights += [kernel, recurrent, bias]
            self._h_state.append(h)
            self._c_state.append(c)
            self._units[k] = u
            m2 = kernel
            self._kernel[k] = &m2[0, 0]
            m2 = recurrent
            self._recurrent[k] = &m2[0, 0]
            m1 = bias
            self._bias[k] = &m1[0]
            m2 = h
            self._h[k] = &m2[0, 0]
            m2 = c
            self._c[k] = &m2[0, 0]
            # multiply-adds: the recurrent product, the input product (a row
            # gather for layer 0's one-hot), plus about 10 flops per unit for gates.
            flops += 2 * u * 4 * u + (0 if k == 0 else 2 * inp * 4 * u) + 4 * u + 10 * u
            units.append(u)
            inp = u
        dense_kernel = _f32(dense_kernel, "dense kernel", (inp, depth))
        dense_bias = _f32(dense_bias, "dense bias", (depth,))
        self._weights += [dense_kernel, dense_bias]
        m2 = dense_kernel
        self.net.dense_w = &m2[0, 0]
        m1 = dense_bias
        self.net.dense_b = &m1[0]
        chunks = (batch + CS_CHUNK - 1) // CS_CHUNK
        self._z = _f32(np.zeros(chunks * CS_CHUNK * 4 * max(units)), "scratch",
                       (chunks * CS_CHUNK * 4 * max(units),))
        self.net.gmax = 4 * max(units)
        m1 = self._z
        self.net.z = &m1[0]
        self.net.layers = n
        self.net.depth = depth
        self.net.batch = batch
        self.net.units = self._units
        self.net.kernel = self._kernel
        self.net.recurrent = self._recurrent
        self.net.bias = self._bias
        self.net.h = self._h
        self.net.c = self._c
        self._logits = _f32(np.zeros((batch, depth)), "logits", (batch, depth))
        self._p = np.zeros((batch, depth), np.float64)
        self._temperature = np.zeros(batch, np.float64)
        self._top_k = np.zeros(batch, np.intc)
        self.depth, self.batch, self.layers = depth, batch, n
        self.units = tuple(units)
        self.flops_per_step = flops + 2 * inp * depth + 4 * depth

    def __dealloc__(self):
        free(self._units)
        free(self._kernel)
        free(self._recurrent)
        free(self._bias)
        free(self._h)
        free(self._c)

    def reset(self, rows=None):
        """Zero the state of every stream, or of the streams where `rows` is True."""
        for h, c in zip(self._h_state, self._c_state):
            if rows is None:
                h.fill(0)
                c.fill(0)
            else:
                mask = np.asarray(rows, dtype=bool)
                if mask.shape != (self.batch,):
                    raise ValueError(f"rows must have shape ({self.batch},), got {mask.shape}")
                h[mask] = 0
                c[mask] = 0

    def state(self):
        """Copies of `(h, c)` for each layer, each `(batch, units)`."""
        return [(h.copy(), c.copy()) for h, c in zip(self._h_state, self._c_state)]

    cdef _ids(self, ids):
        arr = np.asarray(ids)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers, got dtype {arr.dtype}")
        if arr.shape != (self.batch,):
            raise ValueError(f"ids must have shape ({self.batch},), got {np.shape(ids)}")
        if arr.dtype != np.int32 or not arr.flags.c_contiguous:
            if arr.size and (arr.min() < 0 or arr.max() >= self.depth):
                k = int(np.flatnonzero((arr < 0) | (arr >= self.depth))[0])
                raise ValueError(f"ids[{k}] = {arr[k]} is out of range for depth {self.depth}")
            return np.ascontiguousarray(arr, dtype=np.int32)
        cdef const int32_t[::1] v = arr   # the common case: the kernel's own output
        cdef Py_ssize_t b
        for b in range(v.shape[0]):
            if not 0 <= v[b] < self.depth:
                raise ValueError(f"ids[{b}] = {v[b]} is out of range for depth {self.depth}")
        return arr

    def probs(self, ids):
        """Feed `ids[b]` to stream b; return the `(batch, depth)` float64 softmax."""
        cdef int32_t[::1] iv = self._ids(ids)
        out = np.empty((self.batch, self.depth), np.float64)
        cdef double[:, ::1] ov = out
        cdef int b
        with nogil:
            cs_step(&self.net, &iv[0], &self._logits[0, 0], NULL)
            for b in range(self.net.batch):
                cs_softmax(&self._logits[b, 0], self.net.depth, 1.0, &ov[b, 0])
        return out

    cdef int _check_single(self, str what, int char_id, double temperature, double top_p,
                           double min_p) except -1:
        if self.net.batch != 1:
            raise ValueError(f"{what} needs batch 1, this net has batch {self.net.batch}")
        if not 0 <= char_id < self.net.depth:
            raise ValueError(f"id {char_id} is out of range for depth {self.net.depth}")
        return _check_rule(temperature, top_p, min_p, "")

    cpdef int step_sample1(self, int char_id, double temperature, int top_k, double u,
                           double top_p=1.0, double min_p=0.0) except -1:
        """The single-stream fast path of `step_sample_into`: scalars in, the id out.

        `top_k <= 0` keeps every id. Requires `batch == 1`.
        """
        self._check_single("step_sample1", char_id, temperature, top_p, min_p)
        cdef int32_t cid = char_id, out
        cdef int k = top_k
        cdef cs_sampling s
        _zero(&s)
        s.temperature, s.top_k, s.u, s.out, s.p = &temperature, &k, &u, &out, &self._p[0, 0]
        s.top_p, s.min_p = &top_p, &min_p
        with nogil:
            cs_step(&self.net, &cid, &self._logits[0, 0], &s)
        return out

    def step_sample_logprobs(self, int char_id, double temperature, int top_k, double u,
                             double top_p=1.0, double min_p=0.0, int want=0, int score=-1):
        """`step_sample1` that also reports log-probabilities (batch 1): feed
        `char_id`, sample (or, with `score >= 0`, score that id under the model
        instead), and return `(id, logprob, top)`: the id, its log-probability
        under the distribution it was sampled from, and the `want` (<= `TOP`)
        most likely `(id, logprob)` pairs of that distribution."""
        self._check_single("step_sample_logprobs", char_id, temperature, top_p, min_p)
        if not 0 <= want <= CS_TOP:
            raise ValueError(f"want must be in [0, {CS_TOP}], got {want}")
        if not -1 <= score < self.net.depth:
            raise ValueError(f"score must be -1 or an id below {self.net.depth}, got {score}")
        cdef int32_t cid = char_id, out, sc = score
        cdef int k = top_k, w = want
        cdef double lp
        cdef int32_t ids[8]
        cdef double lps[8]
        cdef cs_sampling s
        _zero(&s)
        s.temperature, s.top_k, s.u, s.out, s.p = &temperature, &k, &u, &out, &self._p[0, 0]
        s.top_p, s.min_p, s.want, s.score = &top_p, &min_p, &w, &sc
        s.logprob, s.top_ids, s.top_lp = &lp, &ids[0], &lps[0]
        with nogil:
            cs_step(&self.net, &cid, &self._logits[0, 0], &s)
        return out, lp, [(ids[j], lps[j]) for j in range(CS_TOP) if ids[j] >= 0]

    def sample_many(self, int first_id, int n, double temperature, int top_k, u,
                    double top_p=1.0, double min_p=0.0):
        """Run `n` steps of a single stream in one call: feed `first_id`, sample with
        `u[0]`, feed that, ... Returns the `(n,)` int32 ids (as `n` calls of
        `step_sample1` would)."""
        self._check_single("sample_many", first_id, temperature, top_p, min_p)
        uarr = np.ascontiguousarray(u, dtype=np.float64)
        if n < 0 or uarr.shape != (n,):
            raise ValueError(f"u must have shape ({n},), got {uarr.shape}")
        out = np.empty(n, np.int32)
        if n == 0:
            return out
        cdef int32_t[::1] ov = out
        cdef double[::1] uv = uarr
        cdef int32_t cid = first_id
        cdef int i, k = top_k
        cdef cs_sampling s
        _zero(&s)
        s.temperature, s.top_k, s.p = &temperature, &k, &self._p[0, 0]
        s.top_p, s.min_p = &top_p, &min_p
        with nogil:
            for i in range(n):
                s.u = &uv[i]
                s.out = &ov[i]
                cs_step(&self.net, &cid, &self._logits[0, 0], &s)
                cid = ov[i]
        return out

    def score(self, ids):
        """Feed `ids[0 .. n-2]` to the stream (batch 1), from its current state, and
        score each next id: what a continuous stream's held-out loss is made of.

        Returns:
            `(nll, hit)`: float64 `(n - 1,)` with `nll[k] = -log p(ids[k + 1])`
            (p clipped below at 1e-12) and bool `(n - 1,)`, whether `ids[k + 1]`
            was the most likely id (the first maximum).
        """
        arr = self._ids_1d(ids)
        cdef Py_ssize_t n = arr.shape[0], k
        nll = np.zeros(max(n - 1, 0), np.float64)
        hit = np.zeros(max(n - 1, 0), np.bool_)
        if n < 2:
            return nll, hit
        cdef const int32_t[::1] iv = arr
        cdef double[::1] nv = nll
        cdef unsigned char[::1] hv = hit.view(np.uint8)
        cdef float* logits = &self._logits[0, 0]
        cdef int d = self.net.depth, j, best, want = 0
        cdef int32_t out
        cdef int32_t top[8]
        cdef double lp, temperature = 1.0, u = 0.0
        cdef double top_lp[8]
        cdef int top_k = 0
        cdef cs_sampling s
        _zero(&s)
        # Scored inside the step (as a server's echo is), so the same float
        # environment computes both: bit for bit the same numbers.
        s.temperature, s.top_k, s.u, s.out, s.p = &temperature, &top_k, &u, &out, &self._p[0, 0]
        s.want, s.logprob, s.top_ids, s.top_lp = &want, &lp, &top[0], &top_lp[0]
        with nogil:
            for k in range(n - 1):
                s.score = &iv[k + 1]
                cs_step(&self.net, &iv[k], logits, &s)
                nv[k] = -lp
                best = 0
                for j in range(1, d):
                    if logits[j] > logits[best]:
                        best = j
                hv[k] = best == iv[k + 1]
        return nll, hit

    cdef _ids_1d(self, ids):
        """`ids` as a checked contiguous int32 array for a single stream."""
        if self.net.batch != 1:
            raise ValueError(f"score needs batch 1, this net has batch {self.net.batch}")
        arr = np.asarray(ids)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"ids must be integers, got dtype {arr.dtype}")
        if arr.ndim != 1:
            raise ValueError(f"ids must be 1-D, got shape {arr.shape}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.depth):
            k = int(np.flatnonzero((arr < 0) | (arr >= self.depth))[0])
            raise ValueError(f"ids[{k}] = {arr[k]} is out of range for depth {self.depth}")
        return np.ascontiguousarray(arr, dtype=np.int32)

    cpdef step_sample_into(self, const int32_t[::1] ids, double temperature, int top_k,
                           const double[::1] u, int32_t[::1] out):
        """Feed `ids[b]` to stream b and sample its next id with the uniform `u[b]`
        into `out[b]` (no allocation: the batched iterator alternates two buffers).
        Temperature 0 is argmax; `top_k <= 0` keeps every id."""
        cdef int b, n = self.net.batch
        if ids.shape[0] != n or u.shape[0] != n or out.shape[0] != n:
            raise ValueError(f"ids, u and out must each hold {n} values")
        if not 0 <= temperature < float("inf"):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        for b in range(n):
            if not 0 <= ids[b] < self.net.depth:
                raise ValueError(f"ids[{b}] = {ids[b]} is out of range for depth {self.net.depth}")
        self._temperature[:] = temperature
        self._top_k[:] = top_k
        cdef cs_sampling s
        _zero(&s)
        s.temperature, s.top_k = &self._temperature[0], &self._top_k[0]
        s.u, s.out, s.p = &u[0], &out[0], &self._p[0, 0]
        with nogil:
            cs_step(&self.net, &ids[0], &self._logits[0, 0], &s)

    def step_rows(self, int rows, const int32_t[::1] ids, const double[::1] temperature,
                  const int[::1] top_k, const double[::1] u, int32_t[::1] out,
                  const double[::1] top_p=None, const double[::1] min_p=None,
                  const int[::1] want=None, const int32_t[::1] score=None,
                  double[::1] logprob=None, int32_t[:, ::1] top_ids=None,
                  double[:, ::1] top_lp=None):
        """Step streams `0 .. rows - 1` only, each with its own settings: feed
        `ids[b]`, sample into `out[b]` with `u[b]`; streams `rows ..` keep their
        state untouched. A continuous-batching server keeps its active streams in
        the first rows, so a tick costs what its active streams need.

        Optional, per row: `top_p`, `min_p` (as `cs_sample` applies them); with
        `want` (and `logprob` `(rows,)`, `top_ids` and `top_lp` `(rows, TOP)`),
        rows with `want[b] >= 0` report log-probabilities, and rows with
        `score[b] >= 0` score that id instead of sampling (see `cs_sampling`)."""
        cdef int b
        if not 0 <= rows <= self.net.batch:
            raise ValueError(f"rows must be in [0, {self.net.batch}], got {rows}")
        for arr, name in ((ids, "ids"), (temperature, "temperature"), (top_k, "top_k"),
                          (u, "u"), (out, "out"), (top_p, "top_p"), (min_p, "min_p"),
                          (want, "want"), (score, "score"), (logprob, "logprob"),
                          (top_ids, "top_ids"), (top_lp, "top_lp")):
            if arr is not None and arr.shape[0] < rows:
                raise ValueError(f"{name} must hold at least {rows} values, got {arr.shape[0]}")
        if want is not None and (logprob is None or top_ids is None or top_lp is None
                                 or top_ids.shape[1] != CS_TOP or top_lp.shape[1] != CS_TOP):
            raise ValueError(f"want needs logprob (rows,), top_ids and top_lp (rows, {CS_TOP})")
        if score is not None and want is None:
            raise ValueError("score needs want")
        for b in range(rows):
            if not 0 <= ids[b] < self.net.depth:
                raise ValueError(f"ids[{b}] = {ids[b]} is out of range for depth {self.net.depth}")
            _check_rule(temperature[b], 1.0 if top_p is None else top_p[b],
                        0.0 if min_p is None else min_p[b], f"[{b}]")
            if want is not None and not -1 <= want[b] <= CS_TOP:
                raise ValueError(f"want[{b}] must be in [-1, {CS_TOP}], got {want[b]}")
            if score is not None and not -1 <= score[b] < self.net.depth:
                raise ValueError(f"score[{b}] = {score[b]} is out of range for depth "
                                 f"{self.net.depth}")
        if rows == 0:
            return
        cdef cs_net part = self.net   # the same buffers, the first `rows` streams
        part.batch = rows
        cdef cs_sampling s
        _zero(&s)
        s.temperature, s.top_k, s.u = &temperature[0], &top_k[0], &u[0]
        s.out, s.p = &out[0], &self._p[0, 0]
        if top_p is not None:
            s.top_p = &top_p[0]
        if min_p is not None:
            s.min_p = &min_p[0]
        if want is not None:
            s.want, s.logprob = &want[0], &logprob[0]
            s.top_ids, s.top_lp = &top_ids[0, 0], &top_lp[0, 0]
        if score is not None:
            s.score = &score[0]
        with nogil:
            cs_step(&part, &ids[0], &self._logits[0, 0], &s)

    def tick_rows(self, int rows, int max_ticks, const int64_t[::1] slot, int32_t[::1] next_ids,
                  int64_t[::1] feed_left, const int32_t[:, ::1] prime, int64_t[::1] prime_pos,
                  const double[::1] temperature, const int[::1] top_k, const double[:, ::1] u,
                  int64_t[::1] u_pos, int32_t[:, ::1] ring, int64_t[::1] written,
                  const int64_t[::1] read, const int64_t[::1] limit, const int64_t[::1] watch,
                  uint8_t[::1] hit, const double[::1] top_p=None, const double[::1] min_p=None,
                  const uint8_t[:, ::1] stop_end=None):
        """Up to `max_ticks` ticks of a serving batch's rows `0 .. rows - 1`, with
        the bookkeeping between ticks done here, without the GIL
        (`charstream.serving.slots.Slots.work` holds the arrays and is the plain
        twin: the same ticks, one Python loop each). Row b serves slot
        `slot[b]`: it feeds `next_ids[s]`; while `feed_left[s] > 0` it takes the
        argmax and moves on through `prime[s]`, else it samples with
        `u[s, u_pos[s]]` under the slot's settings into `ring[s]` until
        `written[s]` reaches `limit[s]`. Stops after the first tick that ends a
        row, fills a ring (`written - read` = its length), gives a slot of
        `watch` its first id, uses a slot's last uniform, or samples an id with
        `stop_end[s, id]` (`hit[b]` = 1 for those rows).

        Returns:
            `(ticks, sampled)`: ticks run and ids written, all rows together.

        Raises:
            ValueError: for arrays of the wrong shapes, a slot out of range, a
                bad sampling setting, or an id out of range (nothing is
                stepped from that tick on).
        """
        cdef Py_ssize_t slots = next_ids.shape[0], b
        cdef int64_t s
        cdef int depth = self.net.depth
        if not 0 <= rows <= self.net.batch:
            raise ValueError(f"rows must be in [0, {self.net.batch}], got {rows}")
        if max_ticks < 1:
            raise ValueError(f"expected a positive max_ticks, got {max_ticks}")
        if slot.shape[0] < rows or hit.shape[0] < rows:
            raise ValueError(f"slot and hit must hold at least {rows} values, got "
                             f"{slot.shape[0]} and {hit.shape[0]}")
        for arr, name in ((feed_left, "feed_left"), (prime_pos, "prime_pos"),
                          (temperature, "temperature"), (top_k, "top_k"), (u_pos, "u_pos"),
                          (written, "written"), (read, "read"), (limit, "limit"),
                          (top_p, "top_p"), (min_p, "min_p")):
            if arr is not None and arr.shape[0] != slots:
                raise ValueError(f"{name} must hold {slots} values (one per slot), got "
                                 f"{arr.shape[0]}")
        for arr, name in ((prime, "prime"), (u, "u"), (ring, "ring"), (stop_end, "stop_end")):
            if arr is not None and arr.shape[0] != slots:
                raise ValueError(f"{name} must have {slots} rows (one per slot), got "
                                 f"{arr.shape[0]}")
        if (top_p is None) != (min_p is None):
            raise ValueError("top_p and min_p go together")
        if stop_end is not None and stop_end.shape[1] != depth:
            raise ValueError(f"stop_end must have {depth} columns, got {stop_end.shape[1]}")
        if ring.shape[1] < 1 or u.shape[1] < 1 or prime.shape[1] < 1:
            raise ValueError("ring, u and prime need at least one column")
        for b in range(watch.shape[0]):
            if not 0 <= watch[b] < slots:
                raise ValueError(f"watch[{b}] = {watch[b]} is not a slot (0 to {slots - 1})")
        for b in range(rows):
            s = slot[b]
            if not 0 <= s < slots:
                raise ValueError(f"slot[{b}] = {s} is not a slot (0 to {slots - 1})")
            _check_rule(temperature[s], 1.0 if top_p is None else top_p[s],
                        0.0 if min_p is None else min_p[s], f"[{s}]")
            if not (0 <= u_pos[s] < u.shape[1] and 0 <= feed_left[s]
                    and 0 <= prime_pos[s] and prime_pos[s] + feed_left[s] < prime.shape[1]):
                raise ValueError(f"slot {s}: u_pos {u_pos[s]}, prime_pos {prime_pos[s]} and "
                                 f"feed_left {feed_left[s]} must lie inside u and prime")
        if rows == 0:
            return 0, 0
        cdef cs_net part = self.net   # the same buffers, the first `rows` streams
        part.batch = rows
        scratch = np.zeros((4, rows), np.float64)
        cdef double[:, ::1] sv = scratch
        cdef int32_t[::1] iv = np.zeros(rows, np.int32), ov = np.zeros(rows, np.int32)
        cdef int[::1] kv = np.zeros(rows, np.intc)
        cdef _Book k
        k.rows, k.depth, k.max_prime = rows, depth, prime.shape[1]
        k.uniforms, k.buffer, k.n_watch = u.shape[1], ring.shape[1], watch.shape[0]
        k.slot, k.next, k.feed_left = &slot[0], &next_ids[0], &feed_left[0]
        k.prime, k.prime_pos = &prime[0, 0], &prime_pos[0]
        k.temperature, k.top_k = &temperature[0], &top_k[0]
        k.top_p = k.min_p = NULL
        if top_p is not None:
            k.top_p, k.min_p = &top_p[0], &min_p[0]
        k.u, k.u_pos, k.ring = &u[0, 0], &u_pos[0], &ring[0, 0]
        k.written, k.read, k.limit = &written[0], &read[0], &limit[0]
        k.stop_end = NULL if stop_end is None else &stop_end[0, 0]
        k.watch = &watch[0] if watch.shape[0] else NULL
        k.hit, k.ids, k.k_row = &hit[0], &iv[0], &kv[0]
        k.t_row, k.u_row, k.p_row, k.m_row = &sv[0, 0], &sv[1, 0], &sv[2, 0], &sv[3, 0]
        cdef cs_sampling smp
        _zero(&smp)
        smp.temperature, smp.top_k, smp.u = k.t_row, k.k_row, k.u_row
        smp.out, smp.p = &ov[0], &self._p[0, 0]
        if top_p is not None:
            smp.top_p, smp.min_p = k.p_row, k.m_row
        cdef int ticks
        cdef int64_t sampled = 0
        with nogil:
            ticks = _book_ticks(&part, &self._logits[0, 0], &smp, &k, max_ticks, &sampled)
        if ticks < 0:
            b = -1 - ticks
            raise ValueError(f"row {b} (slot {slot[b]}): id {next_ids[slot[b]]} is out of "
                             f"range for depth {depth}")
        return ticks, sampled

    def copy_row(self, int src, int dst):
        """Give stream `dst` the state of stream `src` (every layer's h and c)."""
        if not (0 <= src < self.net.batch and 0 <= dst < self.net.batch):
            raise ValueError(f"rows must be in [0, {self.net.batch}), got {src} and {dst}")
        for h, c in zip(self._h_state, self._c_state):
            h[dst] = h[src]
            c[dst] = c[src]

    def get_row(self, int row):
        """Copies of stream `row`'s state: `[(h, c), ...]` per layer, each `(units,)`."""
        if not 0 <= row < self.net.batch:
            raise ValueError(f"row must be in [0, {self.net.batch}), got {row}")
        return [(h[row].copy(), c[row].copy()) for h, c in zip(self._h_state, self._c_state)]

    def set_row(self, int row, state):
        """Give stream `row` a state from `get_row`."""
        if not 0 <= row < self.net.batch:
            raise ValueError(f"row must be in [0, {self.net.batch}), got {row}")
        if len(state) != self.layers:
            raise ValueError(f"state must hold {self.layers} layers, got {len(state)}")
        for (h, c), (hs, cs) in zip(zip(self._h_state, self._c_state), state):
            h[row] = hs
            c[row] = cs


def sample_from_logits(logits, double temperature, int top_k, double u, double top_p=1.0,
                       double min_p=0.0):
    """The C sampler alone, on one row of logits: its NumPy twin is
    `charstream._reference.sample_id` on `softmax(logits)`. `top_k <= 0` keeps all."""
    arr = np.ascontiguousarray(logits, dtype=np.float32)
    if arr.ndim != 1 or not 1 <= arr.shape[0] <= 256:
        raise ValueError(f"logits must have shape (depth,) with 1 <= depth <= 256, got {arr.shape}")
    _check_rule(temperature, top_p, min_p, "")
    cdef float[::1] lv = arr
    cdef double[::1] p = np.empty(arr.shape[0], np.float64)
    cdef int32_t out
    cdef double kept
    with nogil:
        out = cs_sample(&lv[0], <int>lv.shape[0], temperature, top_k, top_p, min_p, u, &p[0],
                        &kept)
    return out
