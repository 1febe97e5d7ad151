// smk's runtime kernels for CUDA GPUs, compiled at first use with NVRTC (no toolkit needed
// where they run, only the driver and libnvrtc). Plain CUDA C with no includes, so that NVRTC
// needs no header search path.
//
// Conventions shared with the CPU runtime (runtime/src/linear.rs): output element (b, o) is at
// y[b·y_batch + o·y_row], input element (b, c) at x[b·x_stride + c]. Element masks are rows of
// `words` 64-bit words, bit c % 64 of word c / 64 set where weight (o, c) is kept. Block masks
// (tile-major) are rows of `mask_words` words per block row, bit gc set where tile
// (gr, gc) is kept; tile (gr, gc) is stored at tile number gr·grid_cols + gc, R·C elements
// row-major. Packed tiles follow the format's block index: block row gr keeps tiles
// row_ptr[gr] .. row_ptr[gr + 1], their block columns in col_idx.
// Seeded weights regenerate smk's SplitMix64 stream (format/src/seeded.rs) bit for bit.

typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned short u16;

#define SMK_GOLDEN 0x9E3779B97F4A7C15ULL

__device__ __forceinline__ u64 smk_mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

__device__ __forceinline__ u64 smk_draw(u64 key, u64 counter) {
    return smk_mix64(key + SMK_GOLDEN * (counter + 1ULL));
}

__device__ __forceinline__ float smk_f16(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ float smk_bf16(u16 h) {
    return __uint_as_float(((u32)h) << 16);
}

// Storage kinds: 0 f32, 1 f16, 2 bf16.
template <int KIND>
__device__ __forceinline__ float smk_load(const void* w, size_t i) {
    if (KIND == 0) return ((const float*)w)[i];
    if (KIND == 1) return smk_f16(((const u16*)w)[i]);
    return smk_bf16(((const u16*)w)[i]);
}

__device__ __forceinline__ float smk_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

// Stored weights, no mask or an element mask: one warp per (row, input), lanes over columns so
// that a warp reads 32 consecutive weights. Grid: x covers rows·32 threads, y the inputs.
template <int KIND>
__device__ void smk_rows(const void* w, const u64* mask, int rows, int cols, int words,
                         const float* x, int x_stride, float* y, int y_batch, int y_row) {
    int row = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    int b = blockIdx.y;
    if (row >= rows) return;  // whole warps leave together: rows·32 threads are warp-aligned
    const float* xb = x + (size_t)b * x_stride;
    const u64* m = mask ? mask + (size_t)row * words : 0;
    float acc = 0.f;
    for (int c = lane; c < cols; c += 32) {
        if (m && !((m[c >> 6] >> (c & 63)) & 1ULL)) continue;
        acc += smk_load<KIND>(w, (size_t)row * cols + c) * xb[c];
    }
    acc = smk_warp_sum(acc);
    if (lane == 0) y[(size_t)b * y_batch + (size_t)row * y_row] = acc;
}

extern "C" __global__ void smk_rows_f32(const void* w, const u64* mask, int rows, int cols, int words,
                                        const float* x, int x_stride, float* y, int y_batch, int y_row) {
    smk_rows<0>(w, mask, rows, cols, words, x, x_stride, y, y_batch, y_row);
}
extern "C" __global__ void smk_rows_f16(const void* w, const u64* mask, int rows, int cols, int words,
                                        const float* x, int x_stride, float* y, int y_batch, int y_row) {
    smk_rows<1>(w, mask, rows, cols, words, x, x_stride, y, y_batch, y_row);
}
extern "C" __global__ void smk_rows_bf16(const void* w, const u64* mask, int rows, int cols, int words,
                                         const float* x, int x_stride, float* y, int y_batch, int y_row) {
    smk_rows<2>(w, mask, rows, cols, words, x, x_stride, y, y_batch, y_row);
}

// One R × C tile's row r against the inputs, accumulated by the lanes of one warp.
template <int KIND>
__device__ __forceinline__ float smk_tile_row(const void* data, size_t tile, int R, int C, int r,
                                              int c0, int cols, const float* xb, int lane) {
    float acc = 0.f;
    size_t base = tile * (size_t)R * C + (size_t)r * C;
    for (int c = lane; c < C; c += 32) {
        int col = c0 + c;
        if (col < cols) acc += smk_load<KIND>(data, base + c) * xb[col];
    }
    return acc;
}

// Block masks: one thread block per (block row, input), one warp per row of the block row
// (blockDim = 32 × min(R, 32); warps stride over taller blocks). `packed` selects the layout:
// packed tiles through row_ptr/col_idx, or tile-major tiles through the block mask's set bits.
template <int KIND>
__device__ void smk_blocks(const void* data, const u32* row_ptr, const u32* col_idx, const u64* bmask,
                           int mask_words, int R, int C, int rows, int cols, const float* x,
                           int x_stride, float* y, int y_batch, int y_row) {
    int gr = blockIdx.x, b = blockIdx.y, lane = threadIdx.x;
    int grid_cols = (cols + C - 1) / C;
    const float* xb = x + (size_t)b * x_stride;
    for (int r = threadIdx.y; r < R; r += blockDim.y) {
        int row = gr * R + r;
        if (row >= rows) break;  // uniform across the warp
        float acc = 0.f;
        if (row_ptr) {
            for (u32 k = row_ptr[gr]; k < row_ptr[gr + 1]; ++k)
                acc += smk_tile_row<KIND>(data, k, R, C, r, (int)col_idx[k] * C, cols, xb, lane);
        } else {
            const u64* words = bmask + (size_t)gr * mask_words;
            for (int wi = 0; wi < mask_words; ++wi) {
                u64 bits = words[wi];
                while (bits) {
                    int gc = wi * 64 + __ffsll((long long)bits) - 1;
                    bits &= bits - 1ULL;
                    if (gc >= grid_cols) break;
                    acc += smk_tile_row<KIND>(data, (size_t)gr * grid_cols + gc, R, C, r, gc * C, cols, xb, lane);
                }
            }
        }
        acc = smk_warp_sum(acc);
        if (lane == 0) y[(size_t)b * y_batch + (size_t)row * y_row] = acc;
    }
}

#define SMK_BLOCKS(NAME, KIND)                                                                          \
    extern "C" __global__ void NAME(const void* data, const u32* row_ptr, const u32* col_idx,          \
                                    const u64* bmask, int mask_words, int R, int C, int rows, int cols, \
                                    const float* x, int x_stride, float* y, int y_batch, int y_row) {   \
        smk_blocks<KIND>(data, row_ptr, col_idx, bmask, mask_words, R, C, rows, cols, x, x_stride, y,   \
                         y_batch, y_row);                                                               \
    }
SMK_BLOCKS(smk_blocks_f32, 0)
SMK_BLOCKS(smk_blocks_f16, 1)
SMK_BLOCKS(smk_blocks_bf16, 2)

// Seeded signed-constant weights, no mask or an element mask: one warp per (row, input); each
// lane draws the 64 signs of its words and adds ±x where the mask keeps the weight:
// y = scale · Σ_m ±x. Grid as for smk_rows_*.
extern "C" __global__ void smk_signed_rows(u64 key, float scale, const u64* mask, int rows, int cols,
                                           int words, const float* x, int x_stride, float* y,
                                           int y_batch, int y_row) {
    int row = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    int b = blockIdx.y;
    if (row >= rows) return;
    const float* xb = x + (size_t)b * x_stride;
    float acc = 0.f;
    for (int wi = lane; wi < words; wi += 32) {
        u64 s = smk_draw(key, (u64)row * words + wi);
        u64 m = mask ? mask[(size_t)row * words + wi] : ~0ULL;
        int end = min(64, cols - wi * 64);
        for (int j = 0; j < end; ++j) {
            if (!((m >> j) & 1ULL)) continue;
            float v = xb[wi * 64 + j];
            acc += ((s >> j) & 1ULL) ? v : -v;
        }
    }
    acc = smk_warp_sum(acc);
    if (lane == 0) y[(size_t)b * y_batch + (size_t)row * y_row] = scale * acc;
}

// Seeded signed-constant weights under a tile-major block mask: one thread per row of a block
// row (grid: block rows × inputs; blockDim.x ≥ R), walking the kept tiles of its block row.
extern "C" __global__ void smk_signed_blocks(u64 key, float scale, const u64* bmask, int mask_words,
                                             int R, int C, int rows, int cols, const float* x,
                                             int x_stride, float* y, int y_batch, int y_row) {
    int gr = blockIdx.x, b = blockIdx.y, r = threadIdx.x;
    int row = gr * R + r;
    if (r >= R || row >= rows) return;
    int words = (cols + 63) / 64, grid_cols = (cols + C - 1) / C;
    const float* xb = x + (size_t)b * x_stride;
    const u64* mw = bmask + (size_t)gr * mask_words;
    float acc = 0.f;
    for (int wi = 0; wi < mask_words; ++wi) {
        u64 bits = mw[wi];
        while (bits) {
            int gc = wi * 64 + __ffsll((long long)bits) - 1;
            bits &= bits - 1ULL;
            if (gc >= grid_cols) break;
            int end = min((gc + 1) * C, cols);
            u64 s = 0;
            int drawn = -1;  // the word of signs in `s`: one draw serves 64 columns
            for (int c = gc * C; c < end; ++c) {
                if ((c >> 6) != drawn) {
                    drawn = c >> 6;
                    s = smk_draw(key, (u64)row * words + drawn);
                }
                float v = xb[c];
                acc += ((s >> (c & 63)) & 1ULL) ? v : -v;
            }
        }
    }
    y[(size_t)b * y_batch + (size_t)row * y_row] = scale * acc;
}

// Seeded uniform (rule 1) or normal (rule 2) weights, regenerated per element with the
// format's formulas in double precision, under an optional element mask. Grid as smk_rows_*.
extern "C" __global__ void smk_generated_rows(u64 key, int rule, float scale, const u64* mask, int rows,
                                              int cols, int words, const float* x, int x_stride,
                                              float* y, int y_batch, int y_row) {
    int row = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    int b = blockIdx.y;
    if (row >= rows) return;
    const float* xb = x + (size_t)b * x_stride;
    const u64* m = mask ? mask + (size_t)row * words : 0;
    float acc = 0.f;
    for (int c = lane; c < cols; c += 32) {
        if (m && !((m[c >> 6] >> (c & 63)) & 1ULL)) continue;
        u64 d = smk_draw(key, (u64)row * cols + c);
        float w;
        if (rule == 1) {
            long long k = (long long)(d >> 40);
            w = (float)((double)scale * ((double)(2 * k + 1 - (1LL << 24)) / 16777216.0));
        } else {
            double u1 = ((double)(d >> 32) + 0.5) / 4294967296.0;
            double u2 = ((double)(d & 0xFFFFFFFFULL) + 0.5) / 4294967296.0;
            w = (float)((double)scale * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
        }
        acc += w * xb[c];
    }
    acc = smk_warp_sum(acc);
    if (lane == 0) y[(size_t)b * y_batch + (size_t)row * y_row] = acc;
}

// y[b·y_batch + o·y_row] += bias[o] (when given), then max(·, 0) when relu != 0.
extern "C" __global__ void smk_bias_relu(float* y, const float* bias, int rows, int batch, int y_batch,
                                         int y_row, int relu) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (i >= (size_t)rows * batch) return;
    int o = (int)(i % rows), b = (int)(i / rows);
    float* p = y + (size_t)b * y_batch + (size_t)o * y_row;
    float v = *p + (bias ? bias[o] : 0.f);
    *p = relu ? fmaxf(v, 0.f) : v;
}

// Softmax over each of `batch` rows of n values (one warp per row).
extern "C" __global__ void smk_softmax(float* x, int n, int batch) {
    int b = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    if (b >= batch) return;
    float* r = x + (size_t)b * n;
    float m = -3.402823466e38f;
    for (int i = lane; i < n; i += 32) m = fmaxf(m, r[i]);
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float s = 0.f;
    for (int i = lane; i < n; i += 32) s += expf(r[i] - m);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    for (int i = lane; i < n; i += 32) r[i] = expf(r[i] - m) / s;
}
