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

// A seeded uniform (rule 1) or normal (rule 2) weight: the format's formulas, in double
// precision, of draw `counter` (row·cols + col).
__device__ __forceinline__ float smk_generated(u64 key, int rule, float scale, u64 counter) {
    u64 d = smk_draw(key, counter);
    if (rule == 1) {
        long long k = (long long)(d >> 40);
        return (float)((double)scale * ((double)(2 * k + 1 - (1LL << 24)) / 16777216.0));
    }
    double u1 = ((double)(d >> 32) + 0.5) / 4294967296.0;
    double u2 = ((double)(d & 0xFFFFFFFFULL) + 0.5) / 4294967296.0;
    return (float)((double)scale * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

// Seeded uniform or normal weights regenerated per element, under an optional element mask.
// Grid as smk_rows_*.
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
        acc += smk_generated(key, rule, scale, (u64)row * cols + c) * xb[c];
    }
    acc = smk_warp_sum(acc);
    if (lane == 0) y[(size_t)b * y_batch + (size_t)row * y_row] = acc;
}

// ---- Many inputs at once -------------------------------------------------------------------
//
// The kernels above give each input its own pass over the weights: right for batch 1, where
// reading the weights once is the whole cost, and wasteful for many inputs. smk_tiled reads a
// 32-row × 32-column tile of weights into shared memory once for 64 inputs, as a dense GEMM
// would, and skips tiles that a block mask empties without reading them.
//
// The weights of any storage and mask, as one element function: `kind` 0/1/2 stored
// f32/f16/bf16 (row-major, or in tiles when `slot` is given), 3 seeded signed-constant, 4/5
// seeded uniform/normal. `emask` is an element mask (rows of `words` words); `slot` a block
// mask spelled out per tile: slot[gr·grid_cols + gc] is the stored tile number of kept tile
// (gr, gc), −1 where it is masked out.
struct SmkWeights {
    const void* data;
    const u64* emask;
    const int* slot;
    u64 key;
    float scale;
    int kind, rows, cols, words, R, C, grid_cols;
};

__device__ __forceinline__ float smk_weight_at(const SmkWeights& w, int r, int c) {
    if (w.emask && !((w.emask[(size_t)r * w.words + (c >> 6)] >> (c & 63)) & 1ULL)) return 0.f;
    size_t i = (size_t)r * w.cols + c;
    if (w.slot) {
        int s = w.slot[(size_t)(r / w.R) * w.grid_cols + c / w.C];
        if (s < 0) return 0.f;
        i = (size_t)s * w.R * w.C + (size_t)(r % w.R) * w.C + (c % w.C);
    }
    switch (w.kind) {
        case 0: return ((const float*)w.data)[i];
        case 1: return smk_f16(((const u16*)w.data)[i]);
        case 2: return smk_bf16(((const u16*)w.data)[i]);
        case 3: {
            u64 s = smk_draw(w.key, (u64)r * w.words + (c >> 6));
            return ((s >> (c & 63)) & 1ULL) ? w.scale : -w.scale;
        }
        default: return smk_generated(w.key, w.kind - 3, w.scale, (u64)r * w.cols + c);
    }
}

#define SMK_TM 32
#define SMK_TN 64
#define SMK_TK 32

// Whether any tile of the block mask meets rows r0.., columns k0.. of one TM × TK tile. The
// same answer in every thread (it depends on the block's position only), so a skip is uniform.
__device__ __forceinline__ bool smk_tile_any(const SmkWeights& w, int r0, int k0) {
    if (!w.slot) return true;
    int g0 = r0 / w.R, g1 = (min(r0 + SMK_TM, w.rows) - 1) / w.R;
    int h0 = k0 / w.C, h1 = (min(k0 + SMK_TK, w.cols) - 1) / w.C;
    if ((g1 - g0 + 1) * (h1 - h0 + 1) > 64) return true;  // small blocks: not worth the lookups
    for (int g = g0; g <= g1; ++g)
        for (int h = h0; h <= h1; ++h)
            if (w.slot[(size_t)g * w.grid_cols + h] >= 0) return true;
    return false;
}

// y(n, o) for n < `n` inputs: grid (ceil(rows/32), ceil(n/64)), 256 threads. Thread t owns rows
// t/32 + 8j (j < 4) and inputs t%32 and t%32 + 32 of its block's tile: per shared column, two
// input loads and four (broadcast) weight loads feed eight multiply-adds.
extern "C" __global__ void __launch_bounds__(256)
smk_tiled(const void* data, const u64* emask, const int* slot, u64 key, float scale, int kind, int rows,
          int cols, int words, int R, int C, int grid_cols, const float* x, int x_stride, int n, float* y,
          int y_batch, int y_row) {
    __shared__ float ws[SMK_TM][SMK_TK + 1];  // +1: rows fall in different banks
    __shared__ float xs[SMK_TK][SMK_TN + 1];
    SmkWeights w = {data, emask, slot, key, scale, kind, rows, cols, words, R, C, grid_cols};
    int r0 = blockIdx.x * SMK_TM, n0 = blockIdx.y * SMK_TN;
    int t = threadIdx.x, tn = t & 31, tr = t >> 5;
    float acc[4][2] = {{0.f, 0.f}, {0.f, 0.f}, {0.f, 0.f}, {0.f, 0.f}};
    for (int k0 = 0; k0 < cols; k0 += SMK_TK) {
        if (!smk_tile_any(w, r0, k0)) continue;
        for (int i = t; i < SMK_TM * SMK_TK; i += 256) {
            int r = i / SMK_TK, k = i % SMK_TK;
            ws[r][k] = (r0 + r < rows && k0 + k < cols) ? smk_weight_at(w, r0 + r, k0 + k) : 0.f;
        }
        for (int i = t; i < SMK_TN * SMK_TK; i += 256) {
            int j = i / SMK_TK, k = i % SMK_TK;
            xs[k][j] = (n0 + j < n && k0 + k < cols) ? x[(size_t)(n0 + j) * x_stride + k0 + k] : 0.f;
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < SMK_TK; ++k) {
            float a = xs[k][tn], b = xs[k][tn + 32];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                float v = ws[tr + 8 * j][k];
                acc[j][0] += v * a;
                acc[j][1] += v * b;
            }
        }
        __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        int r = r0 + tr + 8 * j;
        if (r >= rows) break;
        if (n0 + tn < n) y[(size_t)(n0 + tn) * y_batch + (size_t)r * y_row] = acc[j][0];
        if (n0 + tn + 32 < n) y[(size_t)(n0 + tn + 32) * y_batch + (size_t)r * y_row] = acc[j][1];
    }
}

// ---- The other layers ----------------------------------------------------------------------
// Images are [C, H, W] per batch item, as in the CPU runtime.

// The input row of output position o and kernel offset u along one axis, or -1 outside.
__device__ __forceinline__ int smk_source(int o, int u, int stride, int pad, int dil, int n) {
    int p = o * stride + u * dil - pad;
    return (p >= 0 && p < n) ? p : -1;
}

// Patches of `batch` images: row b·P + p (p = i·wo + j) holds, at c·kh·kw + u·kw + v, the input
// under kernel position (c, u, v) for output (i, j), 0 outside. One thread per patch value.
extern "C" __global__ void smk_im2col(const float* x, int batch, int C, int H, int W, int ho, int wo, int kh,
                                      int kw, int sh, int sw, int ph, int pw, int dh, int dw,
                                      float* patches) {
    int K = C * kh * kw, P = ho * wo;
    size_t total = (size_t)batch * P * K;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total; e += (size_t)gridDim.x * blockDim.x) {
        int k = (int)(e % K);
        size_t row = e / K;
        int p = (int)(row % P), b = (int)(row / P);
        int c = k / (kh * kw), u = (k / kw) % kh, v = k % kw;
        int a = smk_source(p / wo, u, sh, ph, dh, H), s = smk_source(p % wo, v, sw, pw, dw, W);
        patches[e] = (a >= 0 && s >= 0) ? x[(((size_t)b * C + c) * H + a) * W + s] : 0.f;
    }
}

// A convolution's product comes out as rows b·P + p of O channels; the layer's output is
// [O, P] per image: y[b][o][p] = t[b·P + p][o] + bias[o], then max(·, 0) when relu != 0.
extern "C" __global__ void smk_conv_out(const float* t, const float* bias, int O, int P, int batch, int relu,
                                        float* y) {
    size_t total = (size_t)batch * O * P;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total; e += (size_t)gridDim.x * blockDim.x) {
        int p = (int)(e % P);
        int o = (int)((e / P) % O);
        size_t b = e / ((size_t)P * O);
        float v = t[(b * P + p) * O + o] + (bias ? bias[o] : 0.f);
        y[e] = relu ? fmaxf(v, 0.f) : v;
    }
}

// Pooling over [C, H, W] images: mode 0 max (outside counts as −∞), 1 average over the whole
// window, 2 average over the part inside.
extern "C" __global__ void smk_pool(const float* x, int batch, int C, int H, int W, int ho, int wo, int kh,
                                    int kw, int sh, int sw, int ph, int pw, int mode, float* y) {
    size_t total = (size_t)batch * C * ho * wo;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total; e += (size_t)gridDim.x * blockDim.x) {
        int j = (int)(e % wo), i = (int)((e / wo) % ho);
        size_t plane = e / ((size_t)ho * wo);  // b·C + c
        const float* xp = x + plane * H * W;
        float m = __int_as_float(0xff800000);  // −∞
        float s = 0.f;
        int inside = 0;
        for (int u = 0; u < kh; ++u) {
            int a = smk_source(i, u, sh, ph, 1, H);
            if (a < 0) continue;
            for (int v = 0; v < kw; ++v) {
                int b = smk_source(j, v, sw, pw, 1, W);
                if (b < 0) continue;
                float val = xp[(size_t)a * W + b];
                m = fmaxf(m, val);
                s += val;
                ++inside;
            }
        }
        y[e] = mode == 0 ? m : s / (float)(mode == 1 ? kh * kw : max(inside, 1));
    }
}

// y = x·scale[ch] + shift[ch] over items of `channels × per` values (inference batch norm, its
// scale and shift folded on the host).
extern "C" __global__ void smk_channel_affine(const float* x, const float* scale, const float* shift,
                                              int channels, int per, size_t total, float* y) {
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total; e += (size_t)gridDim.x * blockDim.x) {
        int ch = (int)((e / per) % channels);
        y[e] = x[e] * scale[ch] + shift[ch];
    }
}

// Layer norm over each of `count` rows of `len` values, one warp per row; gamma and beta may be
// null.
extern "C" __global__ void smk_layer_norm(const float* x, const float* gamma, const float* beta, int len,
                                          int count, float eps, float* y) {
    int row = (int)((blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    if (row >= count) return;
    const float* xr = x + (size_t)row * len;
    float* yr = y + (size_t)row * len;
    float s = 0.f;
    for (int i = lane; i < len; i += 32) s += xr[i];
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    float mean = s / (float)len, q = 0.f;
    for (int i = lane; i < len; i += 32) q += (xr[i] - mean) * (xr[i] - mean);
    for (int o = 16; o > 0; o >>= 1) q += __shfl_xor_sync(0xffffffffu, q, o);
    float inv = 1.f / sqrtf(q / (float)len + eps);
    for (int i = lane; i < len; i += 32)
        yr[i] = (xr[i] - mean) * inv * (gamma ? gamma[i] : 1.f) + (beta ? beta[i] : 0.f);
}

// y = a + b, element-wise (residual adds).
extern "C" __global__ void smk_add(const float* a, const float* b, size_t n, float* y) {
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n; e += (size_t)gridDim.x * blockDim.x)
        y[e] = a[e] + b[e];
}

// y[b·y_batch + o·y_row] += bias[o] (when given), then max(·, 0) when relu != 0.
// Grid-stride: any grid covers any size.
extern "C" __global__ void smk_bias_relu(float* y, const float* bias, int rows, int batch, int y_batch,
                                         int y_row, int relu) {
    size_t total = (size_t)rows * batch;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int o = (int)(i % rows), b = (int)(i / rows);
        float* p = y + (size_t)b * y_batch + (size_t)o * y_row;
        float v = *p + (bias ? bias[o] : 0.f);
        *p = relu ? fmaxf(v, 0.f) : v;
    }
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
