// samp's CUDA kernels, compiled by NVRTC at start-up (cubin for the device, PTX as fallback).
// No CUDA headers: NVRTC 13 ships none for fp16, so half floats go through two PTX conversions.
//
// Layout: activations are row-major [tokens, features]; a batch is its sequences laid end to end
// (`starts[s] .. starts[s + 1]` are sequence s's tokens), so no kernel ever sees padding.

typedef unsigned short half_t;

__device__ __forceinline__ half_t f2h(float f) {
  unsigned short h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32); every thread gets the total.
__device__ float block_sum(float v, float* scratch) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read from the previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_sum(lane < warps ? scratch[lane] : 0.0f);
}

__device__ float block_max(float v, float* scratch) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  return warp_max(lane < warps ? scratch[lane] : 0.0f);
}

// 0 none, 1 GELU (erf), 2 GELU (tanh), 3 ReLU: the same codes as `Activation` on the host.
__device__ __forceinline__ float activate(float x, int act) {
  if (act == 1) return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
  if (act == 2) return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
  if (act == 3) return fmaxf(x, 0.0f);
  return x;
}

// LayerNorm of one row held in `x` (each thread touches its own columns only).
__device__ void normalize_row(float* x, const float* gamma, const float* beta, float eps, int n,
                              float* scratch) {
  float s = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
  float mean = block_sum(s, scratch) / n;
  float q = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    float d = x[i] - mean;
    q += d * d;
  }
  float inv = rsqrtf(block_sum(q, scratch) / n + eps);
  for (int i = threadIdx.x; i < n; i += blockDim.x) x[i] = (x[i] - mean) * inv * gamma[i] + beta[i];
}

// One block per token: word + position (+ token type) embedding, then LayerNorm.
// Ids and positions were checked on the host.
extern "C" __global__ void embed_layernorm(const unsigned* ids, const unsigned* type_ids,
                                           const unsigned* positions, const float* word,
                                           const float* position, const float* token_type,
                                           int type_vocab, const float* gamma, const float* beta,
                                           float eps, int hidden, float* out) {
  __shared__ float scratch[32];
  int t = blockIdx.x;
  const float* w = word + (size_t)ids[t] * hidden;
  const float* p = position + (size_t)positions[t] * hidden;
  const float* ty = 0;
  if (type_vocab > 0) ty = token_type + (size_t)min(type_ids[t], (unsigned)(type_vocab - 1)) * hidden;
  float* o = out + (size_t)t * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = w[i] + p[i] + (ty ? ty[i] : 0.0f);
  normalize_row(o, gamma, beta, eps, hidden, scratch);
}

// One block per row, in place.
extern "C" __global__ void layernorm(float* x, const float* gamma, const float* beta, float eps,
                                     int hidden) {
  __shared__ float scratch[32];
  normalize_row(x + (size_t)blockIdx.x * hidden, gamma, beta, eps, hidden, scratch);
}

// GEMM input for an FP16 GEMM.
extern "C" __global__ void to_half(const float* x, half_t* y, unsigned long long n) {
  unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
  if (i < n) y[i] = f2h(x[i]);
}

// GEMM input for an INT8 GEMM, one block per row: q = round(x / scale) clamped to ±127. A
// positive `static_scale` is the calibrated scale of the plan; otherwise each row uses its own
// absolute maximum / 127 (dynamic). The row's scale goes to `scales` for the dequantization.
extern "C" __global__ void quantize_rows(const float* x, signed char* q, float* scales, int k,
                                         float static_scale) {
  __shared__ float scratch[32];
  const float* row = x + (size_t)blockIdx.x * k;
  signed char* out = q + (size_t)blockIdx.x * k;
  float scale = static_scale;
  if (!(scale > 0.0f)) {
    float m = 0.0f;
    for (int i = threadIdx.x; i < k; i += blockDim.x) m = fmaxf(m, fabsf(row[i]));
    scale = block_max(m, scratch) / 127.0f;
    if (!(scale > 0.0f) || isinf(scale)) scale = 1.0f;
  }
  float inv = 1.0f / scale;
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    float v = roundf(row[i] * inv);
    v = fminf(fmaxf(v, -127.0f), 127.0f);
    out[i] = (signed char)(v == v ? (int)v : 0);
  }
  if (threadIdx.x == 0) scales[blockIdx.x] = scale;
}

// Epilogue of an FP16 GEMM (FP32 accumulator): y = act(acc + bias) (+ residual).
// `residual` may be `y` itself.
extern "C" __global__ void bias_act_residual(const float* acc, const float* bias,
                                             const float* residual, int act, float* y, int rows,
                                             int n) {
  unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
  if (i >= (unsigned long long)rows * n) return;
  float v = activate(acc[i] + bias[i % n], act);
  if (residual) v += residual[i];
  y[i] = v;
}

// Epilogue of an INT8 GEMM (INT32 accumulator): y = act(acc · wscale[col] · ascale[row] + bias)
// (+ residual).
extern "C" __global__ void dequant_bias_act_residual(const int* acc, const float* wscale,
                                                     const float* ascale, const float* bias,
                                                     const float* residual, int act, float* y,
                                                     int rows, int n) {
  unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
  if (i >= (unsigned long long)rows * n) return;
  int c = i % n, r = i / n;
  float v = activate((float)acc[i] * wscale[c] * ascale[r] + bias[c], act);
  if (residual) v += residual[i];
  y[i] = v;
}

// Attention over packed variable-length sequences (the mask is the sequence boundary: keys
// outside a query's own sequence are never read). `qkv` is [T, 3H] (Q | K | V, head h at columns
// h·d .. h·d + d of each), `ctx` is [T, H]. Grid: (query tiles, heads); tile i covers queries
// tile_q0[i] .. + QT of sequence tile_seq[i]. 128 threads: warp w owns queries w, w + 4, ...
// Keys stream through shared memory KT at a time (one per lane) with an online softmax, so any
// sequence length works. head_dim ≤ 64 (checked on the host).
#define QT 32
#define KT 32
extern "C" __global__ void __launch_bounds__(128)
attention(const float* qkv, float* ctx, const int* starts, const int* tile_seq,
          const int* tile_q0, int hidden, int head_dim, float scale) {
  __shared__ float qs[QT][64];
  __shared__ float ks[KT][65];
  __shared__ float vs[KT][64];
  int seq = tile_seq[blockIdx.x], head = blockIdx.y;
  int s0 = starts[seq], s1 = starts[seq + 1];
  int q0 = s0 + tile_q0[blockIdx.x];
  int nq = min(QT, s1 - q0);
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  size_t stride = 3 * (size_t)hidden;
  int off = head * head_dim;
  for (int i = threadIdx.x; i < QT * head_dim; i += blockDim.x) {
    int r = i / head_dim, d = i % head_dim;
    qs[r][d] = r < nq ? qkv[(q0 + r) * stride + off + d] * scale : 0.0f;
  }
  float m[QT / 4], l[QT / 4], a0[QT / 4], a1[QT / 4];
#pragma unroll
  for (int j = 0; j < QT / 4; j++) {
    m[j] = -1e30f;
    l[j] = 0.0f;
    a0[j] = 0.0f;
    a1[j] = 0.0f;
  }
  for (int k0 = s0; k0 < s1; k0 += KT) {
    int nk = min(KT, s1 - k0);
    __syncthreads();  // the queries are loaded and the previous keys are used up
    for (int i = threadIdx.x; i < KT * head_dim; i += blockDim.x) {
      int r = i / head_dim, d = i % head_dim;
      bool ok = r < nk;
      size_t row = (k0 + r) * stride;
      ks[r][d] = ok ? qkv[row + hidden + off + d] : 0.0f;
      vs[r][d] = ok ? qkv[row + 2 * hidden + off + d] : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < QT / 4; j++) {
      int qi = warp + 4 * j;
      if (qi < nq) {  // uniform across the warp
        float s = -1e30f;
        if (lane < nk) {
          s = 0.0f;
          for (int d = 0; d < head_dim; d++) s += qs[qi][d] * ks[lane][d];
        }
        float mn = fmaxf(m[j], warp_max(s));
        float p = lane < nk ? __expf(s - mn) : 0.0f;
        float corr = __expf(m[j] - mn);
        l[j] = l[j] * corr + warp_sum(p);
        float b0 = a0[j] * corr, b1 = a1[j] * corr;
        for (int kk = 0; kk < nk; kk++) {
          float pk = __shfl_sync(0xffffffffu, p, kk);
          if (lane < head_dim) b0 += pk * vs[kk][lane];
          if (lane + 32 < head_dim) b1 += pk * vs[kk][lane + 32];
        }
        a0[j] = b0;
        a1[j] = b1;
        m[j] = mn;
      }
    }
  }
#pragma unroll
  for (int j = 0; j < QT / 4; j++) {
    int qi = warp + 4 * j;
    if (qi < nq) {
      float inv = 1.0f / l[j];
      float* o = ctx + (size_t)(q0 + qi) * hidden + off;
      if (lane < head_dim) o[lane] = a0[j] * inv;
      if (lane + 32 < head_dim) o[lane + 32] = a1[j] * inv;
    }
  }
}
