/* MetaSym rollout kernel: `MetaSym.rollout` for CPU inference, compiled.
 *
 * Each call streams every token of a batch of rows through the decoder, context
 * and prediction alike (token t predicts x_{t+1}; from the last context token on
 * the predictions are fed back), keeping each block's keys/values in a ring of
 * `context` slots. Rows are processed LANES at a time, one row per SIMD lane (GCC
 * vector extensions), so every operation is one vector operation over 16 rows.
 * The weights come folded and packed by `metasym_core/models/native.py`, in the
 * order `unpack` below reads them. The body is written once (rollout_body.h) and
 * instantiated for float and double.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LANES 16
#define ABI_VERSION 2
#define MAX_LAYERS 64 /* decoder blocks */

/* SIMD clones for x86-64 (AVX-512, AVX2) with a baseline fallback; dispatched at load time */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MULTIVERSION
#endif
/* everything is inlined into the (cloned) entry points, so each clone is compiled for its target */
#define INLINE inline __attribute__((always_inline))

enum { DIM_D, DIM_M, DIM_DM, DIM_H, DIM_C, DIM_L, DIM_META, DIM_ELAYERS, DIM_ESUB, DIM_ACT, DIM_MLP, DIM_HEAD };
enum { ACT_SIGMOID, ACT_TANH, ACT_ELU };

/* An (empty) Python module, so that the library imports like any extension; its functions are called
 * through ctypes, which releases the GIL for the call. */
static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "_native", "MetaSym's rollout kernel; see metasym_core/models/native.py.", -1, NULL,
    NULL, NULL, NULL, NULL};
PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&native_module); }

int metasym_native_abi(void) { return ABI_VERSION; }
int metasym_native_lanes(void) { return LANES; }

#define REAL float
#define SFX f32
#define SINT int32_t
#define MAGIC 12582912.0f /* 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits */
#define MANT 23
#define EBIAS 127
#define EXP_LO (-87.0f)
#define EXP_HI 88.0f
#define LN2_HI 0.693359375f
#define LN2_LO (-2.12194440e-4f)
#define POLY 7
#include "rollout_body.h"
#undef REAL
#undef SFX
#undef SINT
#undef MAGIC
#undef MANT
#undef EBIAS
#undef EXP_LO
#undef EXP_HI
#undef LN2_HI
#undef LN2_LO
#undef POLY

#define REAL double
#define SFX f64
#define SINT int64_t
#define MAGIC 6755399441055744.0 /* 1.5 * 2^52 */
#define MANT 52
#define EBIAS 1023
#define EXP_LO (-708.0)
#define EXP_HI 709.0
#define LN2_HI 6.93147180369123816490e-01
#define LN2_LO 1.90821492927058770002e-10
#define POLY 13
#include "rollout_body.h"
