// Element-wise and sparse kernels of the op catalog (the GEMM is gemm.cl). Build options:
//   T   float or double (data);  IDX  int or long (CSR column indices);  HAS_FP64
#ifdef HAS_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif

#define ACT_NONE 0
#define ACT_RELU 1
#define ACT_GELU 2
#define ACT_SIGMOID 3
#define ACT_TANH 4

inline T activate(T z, int act) {
    switch (act) {
    case ACT_RELU: return fmax(z, (T)0);
    case ACT_GELU: return (T)0.5 * z * ((T)1 + tanh((T)0.7978845608028654 * (z + (T)0.044715 * z * z * z)));
    case ACT_SIGMOID: return (T)1 / ((T)1 + exp(-z));
    case ACT_TANH: return tanh(z);
    default: return z;
    }
}

// y[i, j] = act(y[i, j] + bias[j]) in place; one work-item per element (rows x cols grid).
__kernel void bias_act(__global T* y, __global const T* bias, const int rows, const int cols, const int ld,
                       const int act) {
    const int j = get_global_id(0), i = get_global_id(1);
    if (i >= rows || j >= cols) return;
    T z = y[(size_t)i * ld + j];
    if (bias) z += bias[j];
    y[(size_t)i * ld + j] = activate(z, act);
}

// Row-wise softmax of (y + bias), in place: one work-item per row (rows are short: class scores).
__kernel void bias_softmax(__global T* y, __global const T* bias, const int rows, const int cols, const int ld) {
    const int i = get_global_id(0);
    if (i >= rows) return;
    __global T* row = y + (size_t)i * ld;
    T top = -INFINITY;
    for (int j = 0; j < cols; j++) {
        T z = row[j] + (bias ? bias[j] : (T)0);
        row[j] = z;
        top = fmax(top, z);
    }
    T total = 0;
    for (int j = 0; j < cols; j++) {
        T e = exp(row[j] - top);
        row[j] = e;
        total += e;
    }
    for (int j = 0; j < cols; j++) row[j] = row[j] / total;
}

// CSR x dense: y[i, :] = sum_p data[p] * x[indices[p], :] over row i's non-zeros; with GCN also the
// self loop and the symmetric scale: y[i] = scale[r] * (A x + x[r]) with r = row_offset + i.
// Balanced by non-zeros (power-law graphs: one row may hold a good part of them; a work-group per row
// left the device idle behind it): the host's plan (catalog.spmm_plan) gives work-group g < light
// the light rows [lo[g], hi[g]), each of at most `limit` non-zeros, to write to y, and the others a
// run [lo[g], hi[g]) of one heavier row's non-zeros to sum into partial[g - light]; spmm_rows then
// adds each heavy row's partials. Fixed orders and no atomics: bitwise reproducible.
#define SPMM_WG 256  // work-items per work-group, at most
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define T8 CAT(T, 8)

inline T spmm_epilogue(T acc, __global const T* x, const int features, const int j,
                       __global const T* scale, const long r) {
    return scale ? (acc + x[(size_t)r * features + j]) * scale[r] : acc;
}

// GPUs: work-groups of lx features x ly lanes, feature tiles along dim 1 (coalesced reads of x's
// rows). Light rows go a row per lane; a heavy run's non-zeros are interleaved over the lanes,
// whose sums are added in lane order.
__kernel void spmm_chunks(__global const long* indptr, __global const IDX* indices, __global const T* data,
                          __global const T* x, const int features, __global T* y,
                          __global const T* scale, const long row_offset, __global const long* lo,
                          __global const long* hi, const int light, const long limit, __global T* partial) {
    __local T lanes[SPMM_WG];
    const int g = get_group_id(0), jx = get_local_id(0), lane = get_local_id(1);
    const int lx = get_local_size(0), ly = get_local_size(1), j = get_group_id(1) * lx + jx;
    const bool on = j < features;
    if (g < light) {
        for (long i = lo[g] + lane; i < hi[g] && on; i += ly) {
            const long a = indptr[i], b = indptr[i + 1];
            if (b - a > limit) continue;  // a heavy row, in work-groups of its own
            T acc = 0;
            for (long p = a; p < b; p++)
                acc = fma(data[p], x[(size_t)indices[p] * features + j], acc);
            y[(size_t)i * features + j] = spmm_epilogue(acc, x, features, j, scale, row_offset + i);
        }
        return;
    }
    T acc = 0;
    for (long p = lo[g] + lane; p < hi[g] && on; p += ly)
        acc = fma(data[p], x[(size_t)indices[p] * features + j], acc);
    lanes[lane * lx + jx] = acc;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lane == 0 && on) {
        for (int l = 1; l < ly; l++) acc += lanes[l * lx + jx];
        partial[(size_t)(g - light) * features + j] = acc;
    }
}

// CPUs (PoCL): a work-item per work-group of the plan, with all the features, 8 at a time in vector
// registers (rows of x are contiguous); twice as fast there as spmm_chunks.
inline void spmm_sum_cpu(__global const IDX* indices, __global const T* data, __global const T* x,
                         const int features, const long a, const long b, __global T* out) {
    int j = 0;
    for (; j + 8 <= features; j += 8) {
        T8 acc = 0;
        // a multiply and an add: PoCL makes a vector fma a library call (see gemm.cl's MAD)
        for (long p = a; p < b; p++) acc += (T8)data[p] * vload8(0, x + (size_t)indices[p] * features + j);
        vstore8(acc, 0, out + j);
    }
    for (; j < features; j++) {
        T acc = 0;
        for (long p = a; p < b; p++) acc = fma(data[p], x[(size_t)indices[p] * features + j], acc);
        out[j] = acc;
    }
}

__kernel void spmm_chunks_cpu(__global const long* indptr, __global const IDX* indices, __global const T* data,
                              __global const T* x, const int features, __global T* y,
                              __global const T* scale, const long row_offset, __global const long* lo,
                              __global const long* hi, const int light, const long limit, __global T* partial) {
    const int g = get_global_id(0);
    if (g >= light) {
        spmm_sum_cpu(indices, data, x, features, lo[g], hi[g], partial + (size_t)(g - light) * features);
        return;
    }
    for (long i = lo[g]; i < hi[g]; i++) {
        if (indptr[i + 1] - indptr[i] > limit) continue;
        __global T* out = y + (size_t)i * features;
        spmm_sum_cpu(indices, data, x, features, indptr[i], indptr[i + 1], out);
        for (int j = 0; j < features && scale; j++) out[j] = spmm_epilogue(out[j], x, features, j, scale, row_offset + i);
    }
}

// Heavy row k (y's row rows[k]) = the sum of partials [first[k], first[k + 1]): interleaved over the
// lanes, whose sums are added in lane order; then the GCN epilogue.
__kernel void spmm_rows(__global const T* partial, __global const long* first, __global const long* rows,
                        __global const T* x, const int features, __global T* y,
                        __global const T* scale, const long row_offset) {
    __local T lanes[SPMM_WG];
    const int k = get_group_id(0), jx = get_local_id(0), lane = get_local_id(1);
    const int lx = get_local_size(0), ly = get_local_size(1), j = get_group_id(1) * lx + jx;
    const bool on = j < features;
    T acc = 0;
    for (long c = first[k] + lane; c < first[k + 1] && on; c += ly) acc += partial[(size_t)c * features + j];
    lanes[lane * lx + jx] = acc;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (lane == 0 && on) {
        for (int l = 1; l < ly; l++) acc += lanes[l * lx + jx];
        const long i = rows[k];
        y[(size_t)i * features + j] = spmm_epilogue(acc, x, features, j, scale, row_offset + i);
    }
}

#ifdef HAS_FP64
// One k-means step in three kernels after the GEMM dots = x cᵀ (gemm.cl, in T: the reference's
// precision): the nearest centroid of each row, then per-cluster sums, counts and inertia as fixed
// partials, then those partials folded in a fixed order. The partials' row ranges and the folds'
// fan-in follow from the shape alone (catalog.KmeansPlan), so the bits depend on no launch size.

// Row r's nearest centroid by the reference's score |c|^2 - 2 x.c (|x|^2 is the same for every
// centroid; 2 x.c is exact, so this is NumPy's d *= -2; d += |c|^2), the first minimum winning as
// np.argmin; its squared distance computed directly, as the reference does (no cancellation).
// Rows with NaN or infinity get label -1.
__kernel void kmeans_assign(__global const T* x, const int n, const int d, __global const T* dots, const int ld,
                            __global const T* centroids, __global const T* cnorm, const int k,
                            __global int* labels, __global T* dist) {
    const int r = get_global_id(0);
    if (r >= n) return;
    __global const T* s = dots + (size_t)r * ld;
    int best = 0;
    T best_s = INFINITY;
    for (int c = 0; c < k; c++) {
        const T score = cnorm[c] - (T)2 * s[c];
        if (score < best_s) { best_s = score; best = c; }
    }
    __global const T* row = x + (size_t)r * d;
    __global const T* cen = centroids + (size_t)best * d;
    T acc = 0;
    bool finite = true;
    for (int f = 0; f < d; f++) {
        const T v = row[f], e = v - cen[f];
        finite = finite && isfinite(v);
        acc += e * e;
    }
    labels[r] = finite ? best : -1;
    dist[r] = acc;
}

// Partial p of rows [p * per, ...): part[p] = [sums (k x d), counts (k), inertia] in float64.
// Work-item (f, p) adds feature f of its rows in row order; the f = 0 one also counts them, adds
// their distances and notes the first bad row (bad[p], -1 for none).
__kernel void kmeans_partials(__global const T* x, const int n, const int d, const int per,
                              __global const int* labels, __global const T* dist, const int k,
                              __global double* part, __global long* bad) {
    const int f = get_global_id(0), p = get_global_id(1);
    const long lo = (long)p * per;
    if (f >= d || lo >= n) return;
    const long hi = min((long)n, lo + per);
    const size_t width = (size_t)k * d + k + 1;
    __global double* out = part + (size_t)p * width;
    __global double* counts = out + (size_t)k * d;
    for (int c = 0; c < k; c++) out[(size_t)c * d + f] = 0;
    if (f == 0)
        for (int c = 0; c < k; c++) counts[c] = 0;
    double inertia = 0;
    long first_bad = -1;
    for (long r = lo; r < hi; r++) {
        const int c = labels[r];
        if (c < 0) {
            if (first_bad < 0) first_bad = r;
            continue;
        }
        out[(size_t)c * d + f] += (double)x[(size_t)r * d + f];
        if (f == 0) {
            counts[c] += 1;  // exact in float64 below 2^53 rows
            inertia += (double)dist[r];
        }
    }
    if (f == 0) {
        out[width - 1] = inertia;
        bad[p] = first_bad;
    }
}

// out[g] = in[g * fan] + in[g * fan + 1] + ... (up to `count` partials of `width` values), in order.
__kernel void fold_partials(__global const double* in, const int count, const int width, const int fan,
                            __global double* out) {
    const int e = get_global_id(0), g = get_global_id(1);
    if (e >= width) return;
    double acc = 0;
    for (int q = g * fan; q < min(count, (g + 1) * fan); q++) acc += in[(size_t)q * width + e];
    out[(size_t)g * width + e] = acc;
}

// int8 matmul: per-row activation quantization (scale = max|x| / 127, q = clip(rint(x / scale))),
// then exact int32 dot products with the int8 weights and dequantization in float64.
// A work-group per row, its work-items striding along it: adjacent work-items read adjacent floats
// and write adjacent bytes (a work-item per row read rows a stride apart). Rows of xq are ldq bytes,
// zero past cols (the packed dot products take K in fours).
#define QUANTIZE_WG 256  // work-items per row, at most
__kernel void quantize_rows(__global const float* x, const int rows, const int cols, const int ldq,
                            __global char* xq, __global float* xscale) {
    __local float tops[QUANTIZE_WG];
    const int i = get_group_id(1), lid = get_local_id(0), lw = get_local_size(0);
    __global const float* row = x + (size_t)i * cols;
    float top = 0;
    for (int j = lid; j < cols; j += lw) top = fmax(top, fabs(row[j]));
    tops[lid] = top;
    for (int s = lw / 2; s > 0; s >>= 1) {  // lw is a power of two; max is exact in any order
        barrier(CLK_LOCAL_MEM_FENCE);
        if (lid < s) tops[lid] = fmax(tops[lid], tops[lid + s]);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    float sc = tops[0] / 127.0f;
    if (sc == 0) sc = 1;
    if (lid == 0) xscale[i] = sc;
    for (int j = lid; j < ldq; j += lw)
        xq[(size_t)i * ldq + j] = j < cols ? (char)clamp(rint(row[j] / sc), -127.0f, 127.0f) : 0;
}

// The int8 weights (K x N) for the packed dot products: Bp[q, j] holds B[4q .. 4q + 3, j] in its four
// bytes (byte b = row 4q + b, zero past K), as A's rows are packed by being read as ints. Adjacent
// work-items read adjacent bytes of a row.
__kernel void pack_k4(__global const char* B, const int K, const int N, __global int* Bp) {
    const int j = get_global_id(0), q = get_global_id(1);
    if (j >= N || 4 * q >= K) return;
    uint v = 0;
    for (int b = 0; b < 4 && 4 * q + b < K; b++) v |= (uint)(uchar)B[(size_t)(4 * q + b) * N + j] << (8 * b);
    Bp[(size_t)q * N + j] = as_int(v);
}

// y[i, j] = (sum over the K slices z of acc[z, i, j]) * xscale[i] * wscale[j]: qmatmul's int32
// products (gemm.cl with char inputs) dequantized in float64, then rounded once to float32.
__kernel void dequantize(__global const int* acc, const int slices, const int M, const int N, const int ldc,
                         __global const float* xscale, __global const float* wscale, __global float* y) {
    const int j = get_global_id(0), i = get_global_id(1);
    if (i >= M || j >= N) return;
    long s = 0;  // each slice fits int32; their sum is the whole product, kept exact in 64 bits
    for (int z = 0; z < slices; z++) s += acc[((size_t)z * M + i) * ldc + j];
    y[(size_t)i * N + j] = (float)((double)s * (double)xscale[i] * (double)wscale[j]);
}
#endif

// -- topk ------------------------------------------------------------------------------------------
// The k best rows of each column (largest or smallest first, NaN last, ties: the lower row first), as
// sorted lists of row numbers; the host gathers the values. One build (-DTOPK) serves every dtype: each
// element becomes a 64-bit rank, smaller = better, equal ranks = equal values (-0 == 0; NaN all
// ULONG_MAX), so a selection needs no floating point at all (float64 without cl_khr_fp64 too).
// Lists are kept by insertion: a new row ranks after every equal value already held (rows come in
// increasing order), and most rows are rejected by one compare with the list's last (worst) entry.
#ifdef TOPK
#define TOPK_I8 0
#define TOPK_U8 1
#define TOPK_I16 2
#define TOPK_U16 3
#define TOPK_I32 4
#define TOPK_U32 5
#define TOPK_I64 6
#define TOPK_U64 7
#define TOPK_F16 8
#define TOPK_F32 9
#define TOPK_F64 10
#define TOPK_SIGN 0x8000000000000000UL

// IEEE bits -> key ascending with the value: negatives flipped whole, positives get the sign bit;
// zeros and NaN (exponent all ones, mantissa not zero) are handled by the caller.
#define TOPK_FKEY(b, sign) ((b) & (sign) ? ~(b) : (b) | (sign))

inline ulong topk_rank(__global const uchar* x, const size_t i, const int type, const int largest) {
    ulong key;
    switch (type) {
    case TOPK_I8: key = (ulong)(long)((__global const char*)x)[i] ^ TOPK_SIGN; break;
    case TOPK_U8: key = ((__global const uchar*)x)[i]; break;
    case TOPK_I16: key = (ulong)(long)((__global const short*)x)[i] ^ TOPK_SIGN; break;
    case TOPK_U16: key = ((__global const ushort*)x)[i]; break;
    case TOPK_I32: key = (ulong)(long)((__global const int*)x)[i] ^ TOPK_SIGN; break;
    case TOPK_U32: key = ((__global const uint*)x)[i]; break;
    case TOPK_I64: key = (ulong)((__global const long*)x)[i] ^ TOPK_SIGN; break;
    case TOPK_U64: key = ((__global const ulong*)x)[i]; break;
    case TOPK_F16: {
        const ushort b = ((__global const ushort*)x)[i], m = b & 0x7fff;
        if (m > 0x7c00) return ULONG_MAX;
        key = m ? (ushort)TOPK_FKEY(b, (ushort)0x8000) : 0x8000;
        break;
    }
    case TOPK_F32: {
        const uint b = ((__global const uint*)x)[i], m = b & 0x7fffffffU;
        if (m > 0x7f800000U) return ULONG_MAX;
        key = m ? TOPK_FKEY(b, 0x80000000U) : 0x80000000U;
        break;
    }
    default: {
        const ulong b = ((__global const ulong*)x)[i], m = b & ~TOPK_SIGN;
        if (m > 0x7ff0000000000000UL) return ULONG_MAX;
        key = m ? TOPK_FKEY(b, TOPK_SIGN) : TOPK_SIGN;
    }
    }
    return largest ? ~key : key;  // never ULONG_MAX for a float: that is NaN's alone
}

// entry (ra, ia) before (rb, ib): by rank, then row; empty entries (row -1) last
inline bool topk_precedes(const ulong ra, const int ia, const ulong rb, const int ib) {
    return ia >= 0 && (ib < 0 || ra < rb || (ra == rb && ia < ib));
}

// f(type code, args...) with the code a constant: kernels switch on the type once, so the compiler
// specializes each scan (no switch per element).
#define TOPK_BY_TYPE(type, f, ...) switch (type) { \
    case TOPK_I8: f(TOPK_I8, __VA_ARGS__); break;   case TOPK_U8: f(TOPK_U8, __VA_ARGS__); break; \
    case TOPK_I16: f(TOPK_I16, __VA_ARGS__); break; case TOPK_U16: f(TOPK_U16, __VA_ARGS__); break; \
    case TOPK_I32: f(TOPK_I32, __VA_ARGS__); break; case TOPK_U32: f(TOPK_U32, __VA_ARGS__); break; \
    case TOPK_I64: f(TOPK_I64, __VA_ARGS__); break; case TOPK_U64: f(TOPK_U64, __VA_ARGS__); break; \
    case TOPK_F16: f(TOPK_F16, __VA_ARGS__); break; case TOPK_F32: f(TOPK_F32, __VA_ARGS__); break; \
    default: f(TOPK_F64, __VA_ARGS__); }

// CPU: work-item g takes rows [g * per, ...) with all the columns a row at a time (contiguous reads);
// column j's list is ranks/out[g, :k, j]. Slots past a short chunk's rows get row -1.
inline void topk_scan_cpu(const int type, __global const uchar* x, const int largest, const int lo, const int hi,
                          const int cols, const int k, __global ulong* lr, __global int* li) {
    for (int r = lo; r < hi; r++) {
        const int count = min(r - lo, k);
        for (int j = 0; j < cols; j++) {
            const ulong v = topk_rank(x, (size_t)r * cols + j, type, largest);
            if (count == k && v >= lr[(size_t)(k - 1) * cols + j]) continue;
            int p = min(count, k - 1);
            for (; p > 0 && v < lr[(size_t)(p - 1) * cols + j]; p--) {
                lr[(size_t)p * cols + j] = lr[(size_t)(p - 1) * cols + j];
                li[(size_t)p * cols + j] = li[(size_t)(p - 1) * cols + j];
            }
            lr[(size_t)p * cols + j] = v;
            li[(size_t)p * cols + j] = r;
        }
    }
    for (int p = max(0, min(hi - lo, k)); p < k; p++)
        for (int j = 0; j < cols; j++) li[(size_t)p * cols + j] = -1;
}

__kernel void topk_chunks_cpu(__global const uchar* x, const int type, const int largest, const int n,
                              const int cols, const int per, const int k, __global ulong* ranks,
                              __global int* out) {
    const int g = get_global_id(0), lo = g * per;
    TOPK_BY_TYPE(type, topk_scan_cpu, x, largest, lo, min(n, lo + per), cols, k, ranks + (size_t)g * k * cols,
                 out + (size_t)g * k * cols);
}

// GPU work-groups are lx columns x ly lanes (ly a power of two); each work-item's list lives in local
// memory at lr/li[p * wg + tid] (consecutive work-items, consecutive banks).
#define TOPK_AT(q, p) ((p) * wg + (q))

// Merge the ly lists of each column pairwise in place (log2 ly rounds): lane 0 ends with the best k.
// The merged top k takes A's first a and B's first k - a (a by binary search); written back to front,
// no entry of A is overwritten before it is read.
inline void topk_merge_lanes(__local ulong* lr, __local int* li, const int k) {
    const int lx = get_local_size(0), ly = get_local_size(1), lane = get_local_id(1);
    const int wg = lx * ly, a = lane * lx + get_local_id(0);
    for (int s = 1; s < ly; s <<= 1) {
        barrier(CLK_LOCAL_MEM_FENCE);
        if (lane % (2 * s)) continue;
        const int b = a + s * lx;
        int lo = 0, hi = k;
        while (lo < hi) {
            const int mid = (lo + hi) / 2, other = k - 1 - mid;
            if (topk_precedes(lr[TOPK_AT(a, mid)], li[TOPK_AT(a, mid)], lr[TOPK_AT(b, other)], li[TOPK_AT(b, other)]))
                lo = mid + 1;
            else
                hi = mid;
        }
        int ia = lo, ib = k - lo;
        for (int p = k - 1; ib > 0; p--) {
            if (ia > 0 && topk_precedes(lr[TOPK_AT(b, ib - 1)], li[TOPK_AT(b, ib - 1)], lr[TOPK_AT(a, ia - 1)],
                                        li[TOPK_AT(a, ia - 1)])) {
                ia--;
                lr[TOPK_AT(a, p)] = lr[TOPK_AT(a, ia)];
                li[TOPK_AT(a, p)] = li[TOPK_AT(a, ia)];
            } else {
                ib--;
                lr[TOPK_AT(a, p)] = lr[TOPK_AT(b, ib)];
                li[TOPK_AT(a, p)] = li[TOPK_AT(b, ib)];
            }
        }
    }
}

inline void topk_write(__local const int* li, const int k, const int cols, __global int* out) {
    const int lx = get_local_size(0), wg = lx * get_local_size(1), tid = get_local_id(0);
    const int j = get_group_id(0) * lx + tid;
    if (get_local_id(1) == 0 && j < cols)
        for (int p = 0; p < k; p++) out[((size_t)get_group_id(1) * k + p) * cols + j] = li[TOPK_AT(tid, p)];
}

// GPU: lane L (global id 1, of `lanes`) scans rows L, L + lanes, ... of column j, so a warp reads
// whole rows; its worst rank stays in a register. Unfilled slots get row -1.
inline void topk_scan_lanes(const int type, __global const uchar* x, const int largest, const int n,
                            const int cols, const int k, __local ulong* lr, __local int* li) {
    const int lx = get_local_size(0), wg = lx * get_local_size(1);
    const int tid = get_local_id(1) * lx + get_local_id(0), j = get_global_id(0), lanes = get_global_size(1);
    int count = 0;
    ulong worst = 0;
    for (int r = get_global_id(1); r < n && j < cols; r += lanes) {
        const ulong v = topk_rank(x, (size_t)r * cols + j, type, largest);
        if (count == k && v >= worst) continue;
        int p = min(count, k - 1);
        for (; p > 0 && v < lr[TOPK_AT(tid, p - 1)]; p--) {
            lr[TOPK_AT(tid, p)] = lr[TOPK_AT(tid, p - 1)];
            li[TOPK_AT(tid, p)] = li[TOPK_AT(tid, p - 1)];
        }
        lr[TOPK_AT(tid, p)] = v;
        li[TOPK_AT(tid, p)] = r;
        count = min(count + 1, k);
        worst = lr[TOPK_AT(tid, k - 1)];
    }
    for (int p = count; p < k; p++) li[TOPK_AT(tid, p)] = -1;
}

// out[group, :k, j]: the best k of the work-group's lanes.
__kernel void topk_lanes(__global const uchar* x, const int type, const int largest, const int n,
                         const int cols, const int k, __local ulong* lr, __local int* li, __global int* out) {
    TOPK_BY_TYPE(type, topk_scan_lanes, x, largest, n, cols, k, lr, li);
    topk_merge_lanes(lr, li, k);
    topk_write(li, k, cols, out);
}

// GPU: merge `lists` lists (in[q, :k, :], rows of x) ly at a time into out[group, :k, :].
__kernel void topk_merge(__global const uchar* x, const int type, const int largest, const int cols, const int k,
                         const int lists, __global const int* in, __local ulong* lr, __local int* li,
                         __global int* out) {
    const int lx = get_local_size(0), wg = lx * get_local_size(1);
    const int tid = get_local_id(1) * lx + get_local_id(0), j = get_global_id(0), q = get_global_id(1);
    for (int p = 0; p < k; p++) {
        const int r = j < cols && q < lists ? in[((size_t)q * k + p) * cols + j] : -1;
        li[TOPK_AT(tid, p)] = r;
        if (r >= 0) lr[TOPK_AT(tid, p)] = topk_rank(x, (size_t)r * cols + j, type, largest);
    }
    topk_merge_lanes(lr, li, k);
    topk_write(li, k, cols, out);
}
#endif
