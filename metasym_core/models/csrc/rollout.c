/* MetaSym rollout kernel: `MetaSym.rollout` for CPU inference, compiled.
 *
 * Each call streams every token of a batch of rows through the decoder, context
 * and prediction alike (token t predicts x_{t+1}; from the last context token on
 * the predictions are fed back), keeping each block's keys/values in a ring of
 * `context` slots. Rows are processed LANES at a time, one row per SIMD lane (GCC
 * vector extensions), so every operation is one vector operation over a block of rows.
 * The weights come folded and packed by `metasym_core/models/native.py`, in the
 * order `unpack` reads them. The body is written once (rollout_body.h) and
 * instantiated per ISA level and REAL type (rollout_types.h).
 *
 * ISA levels: on x86-64 with GCC the body is compiled for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA)
 * and the x86-64 baseline (SSE2), each with vectors of its native width: a vector wider than the
 * registers (16 floats on AVX2) is split by the compiler into code that ran 7-13x slower than 8 floats
 * (issue 18). The best level the CPU supports is chosen at load; `metasym_native_use` forces another
 * (to time the AVX2 path on an AVX-512 machine). Elsewhere one portable level, 16-byte vectors.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ABI_VERSION 6
#define MAX_LAYERS 64 /* decoder blocks */
/* everything is inlined into each level's entry point, so it is compiled for that level's target */
#define INLINE inline __attribute__((always_inline))

enum { DIM_D, DIM_M, DIM_DM, DIM_H, DIM_C, DIM_L, DIM_META, DIM_ELAYERS, DIM_ESUB, DIM_ACT, DIM_MLP, DIM_HEAD,
       DIM_NOMINAL, DIM_SKIP };
enum { ACT_SIGMOID, ACT_TANH, ACT_ELU };

/* An (empty) Python module, so that the library imports like any extension; its functions are called
 * through ctypes, which releases the GIL for the call. */
static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "_native", "MetaSym's rollout kernel; see metasym_core/models/native.py.", -1, NULL,
    NULL, NULL, NULL, NULL};
PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&native_module); }

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(METASYM_PORTABLE)
#define X86_LEVELS 1
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
#define ISA v4
#define VBYTES 64
#include "rollout_types.h"
#undef ISA
#undef VBYTES
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
#define ISA v3
#define VBYTES 32
#include "rollout_types.h"
#undef ISA
#undef VBYTES
#pragma GCC pop_options
#endif

#define ISA base
#define VBYTES 16
#include "rollout_types.h"
#undef ISA
#undef VBYTES

typedef int (*rollout_f32)(const int *, const float *, long, int, int, int, int, const float *, const float *,
                           const float *, float *);
typedef int (*rollout_f64)(const int *, const double *, long, int, int, int, int, const double *, const double *,
                           const double *, double *);
typedef struct {
  const char *name;
  int vbytes;
  rollout_f32 f32;
  rollout_f64 f64;
} Level;

/* best first */
static const Level levels[] = {
#ifdef X86_LEVELS
    {"x86-64-v4", 64, metasym_rollout_f32_v4, metasym_rollout_f64_v4},
    {"x86-64-v3", 32, metasym_rollout_f32_v3, metasym_rollout_f64_v3},
    {"x86-64", 16, metasym_rollout_f32_base, metasym_rollout_f64_base},
#else
    {"portable", 16, metasym_rollout_f32_base, metasym_rollout_f64_base},
#endif
};
enum { NLEVELS = sizeof levels / sizeof levels[0] };

static int supported(int i) {
#ifdef X86_LEVELS
  __builtin_cpu_init();
  if (i == 0) return __builtin_cpu_supports("x86-64-v4") > 0;
  if (i == 1) return __builtin_cpu_supports("x86-64-v3") > 0;
#endif
  return i < NLEVELS;
}

static int best(void) {
  int i = 0;
  while (!supported(i)) i++;
  return i;
}

static int current = -1; /* the level in use; set at load */

static char level_names[128]; /* the names in `levels`, best first, separated by spaces; set at load */

__attribute__((constructor)) static void choose_at_load(void) {
  current = best();
  for (int i = 0; i < NLEVELS; i++) {
    if (i) strcat(level_names, " ");
    strcat(level_names, levels[i].name);
  }
}

int metasym_native_abi(void) { return ABI_VERSION; }

/* The level in use (e.g. "x86-64-v3"). */
const char *metasym_native_isa(void) { return levels[current].name; }

/* The levels this build has, best first, separated by spaces. */
const char *metasym_native_isas(void) { return level_names; }

/* Rows per vector of the level in use, for a REAL of `real_bytes` (4 or 8). */
int metasym_native_lanes(int real_bytes) { return levels[current].vbytes / real_bytes; }

/* Use the level named `name` ("best": the best the CPU supports): 0, -1 for a name this build lacks, -2 for a
 * level the CPU does not support. Not to be called while a rollout runs. */
int metasym_native_use(const char *name) {
  if (!strcmp(name, "best")) {
    current = best();
    return 0;
  }
  for (int i = 0; i < NLEVELS; i++)
    if (!strcmp(name, levels[i].name)) {
      if (!supported(i)) return -2;
      current = i;
      return 0;
    }
  return -1;
}

/* The rollout of `B` rows on the level in use; see rollout_body.h for the arguments. */
int metasym_rollout_f32(const int *dims, const float *w, long nweights, int B, int T, int horizon, int shared,
                        const float *x0, const float *u, const float *h, float *out) {
  return levels[current].f32(dims, w, nweights, B, T, horizon, shared, x0, u, h, out);
}

int metasym_rollout_f64(const int *dims, const double *w, long nweights, int B, int T, int horizon, int shared,
                        const double *x0, const double *u, const double *h, double *out) {
  return levels[current].f64(dims, w, nweights, B, T, horizon, shared, x0, u, h, out);
}
