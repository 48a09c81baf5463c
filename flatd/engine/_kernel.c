/* The compiled core of flatd's combination engine (see flatd/engine/), loaded with ctypes.
 *
 * For a band of rows it does exactly the float32 arithmetic of the numpy engine
 * (numpy_band.py: the same sorting network, the same merge-path MAD, the same order of
 * sums), but a tile of pixels at a time in the L1 cache instead of whole rows through
 * memory: one read of the frames and one write of the outputs instead of some two
 * hundred element-wise passes. A pixel where some frame has no usable value (not finite,
 * or at or above that frame's saturation level) is redone on its own with the numpy
 * engine's arithmetic for missing values (sort the values present, median, MAD, clip,
 * sums in frame order), so a few saturated star cores cost a few pixels, not a band.
 *
 * Frames stored as plain FITS data of any BITPIX are read here too (pread; BSCALE and
 * BZERO applied in double precision, then rounded to float once, as pixels.py does), so
 * that a band or a frame's tally costs one call without the GIL.
 *
 * Every call takes one struct, whose layout and the library's ABI version kernel.py
 * checks at load (flatd_abi_version, flatd_struct_size): a stale library is refused, never
 * called with the wrong arguments.
 *
 * Also a (minimal) Python extension module, so that its file name, `_kernel.<abi>.so`,
 * says what it is: `import flatd.engine._kernel` works and gives ABI_VERSION.
 *
 * Built with -ffp-contract=off: a fused multiply-add would round differently from numpy.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FLATD_KERNEL_ABI 2
#define TILE 64
#define READ_EOF (-1)
#define MAD_TO_STD 1.482602218505602f

/* Where the compiler can, an AVX2 copy of the hot functions is chosen at load time
 * (twice the vector width of the x86-64 baseline; no FMA, so the same results). */
#if defined(__x86_64__) && defined(__GNUC__)
#define WIDE_VECTORS __attribute__((target_clones("avx2", "default")))
#else
#define WIDE_VECTORS
#endif
/* the hot loops, inlined into each copy so that they get its vector width */
#define HOT __attribute__((always_inline))

/* ---- the ABI: kernel.py mirrors these structs with ctypes.Structure ---------------- */

/* Where one image plane's stored values are. */
typedef struct {
    int64_t fd;     /* an open file, or -1 */
    int64_t offset; /* byte offset of the first value wanted */
    int64_t bitpix; /* FITS BITPIX of the stored (big-endian) values */
    double bscale, bzero;
} flatd_source;

/* One frame's plane of a band. */
typedef struct {
    flatd_source source; /* fd -1: the caller filled the plane in the stack */
    int32_t big_endian;  /* caller-filled plane holds big-endian float32 bytes */
    float scale;         /* every value is multiplied by this */
    float saturation;    /* values at or above this are left out (INFINITY: none) */
} flatd_plane;

typedef struct {
    float *stack;         /* n planes of rows*nx floats, plane k at stack + k*plane_stride */
    int64_t plane_stride; /* in floats */
    int64_t n, rows, nx;
    const flatd_plane *planes; /* n */
    int32_t clip;              /* clip around the median with mad_std (else keep all) */
    float sigma_low, sigma_high;
    const int32_t *pairs; /* the sorting network: npairs comparators of 2 ints */
    int64_t npairs;
    float *scratch; /* scratch_floats >= (3 * n + 2) * TILE */
    int64_t scratch_floats;
    void *raw; /* a conversion buffer for stored values other than float32 */
    int64_t raw_bytes;
    float *data, *uncert; /* rows*nx: the unnormalised mean and its standard deviation */
    uint8_t *empty;       /* rows*nx: no value kept */
    int64_t *clipped;     /* n: values rejected by the clip, added to */
    int32_t error;        /* a failed read: its errno, or READ_EOF (the file is too short) */
    int32_t error_plane;
} flatd_band;

/* A streaming tally of a frame's values (levels.Tally). */
typedef struct {
    int32_t bracket; /* 0: no bracket, count nothing inside */
    float low, high;
    float saturation; /* > 0: count the values at or above it */
    double sum;
    int64_t finite, below, saturated;
    float *inside; /* the values within [low, high], in order */
    int64_t capacity, count;
    int32_t error; /* a failed read, as flatd_band.error */
} flatd_tally;

enum { BAND_OK = 0, BAND_READ_FAILED = 2 };
enum { TALLY_OK = 0, TALLY_FULL = -1, TALLY_READ_FAILED = -2 };

int64_t flatd_abi_version(void) { return FLATD_KERNEL_ABI; }

int64_t flatd_struct_size(int64_t which) {
    switch (which) {
    case 0: return (int64_t)sizeof(flatd_source);
    case 1: return (int64_t)sizeof(flatd_plane);
    case 2: return (int64_t)sizeof(flatd_band);
    case 3: return (int64_t)sizeof(flatd_tally);
    default: return -1;
    }
}

/* ---- reading stored values ---------------------------------------------------------- */

/* Read nbytes at offset into dest: 0, READ_EOF when the file ends early, or errno. */
static int read_fully(int64_t fd, int64_t offset, int64_t nbytes, void *dest) {
    char *cursor = dest;
    while (nbytes > 0) {
        ssize_t got = pread((int)fd, cursor, (size_t)nbytes, (off_t)offset);
        if (got < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (got == 0) return READ_EOF;
        cursor += got;
        offset += got;
        nbytes -= got;
    }
    return 0;
}

static int64_t item_bytes(int64_t bitpix) { return bitpix < 0 ? -bitpix / 8 : bitpix / 8; }

/* float32 stored as is: no conversion, only a byte swap (done as the values are used). */
static int plain_float(const flatd_source *s) {
    return s->bitpix == -32 && s->bscale == 1.0 && s->bzero == 0.0;
}

/* Stored big-endian values to native OUT (double, or float directly where one rounding
 * gives the same value), one loop per type so that each vectorises. */
#define STORED_LOOP(TYPE, UTYPE, SWAP, OUT)                                                   \
    for (int64_t j = 0; j < m; j++) {                                                     \
        UTYPE u;                                                                          \
        memcpy(&u, raw + j * (int64_t)sizeof(UTYPE), sizeof(UTYPE));                       \
        u = SWAP(u);                                                                      \
        TYPE v;                                                                           \
        memcpy(&v, &u, sizeof(TYPE));                                                     \
        dest[j] = (OUT)v;                                                                 \
    }
#define SAME(u) (u)

HOT static inline void stored_doubles(const unsigned char *restrict raw, int64_t bitpix, int64_t m,
                           double *restrict dest) {
    switch (bitpix) {
    case 8: STORED_LOOP(uint8_t, uint8_t, SAME, double) break;
    case 16: STORED_LOOP(int16_t, uint16_t, __builtin_bswap16, double) break;
    case 32: STORED_LOOP(int32_t, uint32_t, __builtin_bswap32, double) break;
    case 64: STORED_LOOP(int64_t, uint64_t, __builtin_bswap64, double) break;
    case -32: STORED_LOOP(float, uint32_t, __builtin_bswap32, double) break;
    default: STORED_LOOP(double, uint64_t, __builtin_bswap64, double) break;
    }
}

/* Without BSCALE/BZERO: straight to float, except 64-bit integers, which numpy rounds to
 * double first (a second rounding a direct conversion would not make). */
HOT static inline int stored_floats(const unsigned char *restrict raw, int64_t bitpix, int64_t m,
                         float *restrict dest) {
    switch (bitpix) {
    case 8: STORED_LOOP(uint8_t, uint8_t, SAME, float) return 1;
    case 16: STORED_LOOP(int16_t, uint16_t, __builtin_bswap16, float) return 1;
    case 32: STORED_LOOP(int32_t, uint32_t, __builtin_bswap32, float) return 1;
    case -32: STORED_LOOP(float, uint32_t, __builtin_bswap32, float) return 1;
    case -64: STORED_LOOP(double, uint64_t, __builtin_bswap64, float) return 1;
    default: return 0;
    }
}

/* dest = (float)(stored * bscale + bzero), each step only where it changes the value, in
 * double precision (pixels.convert does the same in numpy). */
WIDE_VECTORS static void convert(const unsigned char *restrict raw, const flatd_source *s,
                                 int64_t m, double *restrict wide, float *restrict dest) {
    const double bscale = s->bscale, bzero = s->bzero;
    if (bscale == 1.0 && bzero == 0.0 && stored_floats(raw, s->bitpix, m, dest)) return;
    stored_doubles(raw, s->bitpix, m, wide);
    if (bscale != 1.0)
        for (int64_t j = 0; j < m; j++) wide[j] *= bscale;
    if (bzero != 0.0)
        for (int64_t j = 0; j < m; j++) wide[j] += bzero;
    for (int64_t j = 0; j < m; j++) dest[j] = (float)wide[j];
}

/* Read `count` values from value index `first` of a source into dest as native floats
 * (plain float32: left big-endian when keep_big_endian). 0 or a read failure. */
static int read_values(const flatd_source *s, int64_t first, int64_t count, float *dest,
                       void *raw, int64_t raw_bytes, int keep_big_endian) {
    int64_t size = item_bytes(s->bitpix);
    int64_t offset = s->offset + first * size;
    if (plain_float(s)) {
        int failure = read_fully(s->fd, offset, count * 4, dest);
        if (failure || keep_big_endian) return failure;
        uint32_t *words = (uint32_t *)dest;
        for (int64_t j = 0; j < count; j++) words[j] = __builtin_bswap32(words[j]);
        return 0;
    }
    /* stored values, and their doubles where BSCALE/BZERO (or 64-bit integers) need them */
    int direct = s->bscale == 1.0 && s->bzero == 0.0 && s->bitpix != 64;
    int64_t chunk = raw_bytes / (size + (direct ? 0 : (int64_t)sizeof(double)));
    if (chunk < 1) return EINVAL;
    double *wide = (double *)raw;
    unsigned char *stored = (unsigned char *)raw + (direct ? 0 : chunk * (int64_t)sizeof(double));
    for (int64_t done = 0; done < count; done += chunk) {
        int64_t m = count - done < chunk ? count - done : chunk;
        int failure = read_fully(s->fd, offset + done * size, m * size, stored);
        if (failure) return failure;
        convert(stored, s, m, wide, dest + done);
    }
    return 0;
}

/* ---- the band ---------------------------------------------------------------------- */

/* Scale one plane's tile into dst; a value that is left out becomes NaN and sets its
 * pixel's flag. */
HOT static inline void load_plane(const float *restrict src, int swap, float scale, float saturation,
                       int64_t m, float *restrict dst, int32_t *restrict flag) {
    for (int64_t j = 0; j < m; j++) {
        float x;
        if (swap) {
            uint32_t u = __builtin_bswap32(((const uint32_t *)src)[j]);
            memcpy(&x, &u, 4);
        } else {
            x = src[j];
        }
        float y = x * scale;
        int32_t out = (x >= saturation) | (y - y != 0.0f); /* saturated, NaN or infinite */
        dst[j] = out ? NAN : y;
        flag[j] |= out;
    }
}

/* Element-wise rank-th smallest (from 0) of the union of the sorted lists lower[]
 * (lower[q] = base[a-1-q]) and upper[] (upper[q] = base[a+q]), as ordering.merged_rank. */
HOT static inline void merged_rank(float *const *base, int64_t a, int64_t n, int64_t rank, int64_t m,
                        float *restrict best) {
    int64_t n_lower = a, n_upper = n - a;
    int64_t i0 = rank + 1 - n_upper > 0 ? rank + 1 - n_upper : 0;
    int64_t i1 = n_lower < rank + 1 ? n_lower : rank + 1;
    for (int64_t j = 0; j < m; j++) best[j] = INFINITY;
    for (int64_t i = i0; i <= i1; i++) {
        int64_t k = rank + 1 - i;
        if (i == 0) {
            const float *restrict u = base[a + k - 1];
            for (int64_t j = 0; j < m; j++) best[j] = u[j] < best[j] ? u[j] : best[j];
        } else if (k == 0) {
            const float *restrict l = base[a - i];
            for (int64_t j = 0; j < m; j++) best[j] = l[j] < best[j] ? l[j] : best[j];
        } else {
            const float *restrict l = base[a - i];
            const float *restrict u = base[a + k - 1];
            for (int64_t j = 0; j < m; j++) {
                float c = l[j] > u[j] ? l[j] : u[j];
                best[j] = c < best[j] ? c : best[j];
            }
        }
    }
}

HOT static inline void sort_pair(float *restrict x, float *restrict y, int64_t m) {
    for (int64_t j = 0; j < m; j++) {
        float lo = x[j] < y[j] ? x[j] : y[j];
        float hi = x[j] < y[j] ? y[j] : x[j];
        x[j] = lo;
        y[j] = hi;
    }
}

HOT static inline void accumulate(const float *restrict v, const float *restrict center,
                       const float *restrict low, const float *restrict high,
                       float *restrict sum, float *restrict sq, int32_t *restrict count,
                       int32_t *restrict kept, int64_t m) {
    for (int64_t j = 0; j < m; j++) {
        float offset = v[j] - center[j];
        int32_t keep = (offset >= low[j]) & (offset <= high[j]);
        offset = keep ? offset : 0.0f;
        sum[j] += offset;
        sq[j] += offset * offset;
        count[j] += keep;
        kept[j] += keep;
    }
}

static inline void finish_pixel(float center, float sum, float sq, int32_t count, float *out,
                                float *out_uncert, uint8_t *out_empty) {
    float inverse = 1.0f / (float)(count > 1 ? count : 1);
    float mean = sum * inverse;
    float variance = sq * inverse - mean * mean;
    variance = variance > 0.0f ? variance : 0.0f;
    int none = count == 0;
    *out = none ? NAN : center + mean;
    *out_uncert = none ? 0.0f : sqrtf(variance * inverse);
    *out_empty = (uint8_t)none;
}

HOT static inline void finish(const float *restrict center, const float *restrict sum,
                   const float *restrict sq, const int32_t *restrict count,
                   float *restrict out, float *restrict out_uncert,
                   uint8_t *restrict out_empty, int64_t m) {
    for (int64_t j = 0; j < m; j++)
        finish_pixel(center[j], sum[j], sq[j], count[j], out + j, out_uncert + j,
                     out_empty + j);
}

HOT static inline void clip_limits(const float *restrict best0, const float *restrict best1, int two,
                        float k_low, float k_high, float *restrict low, float *restrict high,
                        int64_t m) {
    for (int64_t j = 0; j < m; j++) {
        float mad = two ? (best0[j] + best1[j]) / 2.0f : best0[j];
        float deviation = MAD_TO_STD * mad;
        low[j] = deviation * k_low;
        high[j] = deviation * k_high;
    }
}

HOT static inline void deviations(float *restrict row, const float *restrict center, int below,
                       int64_t m) {
    if (below)
        for (int64_t j = 0; j < m; j++) row[j] = center[j] - row[j];
    else
        for (int64_t j = 0; j < m; j++) row[j] = row[j] - center[j];
}

HOT static inline void middle(const float *restrict x, const float *restrict y, float *restrict center,
                   int64_t m) {
    for (int64_t j = 0; j < m; j++) center[j] = (x[j] + y[j]) / 2.0f;
}

static int ascending(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void sort_floats(float *v, int64_t c) {
    if (c > 32) {
        qsort(v, (size_t)c, sizeof(float), ascending);
        return;
    }
    for (int64_t i = 1; i < c; i++) {
        float x = v[i];
        int64_t q = i;
        for (; q > 0 && v[q - 1] > x; q--) v[q] = v[q - 1];
        v[q] = x;
    }
}

/* The numpy engine's arithmetic for a pixel where some values are missing (NaN here):
 * the k values present, sorted; their median and the median of the absolute deviations
 * from it, each the mean of the two middle values; the clip; the sums in frame order. */
static void combine_pixel(const flatd_band *b, float *const *values, int64_t j, float *work,
                          int64_t p) {
    int64_t c = 0;
    for (int64_t k = 0; k < b->n; k++)
        if (values[k][j] == values[k][j]) work[c++] = values[k][j];
    if (c == 0) {
        finish_pixel(0.0f, 0.0f, 0.0f, 0, b->data + p, b->uncert + p, b->empty + p);
        return;
    }
    float center = work[0], low = -INFINITY, high = INFINITY;
    if (b->clip) {
        sort_floats(work, c);
        center = (work[(c - 1) / 2] + work[c / 2]) / 2.0f;
        for (int64_t q = 0; q < c; q++) work[q] = fabsf(work[q] - center);
        sort_floats(work, c);
        float deviation = MAD_TO_STD * ((work[(c - 1) / 2] + work[c / 2]) / 2.0f);
        low = deviation * -b->sigma_low;
        high = deviation * b->sigma_high;
    }
    float sum = 0.0f, sq = 0.0f;
    int32_t count = 0;
    for (int64_t k = 0; k < b->n; k++) {
        float x = values[k][j];
        if (x != x) continue;
        float offset = x - center;
        if (offset >= low && offset <= high) {
            sum += offset;
            sq += offset * offset;
            count++;
        } else {
            b->clipped[k]++;
        }
    }
    finish_pixel(center, sum, sq, count, b->data + p, b->uncert + p, b->empty + p);
}

static int read_planes(flatd_band *b, int *big_endian) {
    for (int64_t k = 0; k < b->n; k++) {
        const flatd_plane *plane = &b->planes[k];
        big_endian[k] = plane->big_endian;
        if (plane->source.fd < 0) continue;
        big_endian[k] = plain_float(&plane->source);
        int failure = read_values(&plane->source, 0, b->rows * b->nx,
                                  b->stack + k * b->plane_stride, b->raw, b->raw_bytes, 1);
        if (failure) {
            b->error = failure;
            b->error_plane = (int32_t)k;
            return BAND_READ_FAILED;
        }
    }
    return BAND_OK;
}

/* Median and clip limits of one tile, from the sorting network and the merge-path MAD. */
HOT static inline void clip_tile(const flatd_band *b, float *const *values, float *const *sorted,
                      int64_t m, float *center, float *low, float *high) {
    const int64_t n = b->n, a = (n - 1) / 2 + 1, rank0 = (n - 1) / 2, rank1 = n / 2;
    float best0[TILE], best1[TILE];
    for (int64_t k = 0; k < n; k++) memcpy(sorted[k], values[k], m * sizeof(float));
    for (int64_t q = 0; q < b->npairs; q++)
        sort_pair(sorted[b->pairs[2 * q]], sorted[b->pairs[2 * q + 1]], m);
    middle(sorted[rank0], sorted[rank1], center, m);
    for (int64_t k = 0; k < n; k++) deviations(sorted[k], center, k < a, m);
    merged_rank(sorted, a, n, rank0, m, best0);
    if (rank1 != rank0) merged_rank(sorted, a, n, rank1, m, best1);
    clip_limits(best0, best1, rank1 != rank0, -b->sigma_low, b->sigma_high, low, high, m);
}

/* Combine the tile of m pixels from p0: the vector path for all, then the pixels where a
 * value is missing again on their own. Inlined into each of flatd_combine_band's copies. */
HOT static inline int64_t
combine_tile(const flatd_band *b, const int *big_endian, float *const *values,
             float *const *sorted, int32_t *const *kept, float *pixel_work, int64_t p0,
             int64_t m) {
    float center[TILE], low[TILE], high[TILE], sum[TILE], sq[TILE];
    int32_t count[TILE], flag[TILE];
    int32_t any = 0;
    int64_t flagged = 0;
    memset(flag, 0, sizeof flag);
    for (int64_t k = 0; k < b->n; k++)
        load_plane(b->stack + k * b->plane_stride + p0, big_endian[k], b->planes[k].scale,
                   b->planes[k].saturation, m, values[k], flag);
    for (int64_t j = 0; j < m; j++) any |= flag[j];
    if (b->clip) {
        clip_tile(b, values, sorted, m, center, low, high);
    } else {
        memcpy(center, values[0], m * sizeof(float));
        for (int64_t j = 0; j < m; j++) {
            low[j] = -INFINITY;
            high[j] = INFINITY;
        }
    }
    if (any) /* no value is kept on the vector path; combine_pixel does these */
        for (int64_t j = 0; j < m; j++)
            if (flag[j]) {
                low[j] = INFINITY;
                high[j] = -INFINITY;
                flagged++;
            }
    memset(sum, 0, sizeof sum);
    memset(sq, 0, sizeof sq);
    memset(count, 0, sizeof count);
    for (int64_t k = 0; k < b->n; k++)
        accumulate(values[k], center, low, high, sum, sq, count, kept[k], m);
    finish(center, sum, sq, count, b->data + p0, b->uncert + p0, b->empty + p0, m);
    if (any)
        for (int64_t j = 0; j < m; j++)
            if (flag[j]) combine_pixel(b, values, j, pixel_work, p0 + j);
    return flagged;
}

/* Combine one band (see flatd_band). Returns BAND_OK, or BAND_READ_FAILED with error and
 * error_plane set. */
WIDE_VECTORS int flatd_combine_band(flatd_band *b) {
    const int64_t n = b->n, pixels = b->rows * b->nx;
    if (n < 1 || b->scratch_floats < (3 * n + 2) * TILE) return EINVAL;
    float *values[n], *sorted[n];
    int32_t *kept[n];
    int big_endian[n];
    for (int64_t k = 0; k < n; k++) {
        values[k] = b->scratch + (3 * k) * TILE;
        sorted[k] = b->scratch + (3 * k + 1) * TILE;
        kept[k] = (int32_t *)(b->scratch + (3 * k + 2) * TILE);
        memset(kept[k], 0, TILE * sizeof(int32_t));
    }
    if (read_planes(b, big_endian) != BAND_OK) return BAND_READ_FAILED;
    float *work = b->scratch + 3 * n * TILE; /* 2 * TILE floats: combine_pixel's, n <= 128 */
    float *pixel_work = n <= 2 * TILE ? work : malloc((size_t)n * sizeof(float));
    if (pixel_work == NULL) return ENOMEM;
    int64_t flagged = 0;
    for (int64_t p0 = 0; p0 < pixels; p0 += TILE)
        flagged += combine_tile(b, big_endian, values, sorted, kept, pixel_work, p0,
                                pixels - p0 < TILE ? pixels - p0 : TILE);
    if (pixel_work != work) free(pixel_work);
    for (int64_t k = 0; k < n; k++) {
        int64_t total = 0;
        for (int64_t j = 0; j < TILE; j++) total += kept[k][j];
        b->clipped[k] += pixels - flagged - total;
    }
    return BAND_OK;
}

/* ---- frame tallies ------------------------------------------------------------------ */

/* Add `count` values (big-endian bytes when big_endian) to the tally: the sum and count
 * of the finite ones, how many are below `low`, how many reach `saturation`, and the
 * values within [low, high] appended to `inside`. TALLY_FULL (nothing added) when
 * `inside` might overflow. */
WIDE_VECTORS int64_t flatd_tally_values(flatd_tally *t, const float *values, int64_t count,
                                        int32_t big_endian) {
    enum { BLOCK = 256, LANES = 8 };
    if (t->bracket && t->capacity - t->count < count) return TALLY_FULL;
    float block[BLOCK];
    int32_t ok[BLOCK], is_below[BLOCK], is_saturated[BLOCK], is_inside[BLOCK];
    double sums[LANES] = {0};
    int64_t n_finite = 0, n_below = 0, n_saturated = 0, n_inside = t->count;
    const int check_saturation = t->saturation > 0.0f;
    const float saturation = t->saturation;
    float low = t->low, high = t->high;
    if (!t->bracket) {
        low = INFINITY;
        high = -INFINITY;
    }
    for (int64_t start = 0; start < count; start += BLOCK) {
        int64_t m = count - start < BLOCK ? count - start : BLOCK;
        if (big_endian)
            for (int64_t j = 0; j < m; j++) {
                uint32_t u = __builtin_bswap32(((const uint32_t *)values)[start + j]);
                memcpy(&block[j], &u, 4);
            }
        else
            memcpy(block, values + start, m * sizeof(float));
        for (int64_t j = m; j < BLOCK; j++) block[j] = NAN;
        int32_t counts[4] = {0};
        for (int64_t j = 0; j < BLOCK; j++) {
            float x = block[j];
            int32_t good = x - x == 0.0f;
            ok[j] = good;
            is_below[j] = good & (x < low);
            is_saturated[j] = good & check_saturation & (x >= saturation);
            is_inside[j] = (x >= low) & (x <= high);
            block[j] = good ? x : 0.0f;
        }
        for (int64_t j = 0; j < BLOCK; j += LANES)
            for (int q = 0; q < LANES; q++) sums[q] += block[j + q];
        for (int64_t j = 0; j < BLOCK; j++) {
            counts[0] += ok[j];
            counts[1] += is_below[j];
            counts[2] += is_saturated[j];
            counts[3] += is_inside[j];
        }
        n_finite += counts[0];
        n_below += counts[1];
        n_saturated += counts[2];
        if (counts[3])
            for (int64_t j = 0; j < m; j++) {
                t->inside[n_inside] = block[j];
                n_inside += is_inside[j];
            }
    }
    double total = 0.0;
    for (int q = 0; q < LANES; q++) total += sums[q];
    t->sum += total;
    t->finite += n_finite;
    t->below += n_below;
    t->saturated += n_saturated;
    t->count = n_inside;
    return TALLY_OK;
}

/* flatd_tally_values over `count` values read from a source, through `buffer`
 * (buffer_count floats) and `raw` (raw_bytes, for stored values other than float32).
 * TALLY_OK, TALLY_FULL, or TALLY_READ_FAILED with t->error set. */
int64_t flatd_tally_source(flatd_tally *t, const flatd_source *source, int64_t count,
                           float *buffer, int64_t buffer_count, void *raw, int64_t raw_bytes) {
    int plain = plain_float(source);
    for (int64_t done = 0; done < count; done += buffer_count) {
        int64_t m = count - done < buffer_count ? count - done : buffer_count;
        if (t->bracket && t->capacity - t->count < m) return TALLY_FULL;
        int failure = read_values(source, done, m, buffer, raw, raw_bytes, 1);
        if (failure) {
            t->error = failure;
            return TALLY_READ_FAILED;
        }
        flatd_tally_values(t, buffer, m, plain);
    }
    return TALLY_OK;
}

/* ---- normalising ---------------------------------------------------------------- */

/* How many of `count` values are positive (NaN is not). */
WIDE_VECTORS int64_t flatd_count_positive(const float *values, int64_t count) {
    int64_t positive = 0;
    for (int64_t j = 0; j < count; j++) positive += values[j] > 0.0f;
    return positive;
}

/* Normalise `count` pixels in place, as normalise.normalise_plane does with numpy: data and
 * uncert divided by `level`; a pixel already in `mask` (no value kept), not finite, not
 * positive or below `min_response` is set in `mask` and holds 1 (uncert 0); data and
 * uncert are left big-endian. Returns how many pixels are masked. */
WIDE_VECTORS int64_t flatd_normalise(float *data, float *uncert, uint8_t *mask, int64_t count,
                                     float level, float min_response) {
    int64_t masked = 0;
    uint32_t *data_words = (uint32_t *)data, *uncert_words = (uint32_t *)uncert;
    for (int64_t j = 0; j < count; j++) {
        float x = data[j] / level, u = uncert[j] / level;
        int32_t bad = (mask[j] != 0) | !(x > 0.0f) | (x < min_response) | (x - x != 0.0f);
        x = bad ? 1.0f : x;
        u = bad ? 0.0f : u;
        mask[j] = (uint8_t)bad;
        masked += bad;
        uint32_t xw, uw;
        memcpy(&xw, &x, 4);
        memcpy(&uw, &u, 4);
        data_words[j] = __builtin_bswap32(xw);
        uncert_words[j] = __builtin_bswap32(uw);
    }
    return masked;
}

/* ---- the Python module: only what makes the file an honest extension --------------- */

static struct PyModuleDef kernel_module = {
    PyModuleDef_HEAD_INIT,
    "_kernel",
    "flatd's compiled engine kernel; its functions are called through ctypes "
    "(flatd/engine/kernel.py).",
    -1,
    NULL,
};

PyMODINIT_FUNC PyInit__kernel(void) {
    PyObject *module = PyModule_Create(&kernel_module);
    if (module != NULL && PyModule_AddIntConstant(module, "ABI_VERSION", FLATD_KERNEL_ABI) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
