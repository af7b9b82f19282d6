// Histogram of each column of a row-major (rows, cols) input, bins as np.histogram defines them.
// Options: -DT= input scalar  -DE= edge type (np.histogram's: float for float32 data with uniform
// bins, double otherwise)  -DCHUNKED (CPUs: contiguous chunk per work-item; else grid-stride)
//   -DHAS_FP64
// A value counts in bin i when edges[i] <= x < edges[i+1] (the last bin also takes its right edge);
// NaN and values outside [edges[0], edges[nb]] are dropped. Uniform bins guess i arithmetically
// (norm > 0) and then correct against the edges, so the result depends only on the edges array.
// Each work-group adds into copy (group % copies) of the counts, so atomics rarely contend.
#ifdef HAS_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif

inline uint find_bin(__global const E *restrict edges, const uint nb, const E x, const E norm)
{
    uint lo, hi;
    if (norm > 0) {
        const E guess = (x - edges[0]) * norm;
        uint i = guess < (E)nb ? (uint)guess : nb - 1;
        while (i > 0 && x < edges[i]) i--;
        while (i < nb - 1 && x >= edges[i + 1]) i++;
        return i;
    }
    lo = 0; hi = nb;   // edges[lo] <= x < edges[hi] (x <= edges[nb] for the last bin)
    while (hi - lo > 1) {
        const uint mid = (lo + hi) / 2;
        if (x < edges[mid]) hi = mid; else lo = mid;
    }
    return lo;
}

__kernel void histogram(__global const T *restrict x, const ulong n, const ulong per, const ulong cols,
                        __global const E *restrict edges, const uint nb, const E norm,
                        __global uint *restrict counts, const uint copies)
{
    const ulong g = get_global_id(0);
#ifdef CHUNKED
    const ulong begin = g * per, end = min(begin + per, n), step = 1;
#else
    const ulong begin = g, end = n, step = get_global_size(0);
#endif
    __global uint *restrict hist = counts + (ulong)(get_group_id(0) % copies) * cols * nb;
    const E lo = edges[0], hi = edges[nb];
    for (ulong k = begin; k < end; k += step) {
        const E v = (E)x[k];
        if (v >= lo && v <= hi)   // false for NaN
            atomic_inc(hist + (cols == 1 ? 0 : k % cols) * nb + find_bin(edges, nb, v, norm));
    }
}
