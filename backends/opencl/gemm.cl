// Register-blocked tiled GEMM: C[z] = op(A)[:, kz] @ B[kz, :] for one K slice z (split-K), with
// optional per-column shifts (centred Gram: (X - s)^T (X - s)).
//
// Build options (see backends/opencl/catalog.py):
//   T        accumulator and output type (float or double)
//   IN       element type of A and B (defaults to T; float inputs with a double T for PCA)
//   TM, TN   rows / columns of C per work-group tile; TK: depth of one local tile
//   WM, WN   rows / columns of C per work-item (registers); local size (TN/WN, TM/WM)
//   VW       4: float4/double4 reads of the per-item fragment from local memory (needs WM, WN % 4 == 0)
//   TRANS_A  A is stored K x M (XᵀX without a transpose copy)
//   SHIFT    subtract shift[i] from A(i, k) and shift[j] from B(k, j)
//   EVEN     every tile is whole and rows are 4-aligned: no bounds checks, 4-wide global loads
//   NOLOCAL  no local tiles: each work-item reads its fragment straight from global memory (the
//            CPU variant: caches do the tiling, PoCL vectorises across work-items)
//
// A work-item owns rows  g*(LY*VW) + ty*VW + v  (g < WM/VW, v < VW) of the tile, and the same
// pattern of columns: with VW = 4 each fragment is a few aligned 4-wide local reads, and the 16
// work-items of a row of the work-group read consecutive 16-byte words (no bank conflicts).
#ifdef HAS_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif
#ifndef IN
#define IN T
#endif
#define LX (TN / WN)
#define LY (TM / WM)
#define NT (LX * LY)
#define GM (WM / VW)
#define GN (WN / VW)

#ifdef SHIFT
#define SA(i) shift[i]
#define SB(j) shift[j]
#else
#define SA(i) 0
#define SB(j) 0
#endif

#ifdef TRANS_A
#define A_AT(i, k) A[(size_t)(k) * lda + (i)]
#else
#define A_AT(i, k) A[(size_t)(i) * lda + (k)]
#endif
#define B_AT(k, j) B[(size_t)(k) * ldb + (j)]

#ifndef CPU_VEC
#ifndef NOLOCAL
// Global -> local copy of the A tile (stored k-major: As[k][i]) and the B tile (Bs[k][j]).
inline void load_tiles(__global const IN* restrict A, __global const IN* restrict B, __global const T* restrict shift,
                       __local T* As, __local T* Bs, int row0, int col0, int k0, int kend, int M, int N,
                       int lda, int ldb, int tid) {
#if defined(EVEN) && !defined(SHIFT)
#ifdef TRANS_A
    for (int l = tid; l < TM * TK / 4; l += NT) {
        int k = l / (TM / 4), i = (l % (TM / 4)) * 4;
        vstore4(convert_T4(vload4(0, &A_AT(row0 + i, k0 + k))), 0, &As[k * TM + i]);
    }
#else
    for (int l = tid; l < TM * TK / 4; l += NT) {
        int i = l / (TK / 4), k = (l % (TK / 4)) * 4;
        T4 v = convert_T4(vload4(0, &A_AT(row0 + i, k0 + k)));
        As[(k + 0) * TM + i] = v.s0; As[(k + 1) * TM + i] = v.s1;
        As[(k + 2) * TM + i] = v.s2; As[(k + 3) * TM + i] = v.s3;
    }
#endif
    for (int l = tid; l < TN * TK / 4; l += NT) {
        int k = l / (TN / 4), j = (l % (TN / 4)) * 4;
        vstore4(convert_T4(vload4(0, &B_AT(k0 + k, col0 + j))), 0, &Bs[k * TN + j]);
    }
#else
    for (int l = tid; l < TM * TK; l += NT) {
#ifdef TRANS_A
        int k = l / TM, i = l % TM;   // consecutive work-items: consecutive addresses
#else
        int i = l / TK, k = l % TK;
#endif
        int gi = row0 + i, gk = k0 + k;
        As[k * TM + i] = (gi < M && gk < kend) ? (T)A_AT(gi, gk) - SA(gi) : (T)0;
    }
    for (int l = tid; l < TN * TK; l += NT) {
        int k = l / TN, j = l % TN;
        int gj = col0 + j, gk = k0 + k;
        Bs[k * TN + j] = (gj < N && gk < kend) ? (T)B_AT(gk, gj) - SB(gj) : (T)0;
    }
#endif
}
#endif

__kernel __attribute__((reqd_work_group_size(LX, LY, 1)))
void gemm(const int M, const int N, const int K, const int kper,
          __global const IN* restrict A, const int lda,
          __global const IN* restrict B, const int ldb,
          __global T* restrict C, const int ldc,
          __global const T* restrict shift) {
    const int tx = get_local_id(0), ty = get_local_id(1);
    const int col0 = get_group_id(0) * TN, row0 = get_group_id(1) * TM;
    const int z = get_group_id(2);
    const int k0 = z * kper;
    const int kend = min(K, k0 + kper);
    C += (size_t)z * M * ldc;

    T acc[WM][WN];
    for (int r = 0; r < WM; r++)
        for (int c = 0; c < WN; c++)
            acc[r][c] = 0;

#ifdef NOLOCAL
    // Row / column of each register: the same interleaving as the local variant.
    int rows[WM], cols[WN];
    for (int g = 0; g < GM; g++)
        for (int v = 0; v < VW; v++)
            rows[g * VW + v] = min(row0 + g * (LY * VW) + ty * VW + v, M - 1);
    for (int g = 0; g < GN; g++)
        for (int v = 0; v < VW; v++)
            cols[g * VW + v] = min(col0 + g * (LX * VW) + tx * VW + v, N - 1);
    for (int k = k0; k < kend; k++) {
        T a[WM], b[WN];
        for (int r = 0; r < WM; r++) a[r] = (T)A_AT(rows[r], k) - SA(rows[r]);
        for (int c = 0; c < WN; c++) b[c] = (T)B_AT(k, cols[c]) - SB(cols[c]);
        for (int r = 0; r < WM; r++)
            for (int c = 0; c < WN; c++)
                acc[r][c] = fma(a[r], b[c], acc[r][c]);
    }
#else
    __local T As[2][TK * TM];
    __local T Bs[2][TK * TN];
    const int tid = ty * LX + tx;
    const int tiles = (kend - k0 + TK - 1) / TK;
    if (tiles > 0)
        load_tiles(A, B, shift, As[0], Bs[0], row0, col0, k0, kend, M, N, lda, ldb, tid);
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int t = 0; t < tiles; t++) {
        // Double buffering: fill the other buffer (last read before the previous barrier) while
        // this one is consumed; one barrier per tile.
        if (t + 1 < tiles)
            load_tiles(A, B, shift, As[(t + 1) & 1], Bs[(t + 1) & 1], row0, col0, k0 + (t + 1) * TK, kend,
                       M, N, lda, ldb, tid);
        __local const T* as = As[t & 1];
        __local const T* bs = Bs[t & 1];
        for (int k = 0; k < TK; k++) {
            T a[WM], b[WN];
#if VW == 4
            for (int g = 0; g < GM; g++) {
                T4 v = vload4(0, &as[k * TM + g * (LY * 4) + ty * 4]);
                a[g * 4 + 0] = v.s0; a[g * 4 + 1] = v.s1; a[g * 4 + 2] = v.s2; a[g * 4 + 3] = v.s3;
            }
            for (int g = 0; g < GN; g++) {
                T4 v = vload4(0, &bs[k * TN + g * (LX * 4) + tx * 4]);
                b[g * 4 + 0] = v.s0; b[g * 4 + 1] = v.s1; b[g * 4 + 2] = v.s2; b[g * 4 + 3] = v.s3;
            }
#else
            for (int r = 0; r < WM; r++) a[r] = as[k * TM + r * LY + ty];
            for (int c = 0; c < WN; c++) b[c] = bs[k * TN + c * LX + tx];
#endif
            for (int r = 0; r < WM; r++)
                for (int c = 0; c < WN; c++)
                    acc[r][c] = fma(a[r], b[c], acc[r][c]);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
#endif

    for (int r = 0; r < WM; r++) {
#if VW == 4 || defined(NOLOCAL)
        const int i = row0 + (r / VW) * (LY * VW) + ty * VW + r % VW;
#else
        const int i = row0 + r * LY + ty;
#endif
        if (i >= M) continue;
        for (int c = 0; c < WN; c++) {
#if VW == 4 || defined(NOLOCAL)
            const int j = col0 + (c / VW) * (LX * VW) + tx * VW + c % VW;
#else
            const int j = col0 + c * LX + tx;
#endif
            if (j < N) C[(size_t)i * ldc + j] = acc[r][c];
        }
    }
}
#endif

// The CPU variant (CPU_VEC = vector width VN): a work-item owns 4 rows x VN columns of C as four
// VN-wide vector accumulators and streams B's rows with VN-wide loads: explicit SIMD, which PoCL
// keeps in registers (the tiled kernel's private arrays it does not). The host pads B's and C's
// rows to a multiple of VN (ldb, ldc); rows past M are clamped on load and skipped on store.
#ifdef CPU_VEC
#define TV_(t, n) t##n
#define TV(t, n) TV_(t, n)
#define VT TV(T, CPU_VEC)
#define VIN TV(IN, CPU_VEC)
#define VLOAD_(n) vload##n
#define VLOAD(n) VLOAD_(n)
#define VCONV_(t) convert_##t
#define VCONV(t) VCONV_(t)
__kernel void gemm_cpu(const int M, const int N, const int K, const int kper,
                       __global const IN* restrict A, const int lda,
                       __global const IN* restrict B, const int ldb,
                       __global T* restrict C, const int ldc,
                       __global const T* restrict shift) {
    const int j = get_global_id(0) * CPU_VEC;
    const int i = get_global_id(1) * 4;
    const int z = get_global_id(2);
    const int k0 = z * kper, kend = min(K, k0 + kper);
    C += (size_t)z * M * ldc;
    const int i0 = min(i, M - 1), i1 = min(i + 1, M - 1), i2 = min(i + 2, M - 1), i3 = min(i + 3, M - 1);
    VT c0 = 0, c1 = 0, c2 = 0, c3 = 0;
#ifdef SHIFT
    const VT sb = VLOAD(CPU_VEC)(0, shift + j);
    const T s0 = shift[i0], s1 = shift[i1], s2 = shift[i2], s3 = shift[i3];
#endif
    for (int k = k0; k < kend; k++) {
        VT b = VCONV(VT)(VLOAD(CPU_VEC)(0, B + (size_t)k * ldb + j));
        T a0 = A_AT(i0, k), a1 = A_AT(i1, k), a2 = A_AT(i2, k), a3 = A_AT(i3, k);
#ifdef SHIFT
        b -= sb; a0 -= s0; a1 -= s1; a2 -= s2; a3 -= s3;
#endif
        c0 = fma((VT)a0, b, c0);
        c1 = fma((VT)a1, b, c1);
        c2 = fma((VT)a2, b, c2);
        c3 = fma((VT)a3, b, c3);
    }
    if (i < M) TV(vstore, CPU_VEC)(c0, 0, C + (size_t)i * ldc + j);
    if (i + 1 < M) TV(vstore, CPU_VEC)(c1, 0, C + (size_t)(i + 1) * ldc + j);
    if (i + 2 < M) TV(vstore, CPU_VEC)(c2, 0, C + (size_t)(i + 2) * ldc + j);
    if (i + 3 < M) TV(vstore, CPU_VEC)(c3, 0, C + (size_t)(i + 3) * ldc + j);
}
#endif
