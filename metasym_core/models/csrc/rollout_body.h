/* The kernel body, included by rollout_types.h once per ISA level and REAL type (see rollout.c). */
#define CAT2_(a, b) a##_##b
#define CAT2(a, b) CAT2_(a, b)
#define FN(name) CAT2(name, SFX)
/* LANES rows side by side: GCC vector extensions, so the SIMD code does not hinge on the auto-vectoriser */
typedef REAL FN(vec) __attribute__((vector_size(LANES * sizeof(REAL))));
typedef SINT FN(ivec) __attribute__((vector_size(LANES * sizeof(REAL))));
#define vec FN(vec)
#define ivec FN(ivec)

static INLINE vec FN(select)(ivec mask, vec a, vec b) { return (vec)((mask & (ivec)a) | (~mask & (ivec)b)); }

/* exp to about one ulp on every lane: 2^n · e^r, |r| <= ln2/2, e^r by its Taylor polynomial;
 * clamped to the normal range (no inf, no denormals). */
static INLINE vec FN(vexp)(vec x) {
  const vec lo = (vec){} + EXP_LO, hi = (vec){} + EXP_HI, magic = (vec){} + MAGIC;
  x = FN(select)(x < lo, lo, x);
  x = FN(select)(x > hi, hi, x);
  const vec v = x * (REAL)1.44269504088896340736 + magic;
  const vec n = v - magic;
  vec r = x - n * LN2_HI;
  r = r - n * LN2_LO;
  /* 1/k!, k = 0..13 */
  static const REAL coef[] = {1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320,
                              1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0};
  vec p = (vec){} + coef[POLY];
  for (int k = POLY - 1; k >= 0; k--) p = p * r + coef[k];
  const ivec e = ((ivec)v - (ivec)magic + EBIAS) << MANT;
  return p * (vec)e;
}

static INLINE vec FN(sigmoid)(vec x) { return 1 / (1 + FN(vexp)(-x)); }

/* out[o] = W[o] · in (+ b[o]); with `add`, out[o] += that. W row-major [no][ni]. Eight outputs at a
 * time (then four, then one): independent chains of multiply-adds instead of one (each waits on the previous). */
static INLINE void FN(matvec)(int no, int ni, const REAL *W, const REAL *b, const vec *in, vec *out, int add) {
  int o = 0;
  for (; o + 8 <= no; o += 8) {
    const REAL *w0 = W + (size_t)o * ni;
    vec a[8];
    for (int j = 0; j < 8; j++) a[j] = (vec){} + (b ? b[o + j] : 0);
    for (int i = 0; i < ni; i++) {
      const vec x = in[i];
      for (int j = 0; j < 8; j++) a[j] += w0[(size_t)j * ni + i] * x;
    }
    for (int j = 0; j < 8; j++) out[o + j] = add ? out[o + j] + a[j] : a[j];
  }
  for (; o + 4 <= no; o += 4) {
    const REAL *w0 = W + (size_t)o * ni, *w1 = w0 + ni, *w2 = w1 + ni, *w3 = w2 + ni;
    vec a0 = (vec){} + (b ? b[o] : 0), a1 = (vec){} + (b ? b[o + 1] : 0);
    vec a2 = (vec){} + (b ? b[o + 2] : 0), a3 = (vec){} + (b ? b[o + 3] : 0);
    for (int i = 0; i < ni; i++) {
      const vec x = in[i];
      a0 += w0[i] * x;
      a1 += w1[i] * x;
      a2 += w2[i] * x;
      a3 += w3[i] * x;
    }
    if (add) {
      out[o] += a0, out[o + 1] += a1, out[o + 2] += a2, out[o + 3] += a3;
    } else {
      out[o] = a0, out[o + 1] = a1, out[o + 2] = a2, out[o + 3] = a3;
    }
  }
  for (; o < no; o++) {
    vec acc = (vec){} + (b ? b[o] : 0);
    const REAL *w = W + (size_t)o * ni;
    for (int i = 0; i < ni; i++) acc += w[i] * in[i];
    out[o] = add ? out[o] + acc : acc;
  }
}

static INLINE void FN(layer_norm)(int n, const REAL *g, const REAL *b, REAL eps, const vec *in, vec *out) {
  vec mean = (vec){}, var = (vec){};
  for (int i = 0; i < n; i++) mean += in[i];
  mean /= (REAL)n;
  for (int i = 0; i < n; i++) var += (in[i] - mean) * (in[i] - mean);
  REAL rs[LANES];
  memcpy(rs, &var, sizeof rs);
  for (int l = 0; l < LANES; l++) rs[l] = 1 / sqrt(rs[l] / (REAL)n + eps); /* vectorised (-fno-math-errno) */
  memcpy(&var, rs, sizeof rs);
  for (int i = 0; i < n; i++) out[i] = (in[i] - mean) * var * g[i] + b[i];
}

static INLINE void FN(silu)(int n, vec *a) {
  for (int i = 0; i < n; i++) a[i] = a[i] * FN(sigmoid)(a[i]);
}

/* out[i] += h · scale[i] · act(in[i]): an activation shear of the encoder */
static INLINE void FN(act_shear)(int n, int act, const REAL *scale, vec h, const vec *in, vec *out) {
  for (int i = 0; i < n; i++) {
    const vec v = in[i];
    vec f;
    if (act == ACT_SIGMOID)
      f = FN(sigmoid)(v);
    else if (act == ACT_TANH)
      f = 2 * FN(sigmoid)(2 * v) - 1;
    else
      f = FN(select)(v > 0, v, FN(vexp)(v) - 1);
    out[i] += h * scale[i] * f;
  }
}

/* Attention of token t's queries `q [d]` over the ring `K, V [c][d]` (slot = position mod c):
 * positions max(0, t-c+1)..t, bias rel[head][distance]. `sc [c]` is scratch. */
static INLINE void FN(attend)(int t, int c, int d, int H, const REAL *rel, const vec *q, const vec *K,
                              const vec *V, vec *out, vec *sc) {
  const int npos = t + 1 < c ? t + 1 : c, dh = d / H;
  size_t at[npos]; /* ring offset of the token j steps back */
  for (int j = 0; j < npos; j++) at[j] = (size_t)((t - j) % c) * d;
  for (int hh = 0; hh < H; hh++) {
    const int off = hh * dh;
    /* scores and outputs accumulate position by position: npos (then dh) independent chains of
     * multiply-adds instead of one chain per score (each add waiting on the previous) */
    for (int j = 0; j < npos; j++) sc[j] = (vec){} + rel[hh * c + j];
    for (int i = 0; i < dh; i++) {
      const vec qi = q[off + i];
      for (int j = 0; j < npos; j++) sc[j] += qi * K[at[j] + off + i];
    }
    vec mx = sc[0];
    for (int j = 1; j < npos; j++) mx = FN(select)(sc[j] > mx, sc[j], mx);
    vec sum = (vec){};
    for (int j = 0; j < npos; j++) {
      sc[j] = FN(vexp)(sc[j] - mx);
      sum += sc[j];
    }
    sum = 1 / sum;
    vec *o = out + off;
    for (int i = 0; i < dh; i++) o[i] = (vec){};
    for (int j = 0; j < npos; j++) {
      const vec w = sc[j], *v = V + at[j] + off;
      for (int i = 0; i < dh; i++) o[i] += w * v[i];
    }
    for (int i = 0; i < dh; i++) o[i] *= sum;
  }
}

/* the packed weights, in the order native.py writes them */
typedef struct {
  const REAL *ln1_g, *ln1_b, *qkv, *sa_w, *sa_b, *sa_rel;
  const REAL *ln2_g, *ln2_b, *mq, *mkv, *mkv_b, *ma_w, *ma_b, *ma_rel;
  const REAL *ln3_g, *ln3_b, *mlp1_w, *mlp1_b, *mlp2_w, *mlp2_b;
} FN(Block);

typedef struct {
  int D, m, d, H, c, L, meta, el, es, act, hid, hhid, n, nominal, skip;
  REAL eps;
  const REAL *nominal_params; /* the nominal step's constants (nominal.h), when `nominal` */
  const REAL *shift, *A, *ebias, *ea, *tok_w, *tok_b;
  FN(Block) * blocks;
  const REAL *lnf_g, *lnf_b, *head1_w, *head1_b, *head2_w, *head2_b;
  const REAL *skip_w, *skip_b; /* the linear skip on [x | u | h], when `skip` (ActiveDecoder's linear_skip) */
} FN(Model);

static INLINE const REAL *FN(take)(const REAL **cursor, size_t count) {
  const REAL *p = *cursor;
  *cursor += count;
  return p;
}

/* Reads the packed weights; returns their count (for the caller's size check). */
static size_t FN(unpack)(const int *dims, const REAL *w, FN(Model) * M, FN(Block) * blocks) {
  M->D = dims[DIM_D], M->m = dims[DIM_M], M->d = dims[DIM_DM], M->H = dims[DIM_H], M->c = dims[DIM_C];
  M->L = dims[DIM_L], M->meta = dims[DIM_META], M->el = dims[DIM_ELAYERS], M->es = dims[DIM_ESUB];
  M->act = dims[DIM_ACT], M->hid = dims[DIM_MLP], M->hhid = dims[DIM_HEAD], M->n = M->D / 2;
  const int D = M->D, d = M->d, n = M->n, c = M->c, H = M->H;
  const REAL *cur = w;
  const REAL **p = &cur;
  M->eps = *FN(take)(p, 1);
  M->shift = FN(take)(p, D);
  M->A = FN(take)(p, (size_t)M->el * M->es * n * n);
  M->ebias = FN(take)(p, (size_t)M->el * 2 * n);
  M->ea = FN(take)(p, (size_t)(M->el - 1) * n);
  M->tok_w = FN(take)(p, (size_t)d * (D + M->m + 1));
  M->tok_b = FN(take)(p, d);
  M->blocks = blocks;
  for (int i = 0; i < M->L; i++) {
    FN(Block) *B = blocks + i;
    B->ln1_g = FN(take)(p, d), B->ln1_b = FN(take)(p, d), B->qkv = FN(take)(p, (size_t)3 * d * d);
    B->sa_w = FN(take)(p, (size_t)d * d), B->sa_b = FN(take)(p, d), B->sa_rel = FN(take)(p, (size_t)H * c);
    if (M->meta) {
      B->ln2_g = FN(take)(p, d), B->ln2_b = FN(take)(p, d), B->mq = FN(take)(p, (size_t)d * d);
      B->mkv = FN(take)(p, (size_t)2 * d * D), B->mkv_b = FN(take)(p, (size_t)2 * d);
      B->ma_w = FN(take)(p, (size_t)d * d), B->ma_b = FN(take)(p, d), B->ma_rel = FN(take)(p, (size_t)H * c);
    }
    B->ln3_g = FN(take)(p, d), B->ln3_b = FN(take)(p, d);
    B->mlp1_w = FN(take)(p, (size_t)M->hid * d), B->mlp1_b = FN(take)(p, M->hid);
    B->mlp2_w = FN(take)(p, (size_t)d * M->hid), B->mlp2_b = FN(take)(p, d);
  }
  M->lnf_g = FN(take)(p, d), M->lnf_b = FN(take)(p, d);
  M->head1_w = FN(take)(p, (size_t)M->hhid * d), M->head1_b = FN(take)(p, M->hhid);
  M->head2_w = FN(take)(p, (size_t)D * M->hhid), M->head2_b = FN(take)(p, D);
  M->skip = dims[DIM_SKIP];
  M->skip_w = M->skip ? FN(take)(p, (size_t)D * (D + M->m + 1)) : NULL;
  M->skip_b = M->skip ? FN(take)(p, D) : NULL;
  M->nominal = dims[DIM_NOMINAL];
  M->nominal_params = M->nominal == NOMINAL_QUADROTOR ? FN(take)(p, QUAD_PARAMS)
                      : M->nominal == NOMINAL_MEAN    ? FN(take)(p, D) /* the training mean of the state */
                                                      : NULL;
  return (size_t)(cur - w);
}

/* Symplectic encoder Φ(x, h) on lanes (see encoder.py): shears in coordinates centred on `shift`. */
static INLINE void FN(encode)(const FN(Model) * M, const vec *x, vec h, vec *e, vec *tmp) {
  const int n = M->n;
  vec *q = e, *p = e + n;
  for (int i = 0; i < M->D; i++) e[i] = x[i] - M->shift[i];
  for (int layer = 0; layer < M->el; layer++) {
    for (int k = 0; k < M->es; k++) {
      const REAL *A = M->A + ((size_t)layer * M->es + k) * n * n;
      const vec *src = k % 2 == 0 ? q : p;
      vec *dst = k % 2 == 0 ? p : q;
      FN(matvec)(n, n, A, NULL, src, tmp, 0);
      for (int i = 0; i < n; i++) dst[i] += h * tmp[i];
    }
    const REAL *bq = M->ebias + (size_t)layer * 2 * n, *bp = bq + n;
    for (int i = 0; i < n; i++) {
      q[i] += h * bq[i];
      p[i] += h * bp[i];
    }
    if (layer < M->el - 1) {
      if (layer % 2 == 0)
        FN(act_shear)(n, M->act, M->ea + (size_t)layer * n, h, q, p);
      else
        FN(act_shear)(n, M->act, M->ea + (size_t)layer * n, h, p, q);
    }
  }
  for (int i = 0; i < M->D; i++) e[i] += M->shift[i];
}

/* in[0..D) = f(x, u, h) + delta on every lane, f the nominal step (nominal.h, in double, VBYTES / 8 lanes
 * at a time): x = in[0..D), u = in[D..D+m), h = in[D+m] */
static INLINE void FN(nominal_step)(const FN(Model) * M, vec *in, const vec *delta) {
  typedef CAT2(dvec, ISA) dvec;
  enum { DLANES = VBYTES / 8 };
  const int D = M->D, m = M->m;
  double prm[QUAD_PARAMS];
  for (int i = 0; i < QUAD_PARAMS; i++) prm[i] = (double)M->nominal_params[i];
  for (int l0 = 0; l0 < LANES; l0 += DLANES) {
    dvec x[12], u[4], h = {}, out[12];
    for (int l = 0; l < DLANES; l++) {
      for (int i = 0; i < D; i++) x[i][l] = (double)in[i][l0 + l];
      for (int i = 0; i < m; i++) u[i][l] = (double)in[D + i][l0 + l];
      h[l] = (double)in[D + m][l0 + l];
    }
    CAT2(quad_step, ISA)(prm, x, u, h, out);
    for (int l = 0; l < DLANES; l++)
      for (int i = 0; i < D; i++) in[i][l0 + l] = (REAL)out[i][l] + delta[i][l0 + l];
  }
}

/* scratch layout, in units of LANES-vectors */
static INLINE size_t FN(scratch_vectors)(const FN(Model) * M) {
  const size_t D = M->D, d = M->d, hid = M->hid > M->hhid ? M->hid : M->hhid;
  const size_t rings = (size_t)M->L * (M->meta ? 4 : 2) * M->c * d;
  return 2 * (rings + D) /* rings and state, and their copy (shared context) */ + M->m + 1 /* u, h */
         + D /* e */ + D /* tmp */ + d /* z */ + d /* y */ + 3 * d /* qkv */ + d /* att */ + 2 * d /* ekv */ + hid
         + D /* delta */ + M->c /* sc */;
}

/* Tokens [t_begin, t_end) of rows [0, nrows) of a LANES-block starting at row r0; lanes past nrows repeat
 * row r0 (discarded). With `shared`, x0 holds one row: every row's states. */
static INLINE void FN(run_block)(const FN(Model) * M, int r0, int nrows, int T, int horizon, int t_begin, int t_end,
                                 int shared, const REAL *x0, const REAL *u, const REAL *h, REAL *out, vec *S) {
  const int D = M->D, m = M->m, d = M->d, c = M->c, H = M->H, tokens = T + horizon - 1;
  const int din = D + m + 1, per_block = (M->meta ? 4 : 2) * c * d;
  vec *rings = S;
  vec *in = rings + (size_t)M->L * per_block; /* [x | u | h]: x is updated in place */
  vec *e = in + din, *tmp = e + D, *z = tmp + D, *y = z + d, *qkv = y + d, *att = qkv + 3 * d, *ekv = att + d;
  vec *hidden = ekv + 2 * d;
  vec *delta = hidden + (M->hid > M->hhid ? M->hid : M->hhid);
  vec *sc = delta + D;
  int rows[LANES];
  for (int l = 0; l < LANES; l++) rows[l] = r0 + (l < nrows ? l : 0);
  for (int t = t_begin; t < t_end; t++) {
    /* gather this token's inputs (x from the context while it lasts, then the last prediction) */
    for (int l = 0; l < LANES; l++) {
      const size_t r = (size_t)rows[l];
      if (t < T)
        for (int i = 0; i < D; i++) in[i][l] = x0[((shared ? 0 : r) * T + t) * D + i];
      for (int i = 0; i < m; i++) in[D + i][l] = u[(r * tokens + t) * m + i];
      in[D + m][l] = h[r * tokens + t];
    }
    FN(matvec)(d, din, M->tok_w, M->tok_b, in, z, 0);
    if (M->meta) FN(encode)(M, in, in[D + m], e, tmp);
    const int slot = t % c;
    for (int b = 0; b < M->L; b++) {
      const FN(Block) *B = M->blocks + b;
      vec *ring = rings + (size_t)b * per_block, *sk = ring, *sv = ring + c * d;
      FN(layer_norm)(d, B->ln1_g, B->ln1_b, M->eps, z, y);
      FN(matvec)(3 * d, d, B->qkv, NULL, y, qkv, 0);
      memcpy(sk + (size_t)slot * d, qkv + d, sizeof(vec) * d);
      memcpy(sv + (size_t)slot * d, qkv + 2 * d, sizeof(vec) * d);
      FN(attend)(t, c, d, H, B->sa_rel, qkv, sk, sv, att, sc);
      FN(matvec)(d, d, B->sa_w, B->sa_b, att, z, 1);
      if (M->meta) {
        vec *mk = ring + 2 * c * d, *mv = ring + 3 * c * d;
        FN(matvec)(2 * d, D, B->mkv, B->mkv_b, e, ekv, 0);
        memcpy(mk + (size_t)slot * d, ekv, sizeof(vec) * d);
        memcpy(mv + (size_t)slot * d, ekv + d, sizeof(vec) * d);
        FN(layer_norm)(d, B->ln2_g, B->ln2_b, M->eps, z, y);
        FN(matvec)(d, d, B->mq, NULL, y, qkv, 0);
        FN(attend)(t, c, d, H, B->ma_rel, qkv, mk, mv, att, sc);
        FN(matvec)(d, d, B->ma_w, B->ma_b, att, z, 1);
      }
      FN(layer_norm)(d, B->ln3_g, B->ln3_b, M->eps, z, y);
      FN(matvec)(M->hid, d, B->mlp1_w, B->mlp1_b, y, hidden, 0);
      FN(silu)(M->hid, hidden);
      FN(matvec)(d, M->hid, B->mlp2_w, B->mlp2_b, hidden, z, 1);
    }
    FN(layer_norm)(d, M->lnf_g, M->lnf_b, M->eps, z, y);
    FN(matvec)(M->hhid, d, M->head1_w, M->head1_b, y, hidden, 0);
    FN(silu)(M->hhid, hidden);
    FN(matvec)(D, M->hhid, M->head2_w, M->head2_b, hidden, delta, 0);
    if (M->skip) FN(matvec)(D, din, M->skip_w, M->skip_b, in, delta, 1); /* Δ += the linear skip of x_t, u_t, h_t */
    if (M->nominal == NOMINAL_QUADROTOR) /* x_{t+1} = f(x_t, u_t, h_t) + Δ, the nominal step row by row */
      FN(nominal_step)(M, in, delta);
    else if (M->nominal == NOMINAL_MEAN) /* x_{t+1} = x̄ + Δ */
      for (int i = 0; i < D; i++) in[i] = delta[i] + M->nominal_params[i];
    else
      for (int i = 0; i < D; i++) in[i] += delta[i]; /* x_{t+1} */
    if (t >= T - 1) {
      const int k = t - T + 1;
      for (int l = 0; l < nrows; l++)
        for (int i = 0; i < D; i++) out[((size_t)(r0 + l) * horizon + k) * D + i] = in[i][l];
    }
  }
}

/* The rollout of `B` rows: x0 [B][T][D] observed states (with `shared`: [1][T][D], every row's states, and
 * every row's first T - 1 controls and steps are row 0's), u [B][T+horizon-1][m] and
 * h [B][T+horizon-1] every token's control and step, out [B][horizon][D].
 * `nweights` is the packed length the caller built (checked). 0 on success,
 * -1 bad sizes, -2 out of memory. Not reentrant within one thread (the scratch is per thread). */
/* Scratch kept per thread between calls: freeing and re-allocating it on every call made two threads of
 * one process run 40 % slower than two processes (the allocator returned the pages each time). */
static _Thread_local vec *FN(scratch);
static _Thread_local size_t FN(scratch_size);

static int FN(metasym_rollout)(const int *dims, const REAL *w, long nweights, int B, int T, int horizon, int shared,
                        const REAL *x0, const REAL *u, const REAL *h, REAL *out) {
  if (B < 0 || T < 1 || horizon < 1 || dims[DIM_L] < 1 || dims[DIM_L] > MAX_LAYERS) return -1;
  FN(Model) M;
  FN(Block) blocks[MAX_LAYERS];
  if ((long)FN(unpack)(dims, w, &M, blocks) != nweights || M.d % M.H || M.D % 2 || M.el < 1) return -1;
  const size_t need = FN(scratch_vectors)(&M);
  if (need > FN(scratch_size)) {
    free(FN(scratch));
    FN(scratch) = aligned_alloc(64, sizeof(vec) * need);
    FN(scratch_size) = FN(scratch) ? need : 0;
    if (!FN(scratch)) return -2;
  }
  vec *S = FN(scratch);
  memset(S, 0, sizeof(vec) * need);
  const int tokens = T + horizon - 1, prefix = shared && B > 1 ? T - 1 : 0;
  /* the tokens every row shares (the context but its last control: a controller's candidates start there) are
   * streamed once, for row 0; every block of rows continues from a copy of the rings they leave */
  const size_t state = (size_t)M.L * (M.meta ? 4 : 2) * M.c * M.d + (size_t)M.D;
  vec *copy = S + need - state;
  if (prefix > 0) {
    FN(run_block)(&M, 0, 1, T, horizon, 0, prefix, shared, x0, u, h, out, S);
    memcpy(copy, S, sizeof(vec) * state);
  }
  for (int r0 = 0; r0 < B; r0 += LANES) {
    if (prefix > 0 && r0 > 0) memcpy(S, copy, sizeof(vec) * state);
    FN(run_block)(&M, r0, B - r0 < LANES ? B - r0 : LANES, T, horizon, prefix, tokens, shared, x0, u, h, out, S);
  }
  return 0;
}
#undef CAT2_
#undef CAT2
#undef FN
#undef vec
#undef ivec
#undef REAL
#undef SFX
#undef LANES
#undef SINT
#undef MAGIC
#undef MANT
#undef EBIAS
#undef EXP_LO
#undef EXP_HI
#undef LN2_HI
#undef LN2_LO
#undef POLY
