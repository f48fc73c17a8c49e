/* Known nominal steps a model may correct (`decoder.residual: nominal:<name>`, models/nominal.py), for the
 * kernel: in double, DL = VBYTES / 8 rows at a time (one row per lane of a `dvec`). Codes (dims[DIM_NOMINAL]):
 * 0 none (the increment is added to x_t), 1 the quadrotor. Included by rollout_types.h once per ISA level
 * (ISA, VBYTES and INLINE defined), before that level's kernel bodies.
 *
 * Why vectors and our own sin, cos and atan2: row by row through libm, the nominal step took a fifth of a
 * K = 512 MPPI rollout. The polynomials below are Taylor series on reduced arguments, accurate to a few
 * units in the last place of a double (test/test_native.py checks the step against the torch reference). */
#ifndef NOMINAL_CODES
#define NOMINAL_CODES
enum { NOMINAL_NONE, NOMINAL_QUADROTOR, NOMINAL_MEAN }; /* what the increment is added to: x_t, the quadrotor's
                                                     * nominal step, the training mean of the state */
/* the quadrotor's packed constants: mass, Jx, Jy, Jz, arm, torque coefficient, gravity, thrust limit */
#define QUAD_PARAMS 8
#endif

#define NCAT_(a, b) a##_##b
#define NCAT(a, b) NCAT_(a, b)
#define NF(name) NCAT(name, ISA)
#define DL (VBYTES / 8)
typedef double NF(dvec) __attribute__((vector_size(VBYTES)));
typedef int64_t NF(lvec) __attribute__((vector_size(VBYTES)));
#define dvec NF(dvec)
#define lvec NF(lvec)

static INLINE dvec NF(dsel)(lvec mask, dvec a, dvec b) { return (dvec)((mask & (lvec)a) | (~mask & (lvec)b)); }

static INLINE dvec NF(dsqrt)(dvec x) {
  double t[DL];
  memcpy(t, &x, sizeof t);
  for (int l = 0; l < DL; l++) t[l] = sqrt(t[l]); /* vectorised (-fno-math-errno) */
  memcpy(&x, t, sizeof t);
  return x;
}

/* sin and cos of x (|x| < 2^20): x = r + k π/2, |r| <= π/4 (π/2 in two parts, Cody-Waite), Taylor to r^15 / r^16
 * (truncation below 5e-17), then the quadrant k mod 4 swaps and negates them. */
static INLINE void NF(dsincos)(dvec x, dvec *s, dvec *c) {
  const double magic = 6755399441055744.0; /* 1.5 · 2^52: adding it rounds to an integer in the low bits */
  const dvec kv = x * 0.63661977236758134308 + magic;
  const dvec k = kv - magic;
  const dvec r = (x - k * 1.57079632673412561417e+00) - k * 6.07710050650619224932e-11;
  const dvec r2 = r * r;
  dvec ps = (dvec){} - 1.0 / 1307674368000.0;
  ps = ps * r2 + 1.0 / 6227020800.0;
  ps = ps * r2 - 1.0 / 39916800.0;
  ps = ps * r2 + 1.0 / 362880.0;
  ps = ps * r2 - 1.0 / 5040.0;
  ps = ps * r2 + 1.0 / 120.0;
  ps = ps * r2 - 1.0 / 6.0;
  const dvec sr = r + r * r2 * ps;
  dvec pc = (dvec){} + 1.0 / 20922789888000.0;
  pc = pc * r2 - 1.0 / 87178291200.0;
  pc = pc * r2 + 1.0 / 479001600.0;
  pc = pc * r2 - 1.0 / 3628800.0;
  pc = pc * r2 + 1.0 / 40320.0;
  pc = pc * r2 - 1.0 / 720.0;
  pc = pc * r2 + 1.0 / 24.0;
  pc = pc * r2 - 0.5;
  const dvec cr = 1.0 + r2 * pc;
  const lvec q = (lvec)kv & 3; /* k mod 4, from the integer in the low bits */
  const lvec swap = (q & 1) != 0, neg_s = (q & 2) != 0, neg_c = ((q + 1) & 2) != 0;
  const dvec s0 = NF(dsel)(swap, cr, sr), c0 = NF(dsel)(swap, sr, cr);
  *s = NF(dsel)(neg_s, -s0, s0);
  *c = NF(dsel)(neg_c, -c0, c0);
}

/* atan2(y, x) for y >= 0 (an angle in [0, π]): t = min/max of y, |x| in [0, 1]; atan t = 4 atan z by two
 * halvings atan t = 2 atan(t / (1 + √(1 + t²))), |z| <= tan(π/16); Taylor to z^23 (truncation below 1e-18). */
static INLINE dvec NF(datan2)(dvec y, dvec x) {
  const dvec ax = NF(dsel)(x < 0, -x, x);
  const lvec steep = y > ax;
  const dvec big = NF(dsel)(steep, y, ax), small = NF(dsel)(steep, ax, y);
  dvec t = small / NF(dsel)(big > 0, big, (dvec){} + 1.0);
  t = t / (1.0 + NF(dsqrt)(1.0 + t * t));
  t = t / (1.0 + NF(dsqrt)(1.0 + t * t));
  const dvec t2 = t * t;
  dvec p = (dvec){} - 1.0 / 23;
  for (int k = 21; k >= 3; k -= 2) p = p * t2 + ((k & 2) ? -1.0 : 1.0) / k;
  dvec a = 4.0 * (t + t * t2 * p);
  a = NF(dsel)(steep, 1.57079632679489661923 - a, a);
  return NF(dsel)(x < 0, 3.14159265358979323846 - a, a);
}

/* W = [w]×, W2 = W W (row-major) */
static INLINE void NF(skew2)(const dvec *w, dvec W[9], dvec W2[9]) {
  const dvec z = (dvec){};
  W[0] = z, W[1] = -w[2], W[2] = w[1], W[3] = w[2], W[4] = z, W[5] = -w[0], W[6] = -w[1], W[7] = w[0], W[8] = z;
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 3; j++) W2[3 * i + j] = W[3 * i] * W[j] + W[3 * i + 1] * W[3 + j] + W[3 * i + 2] * W[6 + j];
}

/* SE(3) exponential of xi = (v, w): R (row-major) and p, as systems/quadrotor/torch_step.py `exp6` (series
 * of the coefficients below an angle of 1e-4) */
static INLINE void NF(exp6)(const dvec *xi, dvec R[9], dvec p[3]) {
  const dvec *v = xi, *w = xi + 3;
  const dvec t2 = w[0] * w[0] + w[1] * w[1] + w[2] * w[2];
  const lvec small = t2 < 1e-8;
  const dvec t = NF(dsqrt)(NF(dsel)(small, (dvec){} + 1.0, t2));
  dvec s, cs;
  NF(dsincos)(t, &s, &cs);
  const dvec a = NF(dsel)(small, 1 - t2 / 6, s / t);
  const dvec b = NF(dsel)(small, 0.5 - t2 / 24, (1 - cs) / (t * t));
  const dvec c = NF(dsel)(small, 1.0 / 6 - t2 / 120, (t - s) / (t * t * t));
  dvec W[9], W2[9], V[9];
  NF(skew2)(w, W, W2);
  for (int k = 0; k < 9; k++) {
    const double eye = (k % 4 == 0) ? 1.0 : 0.0;
    R[k] = eye + a * W[k] + b * W2[k];
    V[k] = eye + b * W[k] + c * W2[k];
  }
  for (int i = 0; i < 3; i++) p[i] = V[3 * i] * v[0] + V[3 * i + 1] * v[1] + V[3 * i + 2] * v[2];
}

/* SE(3) logarithm (angles below π), as torch_step.py `log6` */
static INLINE void NF(log6)(const dvec R[9], const dvec p[3], dvec *xi) {
  const dvec vee[3] = {R[7] - R[5], R[2] - R[6], R[3] - R[1]};
  dvec cs = (R[0] + R[4] + R[8] - 1) / 2;
  cs = NF(dsel)(cs < -1, (dvec){} - 1.0, cs);
  cs = NF(dsel)(cs > 1, (dvec){} + 1.0, cs);
  const dvec sn = 0.5 * NF(dsqrt)(vee[0] * vee[0] + vee[1] * vee[1] + vee[2] * vee[2]);
  const dvec theta = NF(datan2)(sn, cs), t2 = theta * theta;
  const lvec small = t2 < 1e-8;
  const dvec t = NF(dsel)(small, (dvec){} + 1.0, theta);
  dvec s, c;
  NF(dsincos)(t, &s, &c);
  const dvec k = NF(dsel)(small, 0.5 + t2 / 12, t / (2 * s));
  const dvec d = NF(dsel)(small, 1.0 / 12 + t2 / 720, 1 / (t * t) - (1 + c) / (2 * t * s));
  dvec *w = xi + 3, W[9], W2[9];
  for (int i = 0; i < 3; i++) w[i] = k * vee[i];
  NF(skew2)(w, W, W2);
  for (int i = 0; i < 3; i++) {
    dvec acc = (dvec){};
    for (int j = 0; j < 3; j++) acc += ((i == j) - 0.5 * W[3 * i + j] + d * W2[3 * i + j]) * p[j];
    xi[i] = acc;
  }
}

/* One step of the quadrotor at its nominal constants `prm` (QUAD_PARAMS), DL rows: stored state x [12],
 * thrusts u [4] (saturated), step h -> out [12]; Crocoddyl's Euler free-flyer step, as torch_step.py `step` */
static INLINE void NF(quad_step)(const double *prm, const dvec *x, const dvec *u_raw, dvec h, dvec *out) {
  const double mass = prm[0], J[3] = {prm[1], prm[2], prm[3]}, arm = prm[4], ct = prm[5], g = prm[6];
  dvec u[4];
  for (int i = 0; i < 4; i++) {
    u[i] = NF(dsel)(u_raw[i] < 0, (dvec){}, u_raw[i]);
    u[i] = NF(dsel)(u[i] > prm[7], (dvec){} + prm[7], u[i]);
  }
  dvec R[9], p[3];
  NF(exp6)(x, R, p);
  const dvec *v = x + 6, *w = x + 9, z = (dvec){};
  const dvec force[3] = {z, z, u[0] + u[1] + u[2] + u[3]};
  const dvec tau[3] = {arm * (u[1] - u[3]), arm * (u[2] - u[0]), ct * (u[1] + u[3] - u[0] - u[2])};
  const dvec Jw[3] = {J[0] * w[0], J[1] * w[1], J[2] * w[2]};
  const dvec wxv[3] = {w[1] * v[2] - w[2] * v[1], w[2] * v[0] - w[0] * v[2], w[0] * v[1] - w[1] * v[0]};
  const dvec wxJw[3] = {w[1] * Jw[2] - w[2] * Jw[1], w[2] * Jw[0] - w[0] * Jw[2], w[0] * Jw[1] - w[1] * Jw[0]};
  dvec twist[6], *v2 = out + 6, *w2 = out + 9;
  for (int i = 0; i < 3; i++) {
    v2[i] = v[i] + h * (force[i] / mass - g * R[6 + i] - wxv[i]); /* gravity in the body: Rᵀ (0, 0, -g) */
    w2[i] = w[i] + h * (tau[i] - wxJw[i]) / J[i];
    twist[i] = v2[i] * h, twist[3 + i] = w2[i] * h;
  }
  dvec dR[9], dp[3], R2[9], p2[3];
  NF(exp6)(twist, dR, dp);
  for (int i = 0; i < 3; i++) {
    for (int j = 0; j < 3; j++) R2[3 * i + j] = R[3 * i] * dR[j] + R[3 * i + 1] * dR[3 + j] + R[3 * i + 2] * dR[6 + j];
    p2[i] = p[i] + R[3 * i] * dp[0] + R[3 * i + 1] * dp[1] + R[3 * i + 2] * dp[2];
  }
  NF(log6)(R2, p2, out);
}
#undef NCAT_
#undef NCAT
#undef NF
#undef dvec
#undef lvec
#undef DL
