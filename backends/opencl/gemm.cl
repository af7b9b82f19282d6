// Register-blocked tiled GEMM: C[z] = op(A)[:, kz] @ B[kz, :] for one K slice z (split-K), with
// optional per-column shifts (centred Gram: (X - s)^T (X - s)).
//
// Build options (see backends/opencl/catalog.py):
//   T        accumulator and output type (float, double, or int with INT_ACC)
//   IN       element type of A and B (defaults to T; float inputs with a double T for PCA, char for
//            qmatmul's int8 products)
//   TM, TN   rows / columns of C per work-group tile; TK: depth of one local tile
//   WM, WN   rows / columns of C per work-item (registers, multiples of 4); local size (TN/WN, TM/WM)
//   TRANS_A  A is stored K x M (XᵀX without a transpose copy)
//   SHIFT    subtract shift[i] from A(i, k) and shift[j] from B(k, j)
//   EVEN     every tile is whole, rows are 4-aligned and A and B are aligned to 4 elements: no bounds
//            checks, 4-wide vector loads from global memory
//   PAD      extra elements per row of the local A tile (0 by default; a bank-conflict lever)
//   INT_ACC  T is an integer type: multiply-adds instead of fma
//   DOT      (with T = IN = int) int8 dot products: every int of A and B holds four int8 values along
//            K (packed: byte b is element 4k + b), and a multiply-add is a 4-way dot product and add:
//            khr (cl_khr_integer_dot_product), ptx (NVIDIA's dp4a, inline PTX) or char4 (portable C)
//   CPU_VEC  the CPU kernel gemm_cpu instead (see below)
//
// A work-item owns rows  g*(LY*4) + ty*4 + v  (g < WM/4, v < 4) of the tile, and the same pattern
// of columns: each fragment is a few aligned 4-wide local reads, and the 16 work-items of a row of
// the work-group read consecutive 16-byte words (no bank conflicts).
#ifdef HAS_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif
#ifndef IN
#define IN T
#endif
// fma on GPUs; a multiply then an add for integers (exact anyway) and in the CPU kernel, where PoCL
// (LLVM 14) makes a vector fma or mad a library call: 2-3x slower than the two instructions.
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define DOT_khr 1
#define DOT_ptx 2
#define DOT_char4 3
#ifdef DOT
#define DOT_CODE CAT(DOT_, DOT)
#if DOT_CODE == DOT_khr
#pragma OPENCL EXTENSION cl_khr_integer_dot_product : enable
// Not dot_acc_sat: products of int8 pairs summed over K < 133,000 never leave int32, so saturation
// would never act; the plain dot and add is what the int32 path computes, and lowers to dp4a.
#define MAD(a, b, c) (dot_4x8packed_ss_int(as_uint(a), as_uint(b)) + (c))
#elif DOT_CODE == DOT_ptx
inline int dp4a(const int a, const int b, const int c) {
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
#define MAD(a, b, c) dp4a(a, b, c)
#elif DOT_CODE == DOT_char4
inline int dot_char4(const int a, const int b, const int c) {
    const int4 p = convert_int4(as_char4(a)) * convert_int4(as_char4(b));
    return c + p.x + p.y + p.z + p.w;
}
#define MAD(a, b, c) dot_char4(a, b, c)
#else
#error "DOT must be khr, ptx or char4"
#endif
#elif defined(INT_ACC) || defined(CPU_VEC)
#define MAD(a, b, c) ((a) * (b) + (c))
#else
#define MAD(a, b, c) fma(a, b, c)
#endif
#define LX (TN / WN)
#define LY (TM / WM)
#define NT (LX * LY)
#define GM (WM / 4)
#define GN (WN / 4)

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
// Register prefetch of the next tile: each work-item reads NA (NB) 4-wide pieces of the A (B) tile
// from global memory into registers before computing on the current local tile, and writes them to
// the other local buffer after it, so global latency overlaps compute (one barrier per tile).
#define NA (TM * TK / 4 / NT)
#define NB (TN * TK / 4 / NT)
#ifndef PAD
#define PAD 0
#endif
#define LDA_S (TM + PAD)  // row length of As (k-major); PAD (a multiple of 4) staggers banks on stores
#define LDB_S TN
// Tiles and 4-wide global reads are typed as vectors: vload4 only promises element alignment, so a
// compiler must split it into scalar loads; a vector type's alignment lets it issue one 16-byte load.
#define VEC4_(t) t##4
#define VEC4(t) VEC4_(t)
#define IN4 VEC4(IN)

// Piece l of the A tile: 4 values along k (A row-major) or along i (TRANS_A); of B: 4 along j.
#ifdef TRANS_A
#define A_PIECE(l, i, k) int k = (l) / (TM / 4), i = ((l) % (TM / 4)) * 4
#else
#define A_PIECE(l, i, k) int i = (l) / (TK / 4), k = ((l) % (TK / 4)) * 4
#endif
#define B_PIECE(l, k, j) int k = (l) / (TN / 4), j = ((l) % (TN / 4)) * 4

inline void fetch(__global const IN* restrict A, __global const IN* restrict B, __global const T* restrict shift,
                  T4* ra, T4* rb, int row0, int col0, int k0, int kend, int M, int N, int lda, int ldb, int tid) {
#pragma unroll
    for (int p = 0; p < NA; p++) {
        A_PIECE(tid + p * NT, i, k);
#if defined(EVEN) && !defined(SHIFT)
        ra[p] = convert_T4(*(__global const IN4*)&A_AT(row0 + i, k0 + k));
#else
        T v[4];
        for (int c = 0; c < 4; c++) {
#ifdef TRANS_A
            int gi = row0 + i + c, gk = k0 + k;
#else
            int gi = row0 + i, gk = k0 + k + c;
#endif
            v[c] = (gi < M && gk < kend) ? (T)A_AT(gi, gk) - SA(gi) : (T)0;
        }
        ra[p] = (T4)(v[0], v[1], v[2], v[3]);
#endif
    }
#pragma unroll
    for (int p = 0; p < NB; p++) {
        B_PIECE(tid + p * NT, k, j);
#if defined(EVEN) && !defined(SHIFT)
        rb[p] = convert_T4(*(__global const IN4*)&B_AT(k0 + k, col0 + j));
#else
        T v[4];
        for (int c = 0; c < 4; c++) {
            int gj = col0 + j + c, gk = k0 + k;
            v[c] = (gj < N && gk < kend) ? (T)B_AT(gk, gj) - SB(gj) : (T)0;
        }
        rb[p] = (T4)(v[0], v[1], v[2], v[3]);
#endif
    }
}

inline void stash(__local T4* As4, __local T4* Bs4, const T4* ra, const T4* rb, int tid) {
#pragma unroll
    for (int p = 0; p < NA; p++) {
        A_PIECE(tid + p * NT, i, k);
#ifdef TRANS_A
        As4[(k * LDA_S + i) / 4] = ra[p];
#else
        __local T* As = (__local T*)As4;
        As[(k + 0) * LDA_S + i] = ra[p].s0; As[(k + 1) * LDA_S + i] = ra[p].s1;
        As[(k + 2) * LDA_S + i] = ra[p].s2; As[(k + 3) * LDA_S + i] = ra[p].s3;
#endif
    }
#pragma unroll
    for (int p = 0; p < NB; p++) {
        B_PIECE(tid + p * NT, k, j);
        Bs4[(k * LDB_S + j) / 4] = rb[p];
    }
}

__kernel __attribute__((reqd_work_group_size(LX, LY, 1)))
void gemm(const int M, const int N, const int K, const int kper,
          __global const IN* restrict A, const int lda,
          __global const IN* restrict B, const int ldb,
          __global T* restrict C, const int ldc,
          __global const T* restrict shift) {
    const int tx = get_local_id(0), ty = get_local_id(1);
    // Global ids, not group ids, for rows and slices: a launch over part of the grid (a row block or
    // K slices that have landed, catalog.gemm) has a global offset in whole work-groups.
    const int col0 = get_group_id(0) * TN, row0 = get_global_id(1) / LY * TM;
    const int z = get_global_id(2);
    const int k0 = z * kper;
    const int kend = min(K, k0 + kper);
    C += (size_t)z * M * ldc;

    T acc[WM][WN];
    for (int r = 0; r < WM; r++)
        for (int c = 0; c < WN; c++)
            acc[r][c] = 0;

    __local T4 As[2][TK * LDA_S / 4];
    __local T4 Bs[2][TK * LDB_S / 4];
    const int tid = ty * LX + tx;
    const int tiles = (kend - k0 + TK - 1) / TK;
    T4 ra[NA], rb[NB];
    if (tiles > 0) {
        fetch(A, B, shift, ra, rb, row0, col0, k0, kend, M, N, lda, ldb, tid);
        stash(As[0], Bs[0], ra, rb, tid);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int t = 0; t < tiles; t++) {
        // The other buffer was last read before the previous barrier: fill it after this compute.
        const bool more = t + 1 < tiles;
        if (more)
            fetch(A, B, shift, ra, rb, row0, col0, k0 + (t + 1) * TK, kend, M, N, lda, ldb, tid);
        __local const T4* as = As[t & 1];
        __local const T4* bs = Bs[t & 1];
#pragma unroll
        for (int k = 0; k < TK; k++) {
            T a[WM], b[WN];
#pragma unroll
            for (int g = 0; g < GM; g++) {
                T4 v = as[k * (LDA_S / 4) + g * LY + ty];
                a[g * 4 + 0] = v.s0; a[g * 4 + 1] = v.s1; a[g * 4 + 2] = v.s2; a[g * 4 + 3] = v.s3;
            }
#pragma unroll
            for (int g = 0; g < GN; g++) {
                T4 v = bs[k * (LDB_S / 4) + g * LX + tx];
                b[g * 4 + 0] = v.s0; b[g * 4 + 1] = v.s1; b[g * 4 + 2] = v.s2; b[g * 4 + 3] = v.s3;
            }
#pragma unroll
            for (int r = 0; r < WM; r++)
#pragma unroll
                for (int c = 0; c < WN; c++)
                    acc[r][c] = MAD(a[r], b[c], acc[r][c]);
        }
        if (more)
            stash(As[(t + 1) & 1], Bs[(t + 1) & 1], ra, rb, tid);
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    for (int r = 0; r < WM; r++) {
        const int i = row0 + (r / 4) * (LY * 4) + ty * 4 + r % 4;
        if (i >= M) continue;
        for (int c = 0; c < WN; c++) {
            const int j = col0 + (c / 4) * (LX * 4) + tx * 4 + c % 4;
            if (j < N) C[(size_t)i * ldc + j] = acc[r][c];
        }
    }
}
#endif

// The CPU variant (CPU_VEC = vector width VN): explicit SIMD, which PoCL keeps in registers (the
// tiled kernel's private arrays it does not), blocked for the caches as a CPU BLAS is. A work-item
// owns a CB_M x CB_N block of C; it walks K in blocks of KB and, per K block, sweeps 4 x 2VN
// micro-tiles (eight VN-wide accumulators) over the block, so the KB x CB_N panel of B it streams
// stays in L1/L2 across the CB_M / 4 row groups. The host pads B's and C's rows to a multiple of 2VN
// (ldb, ldc); rows past M are clamped on load and skipped on store.
#ifdef CPU_VEC
#ifndef CB_M
#define CB_M 32
#endif
#ifndef CB_N
#define CB_N 64
#endif
#ifndef KB
#define KB 128
#endif
#define TV_(t, n) t##n
#define TV(t, n) TV_(t, n)
#define VT TV(T, CPU_VEC)
#define VLOAD_(n) vload##n
#define VLOAD(n) VLOAD_(n)
#define VSTORE_(n) vstore##n
#define VSTORE(n) VSTORE_(n)
#define VCONV_(t) convert_##t
#define VCONV(t) VCONV_(t)
#define LOADB(k, j) VCONV(VT)(VLOAD(CPU_VEC)(0, B + (size_t)(k) * ldb + (j)))
__kernel void gemm_cpu(const int M, const int N, const int K, const int kper,
                       __global const IN* restrict A, const int lda,
                       __global const IN* restrict B, const int ldb,
                       __global T* restrict C, const int ldc,
                       __global const T* restrict shift) {
    const int j0 = get_global_id(0) * CB_N, i0 = get_global_id(1) * CB_M;
    const int z = get_global_id(2);
    const int k0 = z * kper, kend = min(K, k0 + kper);
    const int jend = min(j0 + CB_N, ldb), iend = min(i0 + CB_M, M);
    C += (size_t)z * M * ldc;
    const int kblocks = max(1, (kend - k0 + KB - 1) / KB);  // an empty slice still writes its zeros
    for (int kb = k0; kb < k0 + kblocks * KB; kb += KB) {
        const int ke = min(kend, kb + KB);
        for (int i = i0; i < iend; i += 4) {
            const int r0 = i, r1 = min(i + 1, M - 1), r2 = min(i + 2, M - 1), r3 = min(i + 3, M - 1);
#ifdef SHIFT
            const T s0 = shift[r0], s1 = shift[r1], s2 = shift[r2], s3 = shift[r3];
#endif
            for (int j = j0; j < jend; j += 2 * CPU_VEC) {
                __global T* c0 = C + (size_t)r0 * ldc + j;
                __global T* c1 = C + (size_t)r1 * ldc + j;
                __global T* c2 = C + (size_t)r2 * ldc + j;
                __global T* c3 = C + (size_t)r3 * ldc + j;
                VT a00 = 0, a01 = 0, a10 = 0, a11 = 0, a20 = 0, a21 = 0, a30 = 0, a31 = 0;
                if (kb != k0) {  // resume the sums the previous K blocks left in C
                    a00 = VLOAD(CPU_VEC)(0, c0); a01 = VLOAD(CPU_VEC)(0, c0 + CPU_VEC);
                    a10 = VLOAD(CPU_VEC)(0, c1); a11 = VLOAD(CPU_VEC)(0, c1 + CPU_VEC);
                    a20 = VLOAD(CPU_VEC)(0, c2); a21 = VLOAD(CPU_VEC)(0, c2 + CPU_VEC);
                    a30 = VLOAD(CPU_VEC)(0, c3); a31 = VLOAD(CPU_VEC)(0, c3 + CPU_VEC);
                }
#ifdef SHIFT
                const VT sb0 = VLOAD(CPU_VEC)(0, shift + j), sb1 = VLOAD(CPU_VEC)(0, shift + j + CPU_VEC);
#endif
                for (int k = kb; k < ke; k++) {
                    VT b0 = LOADB(k, j), b1 = LOADB(k, j + CPU_VEC);
                    T x0 = A_AT(r0, k), x1 = A_AT(r1, k), x2 = A_AT(r2, k), x3 = A_AT(r3, k);
#ifdef SHIFT
                    b0 -= sb0; b1 -= sb1; x0 -= s0; x1 -= s1; x2 -= s2; x3 -= s3;
#endif
                    a00 = MAD((VT)x0, b0, a00); a01 = MAD((VT)x0, b1, a01);
                    a10 = MAD((VT)x1, b0, a10); a11 = MAD((VT)x1, b1, a11);
                    a20 = MAD((VT)x2, b0, a20); a21 = MAD((VT)x2, b1, a21);
                    a30 = MAD((VT)x3, b0, a30); a31 = MAD((VT)x3, b1, a31);
                }
                if (i + 3 < M) { VSTORE(CPU_VEC)(a30, 0, c3); VSTORE(CPU_VEC)(a31, 0, c3 + CPU_VEC); }
                if (i + 2 < M) { VSTORE(CPU_VEC)(a20, 0, c2); VSTORE(CPU_VEC)(a21, 0, c2 + CPU_VEC); }
                if (i + 1 < M) { VSTORE(CPU_VEC)(a10, 0, c1); VSTORE(CPU_VEC)(a11, 0, c1 + CPU_VEC); }
                VSTORE(CPU_VEC)(a00, 0, c0); VSTORE(CPU_VEC)(a01, 0, c0 + CPU_VEC);
            }
        }
    }
}
#endif
