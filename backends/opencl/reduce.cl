// Reductions along axis 0, one op per build. The host (backends/opencl/kernels.py) chooses:
//   -DOP_SUM | -DOP_M2 | -DOP_COUNT | -DOP_MIN | -DOP_MAX   the op
//   -DT=  input scalar type     -DIN=  inner accumulator     -DOUT= outer accumulator (see below)
//   -DVEC= lanes per load (16 on CPUs, 4 on GPUs; 1 builds only the per-column kernel)
//   -DBLOCK= loads summed in IN before they are added into OUT (bounds float32 rounding error)
//   -DMASK= int for float, long for double (min/max NaN masks)
//   -DWG= work-group size of the tree kernel    -DIS_FLOAT (NaN handling)    -DHAS_FP64
//
// Layouts: with VEC lanes, element k of the flat input lands in lane k % VEC, so when the column
// count C divides VEC each lane belongs to one column (k % C) and the host folds lanes into columns.
// Otherwise (VEC=1 build) one work-item walks one column over a block of rows.
//   reduce_chunked  CPUs: few work-items (one per work-group), each streaming a contiguous chunk with
//                   wide vector loads; PoCL turns this into plain SIMD loops (a barrier tree is ~10x slower there).
//   reduce_tree     GPUs: grid-stride loads, then a local-memory tree per work-group.
//   reduce_columns  any device, C not dividing VEC: work-item (c, j) reduces column c over row block j.
// Every kernel writes one partial per lane (and per work-item or group) to out (and, for m2, the
// sums of squares to out2); the host finishes in float64.
// Sums accumulate BLOCK loads in IN, then add them into OUT: float32 data keeps float32 loads and
// arithmetic but the error grows with BLOCK, not with the partition length.
#ifdef HAS_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#endif

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)

#if VEC == 1
#define TV T
#define IV IN
#define OV OUT
#define TO_IV(v) ((IN)(v))
#define TO_OV(v) ((OUT)(v))
#else
#define TV CAT(T, VEC)
#define IV CAT(IN, VEC)
#define OV CAT(OUT, VEC)
#define TO_IV(v) CAT(convert_, IV)(v)
#define TO_OV(v) CAT(convert_, OV)(v)
#define LOADV CAT(vload, VEC)   /* only for the shift: vloadN of the data compiles to scalar loads on PoCL */
#define STOREV CAT(vstore, VEC)
#endif

#if defined(OP_MIN) || defined(OP_MAX)
// Extremes keep the input type. A compare and select (one vcmp + vblend on PoCL, about twice as
// fast as the min/fmin builtins there); float data also ORs a NaN mask (v != v, cheaper than isnan),
// and a NaN anywhere makes the result NaN, as in np.min / np.max.
#define EXTREME
#define RES T
#ifdef OP_MIN
#define PICK(a, v) (((v) < (a)) ? (v) : (a))
#else
#define PICK(a, v) (((v) > (a)) ? (v) : (a))
#endif
#ifdef IS_FLOAT
#if VEC == 1
#define MASK_T int
#else
#define MASK_T CAT(MASK, VEC)   /* -DMASK=int for float, long for double: what vector compares return */
#endif
#define STATE(first) TV a = (first); MASK_T nan_ = (a != a)
#define STEP(v) { const TV v_ = (v); a = PICK(a, v_); nan_ |= (v_ != v_); }
#define FINISH() a = nan_ ? (TV)(NAN) : a
// Tree combine: NaN wins explicitly (both sides already folded their NaN masks in).
#define COMBINE(p, q) ((isnan(p) | isnan(q)) ? (p) + (q) : PICK(p, q))
#else
#define STATE(first) TV a = (first)
#define STEP(v) a = PICK(a, v)
#define FINISH()
#define COMBINE(p, q) PICK(p, q)
#endif
#define FLUSH()
#else
// Sums: count of non-NaN, sum, or (OP_M2) sum of d and d*d with d = x - shift.
#define RES OUT
#define STATE(first) IV a = 0, b = 0; OV A = 0, B = 0
#define FLUSH() A += TO_OV(a); B += TO_OV(b); a = 0; b = 0
#define COMBINE(p, q) ((p) + (q))
#if defined(OP_SUM)
#define STEP(v) a += TO_IV(v)
#elif defined(OP_COUNT) && VEC == 1
#define STEP(v) a += ((v) == (v))                   /* scalar compares give 1; false for NaN */
#elif defined(OP_COUNT)
#define STEP(v) a -= ((v) == (v))                   /* vector compares give -1 (IN = MASK) */
#elif defined(OP_M2)
#define STEP(v) { IV d_ = TO_IV(v) - shift; a += d_; b += d_ * d_; }
#endif
#endif

// The blocked loop over loads begin, begin+step, ... < end; LOAD(i) gives load i.
#define REDUCE_LOOP(LOAD, begin, end, step)                              \
    for (ulong i = (begin); i < (end);) {                                \
        const ulong stop_ = min((ulong)(end), i + (ulong)BLOCK * (step)); \
        for (; i < stop_; i += (step)) STEP(LOAD(i));                    \
        FLUSH();                                                         \
    }

#if VEC > 1
#define LOAD_FLAT(i) x[i]

__kernel void reduce_chunked(__global const TV *restrict x, const ulong nvec, const ulong per,
                             __global const IN *restrict shift_in,
                             __global RES *restrict out, __global RES *restrict out2)
{
    const ulong w = get_global_id(0), begin = w * per, end = min(begin + per, nvec);
#ifdef OP_M2
    const IV shift = LOADV(0, shift_in);
#endif
    STATE(x[begin]);
    REDUCE_LOOP(LOAD_FLAT, begin, end, 1)
#ifdef EXTREME
    FINISH();
    STOREV(a, w, out);
#else
    STOREV(A, w, out);
#endif
#ifdef OP_M2
    STOREV(B, w, out2);
#endif
}

#ifdef WG
#ifdef EXTREME
#define TREE_T TV
#define TREE_A a
#else
#define TREE_T OV
#define TREE_A A
#endif

// Local-memory tree over WG values of one work-group; returns the group's total to every item.
inline TREE_T tree(__local TREE_T *s, TREE_T v)
{
    const uint l = get_local_id(0);
    s[l] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint width = WG / 2; width > 0; width /= 2) {   // ("half" is a type in OpenCL C)
        if (l < width) s[l] = COMBINE(s[l], s[l + width]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    v = s[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return v;
}

__kernel __attribute__((reqd_work_group_size(WG, 1, 1)))
void reduce_tree(__global const TV *restrict x, const ulong nvec, const ulong per,
                 __global const IN *restrict shift_in,
                 __global RES *restrict out, __global RES *restrict out2)
{
    __local TREE_T scratch[WG];
    const ulong g = get_global_id(0), stride = get_global_size(0);
#ifdef OP_M2
    const IV shift = LOADV(0, shift_in);
#endif
    STATE(x[min(g, nvec - 1)]);   // extremes start from a real value; idle items repeat one
    REDUCE_LOOP(LOAD_FLAT, g, nvec, stride)
#ifdef EXTREME
    FINISH();
#endif
    const uint l = get_local_id(0);
    const ulong grp = get_group_id(0);
    TREE_T r = tree(scratch, TREE_A);
    if (l == 0) STOREV(r, grp, out);
#ifdef OP_M2
    r = tree(scratch, B);
    if (l == 0) STOREV(r, grp, out2);
#endif
}
#endif  // WG

#else  // VEC == 1

__kernel void reduce_columns(__global const T *restrict x, const ulong rows, const ulong per,
                             __global const IN *restrict shift_in,
                             __global RES *restrict out, __global RES *restrict out2, const ulong cols)
{
    const ulong c = get_global_id(0), j = get_global_id(1);
    if (c >= cols) return;
    const ulong begin = j * per, end = min(begin + per, rows);
#ifdef OP_M2
    const IN shift = shift_in[c];
#endif
#define LOAD_COL(i) x[(i) * cols + c]
    STATE(LOAD_COL(begin));
    REDUCE_LOOP(LOAD_COL, begin, end, 1)
#ifdef EXTREME
    FINISH();
    out[j * cols + c] = a;
#else
    out[j * cols + c] = A;
#endif
#ifdef OP_M2
    out2[j * cols + c] = B;
#endif
}
#endif
