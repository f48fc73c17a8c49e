/* One ISA level of the kernel: the body (rollout_body.h) for float and for double, with as many rows per
 * vector as VBYTES (the level's native vector width in bytes) holds. Included by rollout.c with ISA and
 * VBYTES defined, inside that level's `#pragma GCC target`. The body #undefs the macros defined here. */
#include "nominal.h" /* this level's nominal steps, shared by its float and double bodies */
#define CAT3_(a, b) a##_##b
#define CAT3(a, b) CAT3_(a, b)

#define REAL float
#define SFX CAT3(f32, ISA)
#define LANES (VBYTES / 4)
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

#define REAL double
#define SFX CAT3(f64, ISA)
#define LANES (VBYTES / 8)
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
#undef CAT3_
#undef CAT3
