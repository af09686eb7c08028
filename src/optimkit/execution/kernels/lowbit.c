/* Low-bit optimizer state on the CPU: the blockwise codec of optimkit.execution.encodings
 * ("8bit" and "4bit") and a fused Adam/AdamW step on such moments.
 *
 * Plain C11, no torch headers: compiled at first use by optimkit.execution.kernels with
 *   cc -O3 -march=native -fopenmp -fno-math-errno -ffp-contract=off -shared -fPIC
 * (no -ffast-math: division and sqrt stay IEEE, so the codes are those of the torch-ops path).
 *
 * Quantizing is "nearest code, ties to the larger" (torch.bucketize(y, mids, right=True) with
 * mids[k] the midpoint of map[k] and map[k+1]), done with a bucket table indexed by the top 16
 * bits of y (sign, exponent, 7 mantissa bits: its bfloat16 truncation). No bucket holds more
 * than one midpoint (Python checks that when it builds the table), so an entry
 * base | t << 8 finishes the code with one comparison of the low 16 bits ("key", reversed for
 * negative y so that it grows with y): code = base + (key >= t), t = 0x10000 where the bucket
 * has no midpoint. Buckets past |y| = 1.0078 (NaN included; x / absmax never gets there
 * otherwise) give the last code, as torch.bucketize gives NaN.
 *
 * The tables come from Python (one source of truth for the maps): q[2^bits], the map, and
 * bucket[65536]. The lookups are 8 scalar loads per vector, not vpgatherdd: on Zen 3 that is
 * twice as fast (measured on this project's EPYC).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define MAXB 4096      /* the largest block the fused step takes (scratch on the stack) */
#define CHUNK 256

int ok_version(void) { return 3; }
int ok_avx2(void) {
#ifdef __AVX2__
    return 1;
#else
    return 0;
#endif
}

static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* max |x| as float32 bits: integer order is float order for non-negative floats, and a NaN
 * (bits above inf's) wins, as torch's amax propagates it. */
static float absmax(const float *x, int64_t n) {
    uint32_t m = 0;
    int64_t i = 0;
#ifdef __AVX2__
    __m256i acc = _mm256_setzero_si256();
    const __m256i mask = _mm256_set1_epi32(0x7fffffff);
    for (; i + 8 <= n; i += 8)
        acc = _mm256_max_epu32(acc, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(x + i)), mask));
    uint32_t lanes[8];
    _mm256_storeu_si256((__m256i *)lanes, acc);
    for (int k = 0; k < 8; k++) m = lanes[k] > m ? lanes[k] : m;
#endif
    for (; i < n; i++) {
        uint32_t a = f2u(x[i]) & 0x7fffffffu;
        m = a > m ? a : m;
    }
    return u2f(m);
}

/* float32 -> bfloat16 bits, rounded up (the 4-bit scale: every |x| / scale stays <= 1). */
static inline uint16_t bf16_up(float x) {
    uint32_t u = f2u(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN */
    uint16_t b = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);        /* to nearest even */
    if (u2f((uint32_t)b << 16) < x) b += 1; /* x >= 0: the next bfloat16 up */
    return b;
}

static inline uint8_t quant1(float y, const uint32_t *bucket) {
    uint32_t u = f2u(y), e = bucket[u >> 16];
    uint32_t key = (u ^ (0u - (u >> 31))) & 0xffffu;
    return (uint8_t)((e & 0xffu) + (key + 1 > (e >> 8)));
}

/* codes[i] = nearest code of x[i] / div (one byte per code). */
static void quant(const float *x, int64_t n, float div, const uint32_t *bucket, uint8_t *codes) {
    int64_t i = 0;
#ifdef __AVX2__
    const __m256 d = _mm256_set1_ps(div);
    const __m256i ff = _mm256_set1_epi32(0xff), low = _mm256_set1_epi32(0xffff), one = _mm256_set1_epi32(1);
    for (; i + 8 <= n; i += 8) {
        __m256 y = _mm256_div_ps(_mm256_loadu_ps(x + i), d);
        __m256i u = _mm256_castps_si256(y), k = _mm256_srli_epi32(u, 16);
        __m256i key = _mm256_and_si256(_mm256_xor_si256(u, _mm256_srai_epi32(u, 31)), low);
        /* scalar loads again rather than vpgatherdd */
        uint32_t ka[8] __attribute__((aligned(32)));
        _mm256_store_si256((__m256i *)ka, k);
        __m256i e = _mm256_setr_epi32((int)bucket[ka[0]], (int)bucket[ka[1]], (int)bucket[ka[2]], (int)bucket[ka[3]],
                                      (int)bucket[ka[4]], (int)bucket[ka[5]], (int)bucket[ka[6]], (int)bucket[ka[7]]);
        __m256i up = _mm256_cmpgt_epi32(_mm256_add_epi32(key, one), _mm256_srli_epi32(e, 8));
        __m256i code = _mm256_sub_epi32(_mm256_and_si256(e, ff), up);
        __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(code), _mm256_extracti128_si256(code, 1));
        _mm_storel_epi64((__m128i *)(codes + i), _mm_packus_epi16(w, w));
    }
#endif
    for (; i < n; i++) codes[i] = quant1(x[i] / div, bucket);
}

#ifdef __AVX2__
/* q[c[0..7]]: eight scalar loads beat vgatherdps on Zen (2x here) */
static inline __m256 look8(const uint8_t *c, const float *q) {
    return _mm256_setr_ps(q[c[0]], q[c[1]], q[c[2]], q[c[3]], q[c[4]], q[c[5]], q[c[6]], q[c[7]]);
}
#endif

/* out[i] = q[codes[i]] * s */
static void dequant(const uint8_t *codes, int64_t n, float s, const float *q, float *out) {
    int64_t i = 0;
#ifdef __AVX2__
    const __m256 sv = _mm256_set1_ps(s);
    for (; i + 8 <= n; i += 8) {
        _mm256_storeu_ps(out + i, _mm256_mul_ps(look8(codes + i, q), sv));
    }
#endif
    for (; i < n; i++) out[i] = q[codes[i]] * s;
}

/* -- one block: decode n elements starting at element e (e a block boundary, so even) ------ */
static inline float block_scale(int bits, const void *scale, int64_t b) {
    if (bits == 8) return ((const float *)scale)[b];
    return u2f((uint32_t)((const uint16_t *)scale)[b] << 16);
}

static void decode_block(int bits, const uint8_t *codes, float s, int64_t e, int64_t n, const float *q, float *out) {
    if (bits == 8) {
        dequant(codes + e, n, s, q, out);
        return;
    }
    const uint8_t *p = codes + e / 2;
    uint8_t tmp[CHUNK];
    for (int64_t c = 0; c < n; c += CHUNK) {
        int64_t m = n - c < CHUNK ? n - c : CHUNK;
        for (int64_t j = 0; j < m; j++) tmp[j] = (p[(c + j) >> 1] >> (((c + j) & 1) * 4)) & 15;
        dequant(tmp, m, s, q, out + c);
    }
}

/* Encode x[0:n], whose max |x| is a, as the block at element e (block index b). */
static void encode_block(int bits, const float *x, float a, int64_t e, int64_t n, int64_t b, const uint32_t *bucket,
                         uint8_t *codes, void *scale) {
    float div;
    if (bits == 8) {
        ((float *)scale)[b] = a;
        div = a == 0.0f ? 1.0f : a;
        quant(x, n, div, bucket, codes + e);
        return;
    }
    uint16_t s = bf16_up(a);
    ((uint16_t *)scale)[b] = s;
    div = s == 0 ? 1.0f : u2f((uint32_t)s << 16);
    uint8_t tmp[CHUNK];
    uint8_t *p = codes + e / 2;
    for (int64_t c = 0; c < n; c += CHUNK) {
        int64_t m = n - c < CHUNK ? n - c : CHUNK;
        quant(x + c, m, div, bucket, tmp);
        int64_t pairs = m / 2;
        for (int64_t j = 0; j < pairs; j++) p[c / 2 + j] = (uint8_t)(tmp[2 * j] | (tmp[2 * j + 1] << 4));
        if (m & 1) p[c / 2 + pairs] = tmp[m - 1]; /* the last, odd element: high nibble 0 */
    }
}

/* -- the codec ------------------------------------------------------------------------------ */
/* out[0:hi-lo] = decoded elements lo:hi of (codes, scale); lo a block boundary. */
void ok_decode(int bits, int64_t block, const uint8_t *codes, const void *scale, int64_t lo, int64_t hi,
               const float *q, float *out, int nt) {
    int64_t nb = (hi - lo + block - 1) / block;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && hi - lo >= 65536)
    for (int64_t i = 0; i < nb; i++) {
        int64_t e = lo + i * block, n = hi - e < block ? hi - e : block;
        decode_block(bits, codes, block_scale(bits, scale, e / block), e, n, q, out + (e - lo));
    }
}

/* Store x[0:n] at element lo (a block boundary) of (codes, scale). */
void ok_encode(int bits, int64_t block, const float *x, int64_t n, int64_t lo, const uint32_t *bucket,
               uint8_t *codes, void *scale, int nt) {
    int64_t nb = (n + block - 1) / block;
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && n >= 65536)
    for (int64_t i = 0; i < nb; i++) {
        int64_t e = lo + i * block, m = n - i * block < block ? n - i * block : block;
        encode_block(bits, x + i * block, absmax(x + i * block, m), e, m, e / block, bucket, codes, scale);
    }
}

/* -- the fused Adam(W) step ------------------------------------------------------------------ */
/* torch's lerp: weight < 0.5 ? a + w (b - a) : b - (b - a)(1 - w), each a fused multiply-add
 * (ATen's vectorized lerp). */
static inline float lerp(float a, float b, float w) {
    float d = b - a;
    return w < 0.5f ? fmaf(w, d, a) : fmaf(-(1.0f - w), d, b);
}

typedef struct {
    double lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2_sqrt;
} adam_hp;

enum { DECOUPLED = 1, MAXIMIZE = 2, AMSGRAD = 4 };

/* One Adam(W) step on n float32 params with 8-bit or 4-bit moments m (signed map) and v
 * (unsigned map), and with AMSGRAD the running maximum of v (unsigned map) in (xc, xs):
 *   g = maximize ? -grad : grad
 *   decoupled: p = p * (1 - lr wd)      else: g = g + wd p  (fma)
 *   m = lerp(m, g, 1 - beta1);  v = lerp(v, g g, 1 - beta2);  amsgrad: x = max(x, v), v' = x
 *   p = p + (-(lr / bc1) m) / (sqrt(v') / bc2_sqrt + eps)
 * the scalars rounded to float32 as torch's CPU ops round them; m, v, (x) re-encoded per block. */
void ok_adam_multi(int bits, int64_t block, int nten, float *const *params, const float *const *grads,
                   const int64_t *sizes, uint8_t *const *mcs, void *const *mss, uint8_t *const *vcs, void *const *vss,
                   uint8_t *const *xcs, void *const *xss, const float *qs, const uint32_t *bucket_s, const float *qu,
                   const uint32_t *bucket_u, const adam_hp *hp, int flags, int nt) {
    const float w1 = (float)(1.0 - hp->beta1), w2 = (float)(1.0 - hp->beta2);
    const float decay = (float)(1.0 - hp->lr * hp->weight_decay), wd = (float)hp->weight_decay;
    const float alpha = (float)(-(hp->lr / hp->bias_correction1));
    const float bc2 = (float)hp->bias_correction2_sqrt, eps = (float)hp->eps;
    const int maximize = flags & MAXIMIZE, ams = flags & AMSGRAD;
    const int l2 = !(flags & DECOUPLED) && hp->weight_decay != 0.0;
    const int shrink = (flags & DECOUPLED) && hp->weight_decay != 0.0;
    /* first[t]: the global index of tensor t's first block; the blocks of all tensors are
     * shared out among the threads in one parallel loop. */
    int64_t first_stack[65], *first = nten < 65 ? first_stack : malloc(sizeof(int64_t) * (nten + 1)), total = 0;
    for (int t = 0; t < nten; t++) {
        first[t] = total;
        total += (sizes[t] + block - 1) / block;
    }
    first[nten] = total;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 16) if (nt > 1 && total * block >= 65536)
    for (int64_t gb = 0; gb < total; gb++) {
        int lo_t = 0, hi_t = nten - 1; /* the tensor holding block gb */
        while (lo_t < hi_t) {
            int mid = (lo_t + hi_t + 1) / 2;
            if (first[mid] <= gb) lo_t = mid; else hi_t = mid - 1;
        }
        const int t = lo_t;
        const int64_t b = gb - first[t], n = sizes[t];
        float *param = params[t];
        const float *grad = grads[t];
        uint8_t *mc = mcs[t], *vc = vcs[t], *xc = ams ? xcs[t] : 0;
        void *ms = mss[t], *vs = vss[t], *xs = ams ? xss[t] : 0;
        float sm[MAXB] __attribute__((aligned(32))), sv[MAXB] __attribute__((aligned(32)));
        float sx[MAXB] __attribute__((aligned(32)));
        int64_t e = b * block, len = n - e < block ? n - e : block, i = 0;
        float *restrict p = param + e;
        const float *restrict g0 = grad + e;
        const float scale_m = block_scale(bits, ms, b), scale_v = block_scale(bits, vs, b);
#ifdef __AVX2__
        const int inline_decode = bits == 8; /* the AVX2 loop decodes 8-bit codes itself */
#else
        const int inline_decode = 0;
#endif
        if (!inline_decode) {
            decode_block(bits, mc, scale_m, e, len, qs, sm);
            decode_block(bits, vc, scale_v, e, len, qu, sv);
        }
        if (ams) decode_block(bits, xc, block_scale(bits, xs, b), e, len, qu, sx);
        uint32_t am = 0, av = 0, ax = 0;
#ifdef __AVX2__
        {
            const __m256 W1 = _mm256_set1_ps(w1), W2 = _mm256_set1_ps(w2), C1 = _mm256_set1_ps(1.0f - w1);
            const __m256 C2 = _mm256_set1_ps(1.0f - w2), DEC = _mm256_set1_ps(decay), WD = _mm256_set1_ps(wd);
            const __m256 ALPHA = _mm256_set1_ps(alpha), BC2 = _mm256_set1_ps(bc2), EPS = _mm256_set1_ps(eps);
            const __m256 NEG = _mm256_set1_ps(maximize ? -0.0f : 0.0f);
            const __m256i ABS = _mm256_set1_epi32(0x7fffffff);
            const int small1 = w1 < 0.5f, small2 = w2 < 0.5f;
            const __m256 SM = _mm256_set1_ps(scale_m), SV = _mm256_set1_ps(scale_v);
            __m256i AM = _mm256_setzero_si256(), AV = AM, AX = AM;
            for (; i + 8 <= len; i += 8) {
                __m256 g = _mm256_xor_ps(_mm256_loadu_ps(g0 + i), NEG), x = _mm256_loadu_ps(p + i);
                if (shrink) x = _mm256_mul_ps(x, DEC);
                if (l2) g = _mm256_fmadd_ps(WD, x, g);
                __m256 m, v, gg = _mm256_mul_ps(g, g);
                if (inline_decode) {
                    m = _mm256_mul_ps(look8(mc + e + i, qs), SM);
                    v = _mm256_mul_ps(look8(vc + e + i, qu), SV);
                } else {
                    m = _mm256_load_ps(sm + i);
                    v = _mm256_load_ps(sv + i);
                }
                __m256 dm = _mm256_sub_ps(g, m), dv = _mm256_sub_ps(gg, v);
                m = small1 ? _mm256_fmadd_ps(W1, dm, m) : _mm256_fnmadd_ps(C1, dm, g);
                v = small2 ? _mm256_fmadd_ps(W2, dv, v) : _mm256_fnmadd_ps(C2, dv, gg);
                _mm256_store_ps(sm + i, m);
                _mm256_store_ps(sv + i, v);
                AM = _mm256_max_epu32(AM, _mm256_and_si256(_mm256_castps_si256(m), ABS));
                AV = _mm256_max_epu32(AV, _mm256_and_si256(_mm256_castps_si256(v), ABS));
                if (ams) {
                    __m256 old = _mm256_load_ps(sx + i), r = _mm256_max_ps(v, old);
                    v = _mm256_blendv_ps(r, v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q)); /* NaN wins */
                    _mm256_store_ps(sx + i, v);
                    AX = _mm256_max_epu32(AX, _mm256_and_si256(_mm256_castps_si256(v), ABS));
                }
                __m256 den = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(v), BC2), EPS);
                _mm256_storeu_ps(p + i, _mm256_add_ps(x, _mm256_div_ps(_mm256_mul_ps(ALPHA, m), den)));
            }
            uint32_t l[3][8];
            _mm256_storeu_si256((__m256i *)l[0], AM);
            _mm256_storeu_si256((__m256i *)l[1], AV);
            _mm256_storeu_si256((__m256i *)l[2], AX);
            for (int k = 0; k < 8; k++) {
                am = l[0][k] > am ? l[0][k] : am;
                av = l[1][k] > av ? l[1][k] : av;
                ax = l[2][k] > ax ? l[2][k] : ax;
            }
        }
#endif
        for (; i < len; i++) {
            float g = maximize ? -g0[i] : g0[i], x = p[i];
            if (shrink) x = x * decay;
            if (l2) g = fmaf(wd, x, g);
            if (inline_decode) {
                sm[i] = qs[mc[e + i]] * scale_m;
                sv[i] = qu[vc[e + i]] * scale_v;
            }
            float m = lerp(sm[i], g, w1), v = lerp(sv[i], g * g, w2);
            sm[i] = m;
            sv[i] = v;
            uint32_t a = f2u(m) & 0x7fffffffu;
            am = a > am ? a : am;
            a = f2u(v) & 0x7fffffffu;
            av = a > av ? a : av;
            if (ams) {
                float old = sx[i];
                v = (old > v || old != old) ? old : v; /* torch.maximum: NaN wins */
                sx[i] = v;
                a = f2u(v) & 0x7fffffffu;
                ax = a > ax ? a : ax;
            }
            p[i] = x + (alpha * m) / (sqrtf(v) / bc2 + eps);
        }
        encode_block(bits, sm, u2f(am), e, len, b, bucket_s, mc, ms);
        encode_block(bits, sv, u2f(av), e, len, b, bucket_u, vc, vs);
        if (ams) encode_block(bits, sx, u2f(ax), e, len, b, bucket_u, xc, xs);
    }
    if (first != first_stack) free(first);
}

void ok_adam(int bits, int64_t block, float *param, const float *grad, int64_t n, uint8_t *mc, void *ms, uint8_t *vc,
             void *vs, uint8_t *xc, void *xs, const float *qs, const uint32_t *bucket_s, const float *qu,
             const uint32_t *bucket_u, const adam_hp *hp, int flags, int nt) {
    ok_adam_multi(bits, block, 1, &param, &grad, &n, &mc, &ms, &vc, &vs, &xc, &xs, qs, bucket_s, qu, bucket_u, hp,
                  flags, nt);
}
