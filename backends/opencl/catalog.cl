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

// CSR x dense: y[i, :] = sum_p data[p] * x[indices[p], :] over row i's non-zeros. A work-group
// per row, its work-items across the features (coalesced reads of x's rows). With GCN, also the
// self loop and the symmetric scale: y[i] = scale[r] * (A x + x[r]) with r = row_offset + i.
__kernel void spmm_csr(__global const long* indptr, __global const IDX* indices, __global const T* data,
                       __global const T* x, const int features, __global T* y,
                       __global const T* scale, const long row_offset) {
    const int j = get_global_id(0), i = get_global_id(1);
    if (j >= features) return;
    T acc = 0;
    for (long p = indptr[i]; p < indptr[i + 1]; p++)
        acc = fma(data[p], x[(size_t)indices[p] * features + j], acc);
    if (scale) {
        const long r = row_offset + i;
        acc = (acc + x[(size_t)r * features + j]) * scale[r];
    }
    y[(size_t)i * features + j] = acc;
}

#ifdef HAS_FP64
// One k-means step over rows [item * per, ...): nearest centroid in float64 by the reference's
// expansion |x|^2 - 2 x.c + |c|^2 (first minimum wins, as np.argmin), then per-item float64
// sums, counts and inertia; the host adds the items' partials. NaN/inf rows are counted in bad.
__kernel void kmeans_step(__global const T* x, const long n, const int d, const long per,
                          __global const double* centroids, __global const double* cnorm, const int k,
                          __global double* sums, __global long* counts, __global double* inertia,
                          __global long* bad) {
    const int item = get_global_id(0);
    const long lo = item * per, hi = min(n, lo + per);
    __global double* s = sums + (size_t)item * k * d;
    __global long* cnt = counts + (size_t)item * k;
    for (int c = 0; c < k * d; c++) s[c] = 0;
    for (int c = 0; c < k; c++) cnt[c] = 0;
    double total = 0;
    long first_bad = -1;
    for (long r = lo; r < hi; r++) {
        __global const T* row = x + r * d;
        double xx = 0;
        bool finite = true;
        for (int f = 0; f < d; f++) { double v = row[f]; xx += v * v; finite = finite && isfinite(v); }
        if (!finite) { if (first_bad < 0) first_bad = r; continue; }
        int best = 0;
        double best_d = INFINITY;
        for (int c = 0; c < k; c++) {
            __global const double* cen = centroids + (size_t)c * d;
            double dot = 0;
            for (int f = 0; f < d; f++) dot += (double)row[f] * cen[f];
            double dist = xx - 2 * dot + cnorm[c];
            if (dist < best_d) { best_d = dist; best = c; }
        }
        cnt[best] += 1;
        for (int f = 0; f < d; f++) s[best * d + f] += (double)row[f];
        total += fmax(best_d, 0.0);
    }
    inertia[item] = total;
    bad[item] = first_bad;
}

// int8 matmul: per-row activation quantization (scale = max|x| / 127, q = clip(rint(x / scale))),
// then exact int32 dot products with the int8 weights and dequantization in float64.
__kernel void quantize_rows(__global const float* x, const int rows, const int cols,
                            __global char* xq, __global float* xscale) {
    const int i = get_global_id(0);
    if (i >= rows) return;
    __global const float* row = x + (size_t)i * cols;
    float top = 0;
    for (int j = 0; j < cols; j++) top = fmax(top, fabs(row[j]));
    float sc = top / 127.0f;
    if (sc == 0) sc = 1;
    xscale[i] = sc;
    for (int j = 0; j < cols; j++) xq[(size_t)i * cols + j] = (char)clamp(rint(row[j] / sc), -127.0f, 127.0f);
}

// y[i, j] = (sum_k xq[i, k] * wq[k, j]) * xscale[i] * wscale[j]; TI x TJ outputs per work-group
// tile with the k loop staged through local memory (TILE x TILE int8 tiles).
#define QT 16
__kernel __attribute__((reqd_work_group_size(QT, QT, 1)))
void qgemm(__global const char* xq, __global const char* wq, const int M, const int N, const int K,
           __global const float* xscale, __global const float* wscale, __global float* y) {
    const int tx = get_local_id(0), ty = get_local_id(1);
    const int j = get_group_id(0) * QT + tx, i = get_group_id(1) * QT + ty;
    __local int xs[QT][QT + 1];
    __local int ws[QT][QT + 1];
    int acc = 0;
    for (int k0 = 0; k0 < K; k0 += QT) {
        xs[ty][tx] = (i < M && k0 + tx < K) ? xq[(size_t)i * K + k0 + tx] : 0;
        ws[ty][tx] = (j < N && k0 + ty < K) ? wq[(size_t)(k0 + ty) * N + j] : 0;
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int k = 0; k < QT; k++) acc += xs[ty][k] * ws[k][tx];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (i < M && j < N) y[(size_t)i * N + j] = (float)((double)acc * (double)xscale[i] * (double)wscale[j]);
}
#endif
