/* Known nominal steps a model may correct (`decoder.residual: nominal:<name>`, models/nominal.py), for the
 * kernel: one row at a time, in double. Codes (dims[DIM_NOMINAL]): 0 none (the increment is added to x_t),
 * 1 the quadrotor. Included once by rollout.c, outside the ISA levels (a plain call from each of them). */

enum { NOMINAL_NONE, NOMINAL_QUADROTOR };
/* the quadrotor's packed constants: mass, Jx, Jy, Jz, arm, torque coefficient, gravity, thrust limit */
#define QUAD_PARAMS 8

static void quad_skew2(const double *w, double W[9], double W2[9]) {
  W[0] = 0, W[1] = -w[2], W[2] = w[1], W[3] = w[2], W[4] = 0, W[5] = -w[0], W[6] = -w[1], W[7] = w[0], W[8] = 0;
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < 3; j++) W2[3 * i + j] = W[3 * i] * W[j] + W[3 * i + 1] * W[3 + j] + W[3 * i + 2] * W[6 + j];
}

/* SE(3) exponential of xi = (v, w): R (row-major) and p, as systems/quadrotor/torch_step.py `exp6` */
static void quad_exp6(const double *xi, double R[9], double p[3]) {
  const double *v = xi, *w = xi + 3;
  const double t2 = w[0] * w[0] + w[1] * w[1] + w[2] * w[2];
  double a, b, c;
  if (t2 < 1e-8) {
    a = 1 - t2 / 6, b = 0.5 - t2 / 24, c = 1.0 / 6 - t2 / 120;
  } else {
    const double t = sqrt(t2), s = sin(t);
    a = s / t, b = (1 - cos(t)) / t2, c = (t - s) / (t2 * t);
  }
  double W[9], W2[9], V[9];
  quad_skew2(w, W, W2);
  for (int k = 0; k < 9; k++) {
    const double eye = (k % 4 == 0) ? 1.0 : 0.0;
    R[k] = eye + a * W[k] + b * W2[k];
    V[k] = eye + b * W[k] + c * W2[k];
  }
  for (int i = 0; i < 3; i++) p[i] = V[3 * i] * v[0] + V[3 * i + 1] * v[1] + V[3 * i + 2] * v[2];
}

/* SE(3) logarithm (angles below π), as torch_step.py `log6` */
static void quad_log6(const double R[9], const double p[3], double *xi) {
  const double vee[3] = {R[7] - R[5], R[2] - R[6], R[3] - R[1]};
  double cs = (R[0] + R[4] + R[8] - 1) / 2;
  cs = cs < -1 ? -1 : (cs > 1 ? 1 : cs);
  const double sn = 0.5 * sqrt(vee[0] * vee[0] + vee[1] * vee[1] + vee[2] * vee[2]);
  const double theta = atan2(sn, cs), t2 = theta * theta;
  double k, d;
  if (t2 < 1e-8) {
    k = 0.5 + t2 / 12, d = 1.0 / 12 + t2 / 720;
  } else {
    const double s = sin(theta);
    k = theta / (2 * s), d = 1 / t2 - (1 + cos(theta)) / (2 * theta * s);
  }
  double *w = xi + 3, W[9], W2[9];
  for (int i = 0; i < 3; i++) w[i] = k * vee[i];
  quad_skew2(w, W, W2);
  for (int i = 0; i < 3; i++) {
    double acc = 0;
    for (int j = 0; j < 3; j++) acc += ((i == j) - 0.5 * W[3 * i + j] + d * W2[3 * i + j]) * p[j];
    xi[i] = acc;
  }
}

/* One step of the quadrotor at its nominal constants `prm` (QUAD_PARAMS): stored state x [12], thrusts
 * u [4] (saturated), step h -> out [12]; Crocoddyl's Euler free-flyer step, as torch_step.py `step` */
static void quad_step(const double *prm, const double *x, const double *u_raw, double h, double *out) {
  const double mass = prm[0], J[3] = {prm[1], prm[2], prm[3]}, arm = prm[4], ct = prm[5], g = prm[6];
  double u[4];
  for (int i = 0; i < 4; i++) u[i] = u_raw[i] < 0 ? 0 : (u_raw[i] > prm[7] ? prm[7] : u_raw[i]);
  double R[9], p[3];
  quad_exp6(x, R, p);
  const double *v = x + 6, *w = x + 9;
  const double force[3] = {0, 0, u[0] + u[1] + u[2] + u[3]};
  const double tau[3] = {arm * (u[1] - u[3]), arm * (u[2] - u[0]), ct * (u[1] + u[3] - u[0] - u[2])};
  const double Jw[3] = {J[0] * w[0], J[1] * w[1], J[2] * w[2]};
  const double wxv[3] = {w[1] * v[2] - w[2] * v[1], w[2] * v[0] - w[0] * v[2], w[0] * v[1] - w[1] * v[0]};
  const double wxJw[3] = {w[1] * Jw[2] - w[2] * Jw[1], w[2] * Jw[0] - w[0] * Jw[2], w[0] * Jw[1] - w[1] * Jw[0]};
  double twist[6], *v2 = out + 6, *w2 = out + 9;
  for (int i = 0; i < 3; i++) {
    v2[i] = v[i] + h * (force[i] / mass - g * R[6 + i] - wxv[i]); /* gravity in the body: Rᵀ (0, 0, -g) */
    w2[i] = w[i] + h * (tau[i] - wxJw[i]) / J[i];
    twist[i] = v2[i] * h, twist[3 + i] = w2[i] * h;
  }
  double dR[9], dp[3], R2[9], p2[3];
  quad_exp6(twist, dR, dp);
  for (int i = 0; i < 3; i++) {
    for (int j = 0; j < 3; j++) R2[3 * i + j] = R[3 * i] * dR[j] + R[3 * i + 1] * dR[3 + j] + R[3 * i + 2] * dR[6 + j];
    p2[i] = p[i] + R[3 * i] * dp[0] + R[3 * i + 1] * dp[1] + R[3 * i + 2] * dp[2];
  }
  quad_log6(R2, p2, out);
}
