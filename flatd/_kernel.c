/* The compiled core of flatd's combination engine (see combine.py), loaded with ctypes.
 *
 * Plain C99 with no Python API, so building it needs only a C compiler. It does, for a
 * band of rows, exactly the float32 arithmetic of the numpy engine in combine.py (same
 * sorting network, same merge-path MAD, same order of sums), but a tile of pixels at a
 * time in the L1 cache instead of whole rows through memory: one read of the frames and
 * one write of the outputs instead of some two hundred element-wise passes. Anything it
 * does not handle (non-finite values, other methods) is left to the numpy engine.
 *
 * Frames stored as plain big-endian float32 are read here too (pread), so that a band or
 * a frame costs one call without the GIL: the call never waits for Python in between.
 *
 * Built with -ffp-contract=off: a fused multiply-add would round differently from numpy.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define TILE 64

/* Where the compiler can, an AVX2 copy of the two hot functions is chosen at load time
 * (twice the vector width of the x86-64 baseline; no FMA, so the same results). */
#if defined(__x86_64__) && defined(__GNUC__)
#define WIDE_VECTORS __attribute__((target_clones("avx2", "default")))
#else
#define WIDE_VECTORS
#endif

#define READ_EOF (-1)

/* Read nbytes at offset into dest: 0, READ_EOF when the file ends early, or errno. */
static int read_fully(int fd, int64_t offset, int64_t nbytes, void *dest) {
    char *cursor = dest;
    while (nbytes > 0) {
        ssize_t got = pread(fd, cursor, (size_t)nbytes, (off_t)offset);
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
#define MAD_TO_STD 1.482602218505602f

static void load_plane(const float *restrict src, int swap, float scale, int64_t m,
                       float *restrict dst, float *restrict check) {
    if (swap) {
        const uint32_t *restrict raw = (const uint32_t *)src;
        for (int64_t j = 0; j < m; j++) {
            uint32_t u = __builtin_bswap32(raw[j]);
            float x;
            memcpy(&x, &u, 4);
            dst[j] = x * scale;
            check[j] += x * 0.0f; /* stays 0 unless x is NaN or infinite */
        }
    } else {
        for (int64_t j = 0; j < m; j++) {
            float x = src[j];
            dst[j] = x * scale;
            check[j] += x * 0.0f;
        }
    }
}

/* Element-wise rank-th smallest (from 0) of the union of the sorted lists lower[]
 * (lower[q] = base[a-1-q]) and upper[] (upper[q] = base[a+q]), as combine._merged_rank. */
static void merged_rank(float *const *base, int64_t a, int64_t n, int64_t rank, int64_t m,
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

static void sort_pair(float *restrict x, float *restrict y, int64_t m) {
    for (int64_t j = 0; j < m; j++) {
        float lo = x[j] < y[j] ? x[j] : y[j];
        float hi = x[j] < y[j] ? y[j] : x[j];
        x[j] = lo;
        y[j] = hi;
    }
}

static void accumulate(const float *restrict v, const float *restrict center,
                       const float *restrict low, const float *restrict high,
                       float *restrict sum, float *restrict sq, int32_t *restrict count,
                       int32_t *restrict kept, float *restrict lane, int64_t m) {
    for (int64_t j = 0; j < m; j++) {
        float offset = v[j] - center[j];
        int32_t keep = (offset >= low[j]) & (offset <= high[j]);
        offset = keep ? offset : 0.0f;
        sum[j] += offset;
        sq[j] += offset * offset;
        count[j] += keep;
        kept[j] += keep;
        lane[j] += offset;
    }
}

static void finish(const float *restrict center, const float *restrict sum,
                   const float *restrict sq, const int32_t *restrict count,
                   float *restrict out, float *restrict out_uncert,
                   uint8_t *restrict out_empty, int64_t m) {
    for (int64_t j = 0; j < m; j++) {
        float inverse = 1.0f / (float)(count[j] > 1 ? count[j] : 1);
        float mean = sum[j] * inverse;
        float variance = sq[j] * inverse - mean * mean;
        variance = variance > 0.0f ? variance : 0.0f;
        int none = count[j] == 0;
        out[j] = none ? NAN : center[j] + mean;
        out_uncert[j] = none ? 0.0f : sqrtf(variance * inverse);
        out_empty[j] = (uint8_t)none;
    }
}

static void clip_limits(const float *restrict best0,
                        const float *restrict best1, int two, float k_low, float k_high,
                        float *restrict low, float *restrict high, int64_t m) {
    for (int64_t j = 0; j < m; j++) {
        float mad = two ? (best0[j] + best1[j]) / 2.0f : best0[j];
        float deviation = MAD_TO_STD * mad;
        low[j] = deviation * k_low;
        high[j] = deviation * k_high;
    }
}

static void deviations(float *restrict row, const float *restrict center, int below,
                       int64_t m) {
    if (below)
        for (int64_t j = 0; j < m; j++) row[j] = center[j] - row[j];
    else
        for (int64_t j = 0; j < m; j++) row[j] = row[j] - center[j];
}

static void middle(const float *restrict x, const float *restrict y, float *restrict center,
                   int64_t m) {
    for (int64_t j = 0; j < m; j++) center[j] = (x[j] + y[j]) / 2.0f;
}

/* Combine one band of rows.
 *
 * stack: n planes of rows*nx values, plane k at stack + k*plane_stride (big-endian bytes
 * where swap[k]); scales: n factors. clip: sigma-clip around the median with mad_std
 * (else: no clipping, the first frame's values as the center). pairs: the sorting
 * network's npairs comparators (2 ints each). col_edges: grid_cols+1 column bounds of the
 * structure blocks; row_block: each band row's block row. scratch: 4 * n * TILE floats.
 * Outputs: data, uncert (the unnormalised mean and its standard deviation) and empty,
 * rows*nx each; clipped[k], offset_blocks[(k*grid_rows + block_row)*grid_cols + block_col]
 * and center_blocks[block_row*grid_cols + block_col] are added to.
 * Planes with fds[k] >= 0 are first read from that file at offsets[k] (big-endian).
 * Returns 0; 1 when a value is not finite (the planes are read, the outputs partly
 * written); 2 when a read fails: read_error[0] is its errno (or READ_EOF: the file is
 * too short), read_error[1] the plane. */
WIDE_VECTORS int flatd_combine_band(float *stack, int64_t plane_stride, const int32_t *fds,
                       const int64_t *offsets, int *read_error, const uint8_t *swap,
                       const float *scales, int64_t n, int64_t rows, int64_t nx, int clip,
                       float sigma_low, float sigma_high, const int32_t *pairs,
                       int64_t npairs, const int64_t *col_edges, int64_t grid_rows,
                       int64_t grid_cols, const int32_t *row_block, float *scratch,
                       float *data, float *uncert, uint8_t *empty, int64_t *clipped,
                       double *offset_blocks, double *center_blocks) {
    float *values[n > 0 ? n : 1], *sorted[n > 0 ? n : 1], *lane_offsets[n > 0 ? n : 1];
    int32_t *lane_kept[n > 0 ? n : 1];
    for (int64_t k = 0; k < n; k++) {
        values[k] = scratch + (4 * k) * TILE;
        sorted[k] = scratch + (4 * k + 1) * TILE;
        lane_offsets[k] = scratch + (4 * k + 2) * TILE;
        lane_kept[k] = (int32_t *)(scratch + (4 * k + 3) * TILE);
    }
    for (int64_t k = 0; k < n; k++) {
        if (fds[k] < 0) continue;
        int failure = read_fully(fds[k], offsets[k], rows * nx * (int64_t)sizeof(float),
                                 stack + k * plane_stride);
        if (failure) {
            read_error[0] = failure;
            read_error[1] = (int)k;
            return 2;
        }
    }
    float center[TILE], low[TILE], high[TILE], sum[TILE], sq[TILE], check[TILE];
    float best0[TILE], best1[TILE], lane_center[TILE];
    int32_t count[TILE];
    const float k_low = -sigma_low, k_high = sigma_high;
    const int64_t a = (n - 1) / 2 + 1, rank0 = (n - 1) / 2, rank1 = n / 2;
    if (!clip)
        for (int64_t j = 0; j < TILE; j++) {
            low[j] = -INFINITY;
            high[j] = INFINITY;
        }

    for (int64_t r = 0; r < rows; r++) {
        for (int64_t cb = 0; cb < grid_cols; cb++) {
            int64_t c0 = col_edges[cb], c1 = col_edges[cb + 1];
            for (int64_t k = 0; k < n; k++) {
                memset(lane_offsets[k], 0, TILE * sizeof(float));
                memset(lane_kept[k], 0, TILE * sizeof(int32_t));
            }
            memset(lane_center, 0, sizeof lane_center);
            for (int64_t t0 = c0; t0 < c1; t0 += TILE) {
                int64_t m = c1 - t0 < TILE ? c1 - t0 : TILE;
                int64_t p = r * nx + t0;
                memset(check, 0, sizeof check);
                for (int64_t k = 0; k < n; k++)
                    load_plane(stack + k * plane_stride + p, swap[k], scales[k], m, values[k],
                               check);
                for (int64_t j = 0; j < m; j++)
                    if (check[j] != 0.0f) return 1;
                if (clip) {
                    for (int64_t k = 0; k < n; k++) memcpy(sorted[k], values[k], m * sizeof(float));
                    for (int64_t q = 0; q < npairs; q++)
                        sort_pair(sorted[pairs[2 * q]], sorted[pairs[2 * q + 1]], m);
                    middle(sorted[rank0], sorted[rank1], center, m);
                    for (int64_t k = 0; k < n; k++) deviations(sorted[k], center, k < a, m);
                    merged_rank(sorted, a, n, rank0, m, best0);
                    if (rank1 != rank0) merged_rank(sorted, a, n, rank1, m, best1);
                    clip_limits(best0, best1, rank1 != rank0, k_low, k_high, low, high, m);
                } else {
                    memcpy(center, values[0], m * sizeof(float));
                }
                for (int64_t j = 0; j < m; j++) {
                    sum[j] = 0.0f;
                    sq[j] = 0.0f;
                    count[j] = 0;
                    lane_center[j] += center[j];
                }
                for (int64_t k = 0; k < n; k++)
                    accumulate(values[k], center, low, high, sum, sq, count, lane_kept[k],
                               lane_offsets[k], m);
                finish(center, sum, sq, count, data + p, uncert + p, empty + p, m);
            }
            int64_t block = row_block[r] * grid_cols + cb, width = c1 - c0;
            double total = 0.0;
            for (int64_t j = 0; j < TILE; j++) total += lane_center[j];
            center_blocks[block] += total;
            for (int64_t k = 0; k < n; k++) {
                double offsets = 0.0;
                int64_t kept = 0;
                for (int64_t j = 0; j < TILE; j++) {
                    offsets += lane_offsets[k][j];
                    kept += lane_kept[k][j];
                }
                offset_blocks[k * grid_rows * grid_cols + block] += offsets;
                clipped[k] += width - kept;
            }
        }
    }
    return 0;
}

/* One chunk of a frame-level tally (combine._Tally): the sum and count of its finite
 * values, how many are below `low`, how many reach `saturation` (when > 0), and its
 * values within [low, high] copied to `inside` (at most count of them); `bracket` = 0
 * skips the last two. Big-endian bytes when swap. Returns how many went to `inside`. */
WIDE_VECTORS int64_t flatd_tally(const float *values, int64_t count, int swap, int bracket,
                                  float low, float high, float saturation, double *sum,
                                  int64_t *finite, int64_t *below, int64_t *saturated,
                                  float *inside) {
    enum { BLOCK = 256, LANES = 8 };
    float block[BLOCK];
    int32_t ok[BLOCK], is_below[BLOCK], is_saturated[BLOCK], is_inside[BLOCK];
    double sums[LANES] = {0};
    int64_t n_finite = 0, n_below = 0, n_saturated = 0, n_inside = 0;
    const int check_saturation = saturation > 0.0f;
    if (!bracket) {
        low = INFINITY;
        high = -INFINITY;
    }
    for (int64_t start = 0; start < count; start += BLOCK) {
        int64_t m = count - start < BLOCK ? count - start : BLOCK;
        if (swap)
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
                inside[n_inside] = block[j];
                n_inside += is_inside[j];
            }
    }
    double total = 0.0;
    for (int q = 0; q < LANES; q++) total += sums[q];
    *sum += total;
    *finite += n_finite;
    *below += n_below;
    *saturated += n_saturated;
    return n_inside;
}

/* flatd_tally over `count` big-endian float32 values read from fd at offset, through
 * `buffer` (buffer_count floats). Returns how many values went to `inside`, -1 when more
 * than inside_capacity - buffer_count would, or -2 when a read fails, its errno (or
 * READ_EOF: the file is too short) in *read_error. */
int64_t flatd_tally_file(int fd, int64_t offset, int64_t count, int *read_error,
                         int bracket, float low,
                         float high, float saturation, double *sum, int64_t *finite,
                         int64_t *below, int64_t *saturated, float *buffer,
                         int64_t buffer_count, float *inside, int64_t inside_capacity) {
    int64_t n_inside = 0;
    for (int64_t done = 0; done < count; done += buffer_count) {
        int64_t m = count - done < buffer_count ? count - done : buffer_count;
        if (n_inside + m > inside_capacity) return -1;
        int failure = read_fully(fd, offset + done * (int64_t)sizeof(float),
                                 m * (int64_t)sizeof(float), buffer);
        if (failure) {
            *read_error = failure;
            return -2;
        }
        n_inside += flatd_tally(buffer, m, 1, bracket, low, high, saturation, sum, finite,
                                below, saturated, inside + n_inside);
    }
    return n_inside;
}

