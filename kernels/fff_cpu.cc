// Conditional FFF (fast feedforward) inference as an XLA CPU custom call through the typed FFI.
//
// Shape legend: T tokens, H hidden, K trees, N = 2^(D+1) - 1 nodes per tree (heap order), D depth,
// L = D + 1 levels (nodes visited per tree).
//
// Semantics and numerics are those of ufbert_jax.fff_math.conditional (fff_math's docstring is the
// contract): logit z = x . w_in[k, n] + b_in[k, n] accumulated in float32; the token goes to 2n+2 when
// z > 0 (strict; NaN goes left) and to 2n+1 otherwise; GELU(z) (exact, erfc form) is rounded to the
// weights' dtype and multiplies w_out[k, n]; the output accumulates in float32 and is returned in x's
// dtype.
//
// Algorithm (docs/cpu_kernel.md has the measurements behind it). Each tree is walked in two stages so that
// every weight row is streamed once per group of tokens that visits it, instead of once per token:
//   1. top stage: chunks of tokens descend from the root depth first; the tokens at a node form a group
//      that shares one w_in row (register-blocked dot products), then splits stably into its left and
//      right turns, so each half's x rows stay in L2 and then L1 on the way down;
//   2. a counting sort of all T tokens by the subtree root they reached at the split level;
//   3. deep stage: each subtree's tokens descend the same way; the subtree's rows fit in L2, so the deep
//      rows (the bulk of the 2 x N x H weights) come from DRAM about once per call;
//   4. output, fused into the deep stage: the tokens of a group at the last level share their whole path,
//      so y = acts x w_out[path] is a tiny matrix product with each row loaded once per 4 tokens and every
//      y row stored once.
// All stages run on XLA's intra-op thread pool with the calling thread taking part.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// ---------------------------------------------------------------------------------------------------------
// Element types. bfloat16 is the upper half of a float32; the FFI hands it over as raw 16-bit words.

struct Bf16 {
  uint16_t bits;
};

inline float ToFloat(float v) { return v; }

inline float ToFloat(Bf16 v) {
  const uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

template <typename T>
T FromFloat(float v);

template <>
float FromFloat<float>(float v) {
  return v;
}

// Round to nearest even, NaN kept quiet (the rounding of XLA's convert f32 -> bf16).
template <>
Bf16 FromFloat<Bf16>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return Bf16{static_cast<uint16_t>((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return Bf16{static_cast<uint16_t>(u >> 16)};
}

// ---------------------------------------------------------------------------------------------------------
// Exact GELU, vectorisable. libm's erfcf is a scalar call of about 30 ns, which at 12 levels per token was a
// quarter of the whole kernel; these branch-free forms vectorise (-fopenmp-simd -fno-trapping-math).

// e^a for a in float32: Cody-Waite range reduction and Cephes' degree-6 polynomial (about 1 ulp); 0 below
// e^-88, NaN stays NaN.
inline float ExpF32(float a) {
  a = a < -88.0f ? -88.0f : (a > 88.0f ? 88.0f : a);
  float n = std::floor(a * 1.44269504088896341f + 0.5f);  // a / ln 2, rounded
  n = n == n ? n : 0.0f;                                   // keeps the int conversion below defined for NaN
  const float r = a - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// erfc(u) for u >= 0 (Numerical Recipes' erfcc, relative error < 1.2e-7 in exact arithmetic): keeps full
// relative precision in the tail, where 1 - erf(u) would cancel; erfc(inf) = 0.
inline float ErfcNonNegative(float u) {
  const float t = 1.0f / (1.0f + 0.5f * u);
  float p = 0.17087277f;
  p = p * t - 0.82215223f;
  p = p * t + 1.48851587f;
  p = p * t - 1.13520398f;
  p = p * t + 0.27886807f;
  p = p * t - 0.18628806f;
  p = p * t + 0.09678418f;
  p = p * t + 0.37409196f;
  p = p * t + 1.00002368f;
  p = p * t - 1.26551223f;
  return t * ExpF32(p - u * u);
}

// GELU in the form jax.nn.gelu(approximate=False) uses, 0.5 z erfc(-z / sqrt 2), so that the special values
// agree too: GELU(-inf) = NaN, GELU(inf) = inf, GELU(NaN) = NaN.
inline float Gelu(float z) {
  const float u = -z * 0.70710678118654752f;
  const float tail = ErfcNonNegative(std::fabs(u));
  return 0.5f * z * (u >= 0.0f ? tail : 2.0f - tail);
}

// g[i] = GELU(z[i]) for i < m, vectorised.
void GeluInto(const float* z, float* g, int64_t m) {
#pragma omp simd
  for (int64_t i = 0; i < m; ++i) g[i] = Gelu(z[i]);
}

// ---------------------------------------------------------------------------------------------------------
// A float32 SIMD vector of the widest kind this build targets (the compiler flags of the build decide:
// kernels/fff_cpu.py builds this file once per instruction set); loads widen bfloat16 to float32.

#if defined(__AVX512F__)
struct Vec {
  static constexpr int kWidth = 16;
  __m512 v;
  static Vec Zero() { return {_mm512_setzero_ps()}; }
  static Vec Splat(float a) { return {_mm512_set1_ps(a)}; }
  static Vec Load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec Load(const Bf16* p) {
    const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16))};
  }
  static Vec Fma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  Vec operator+(Vec o) const { return {_mm512_add_ps(v, o.v)}; }
  float Sum() const { return _mm512_reduce_add_ps(v); }
  void StoreFloats(float* p) const { _mm512_storeu_ps(p, v); }
  void StreamFloats(float* p) const { _mm512_stream_ps(p, v); }  // p aligned to 64 bytes
  static void StreamFence() { _mm_sfence(); }
};
#elif defined(__AVX2__) && defined(__FMA__)
struct Vec {
  static constexpr int kWidth = 8;
  __m256 v;
  static Vec Zero() { return {_mm256_setzero_ps()}; }
  static Vec Splat(float a) { return {_mm256_set1_ps(a)}; }
  static Vec Load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Vec Load(const Bf16* p) {
    const __m128i half = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(half), 16))};
  }
  static Vec Fma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  Vec operator+(Vec o) const { return {_mm256_add_ps(v, o.v)}; }
  float Sum() const {
    const __m128 quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
    return _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)));
  }
  void StoreFloats(float* p) const { _mm256_storeu_ps(p, v); }
  void StreamFloats(float* p) const { _mm256_stream_ps(p, v); }  // p aligned to 32 bytes
  static void StreamFence() { _mm_sfence(); }
};
#else
// Portable fallback (width 1): the same blocked loops, left to the compiler's auto-vectoriser.
struct Vec {
  static constexpr int kWidth = 1;
  float v;
  static Vec Zero() { return {0.0f}; }
  static Vec Splat(float a) { return {a}; }
  template <typename T>
  static Vec Load(const T* p) {
    return {ToFloat(*p)};
  }
  static Vec Fma(Vec a, Vec b, Vec c) { return {std::fma(a.v, b.v, c.v)}; }
  Vec operator+(Vec o) const { return {v + o.v}; }
  float Sum() const { return v; }
  void StoreFloats(float* p) const { *p = v; }
  void StreamFloats(float* p) const { *p = v; }
  static void StreamFence() {}
};
#endif

constexpr int64_t kW = Vec::kWidth;

template <typename T>
void Store(Vec v, T* p) {
  float lanes[kW];
  v.StoreFloats(lanes);
  for (int64_t i = 0; i < kW; ++i) p[i] = FromFloat<T>(lanes[i]);
}

template <>
void Store<float>(Vec v, float* p) {
  v.StoreFloats(p);
}

// Store of a finished output vector. `stream`: a non-temporal store (float32 only; p aligned to the vector
// width), which writes the line without reading it first: y is written once and not read back here, and
// skipping that read saved about 2 of 27 ms at 16384 tokens (docs/cpu_kernel.md). Non-temporal stores are
// weakly ordered: the writer calls Vec::StreamFence() before its work counts as done.
template <typename T>
void Put(Vec v, T* p, bool stream) {
  if constexpr (std::is_same_v<T, float>) {
    if (stream) {
      v.StreamFloats(p);
      return;
    }
  }
  Store(v, p);
}

// ---------------------------------------------------------------------------------------------------------
// Plain functions: the arithmetic on one weight row.

// Dot products of R token rows with one weight row: out[r] = xs[r] . w, in float32. Loading w once for R
// tokens cuts the loads per FMA to (R + 1) / R (the dot is load-bound), two accumulators per token hide FMA
// latency. Every R sums a token's products in the same order, so a logit does not depend on its block.
template <int R, typename T>
void DotBlock(const T* w, const T* const* xs, int64_t hidden, float* out) {
  Vec acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = Vec::Zero();
  int64_t i = 0;
  for (; i + 2 * kW <= hidden; i += 2 * kW) {
    const Vec w0 = Vec::Load(w + i), w1 = Vec::Load(w + i + kW);
    for (int r = 0; r < R; ++r) {
      acc[r][0] = Vec::Fma(Vec::Load(xs[r] + i), w0, acc[r][0]);
      acc[r][1] = Vec::Fma(Vec::Load(xs[r] + i + kW), w1, acc[r][1]);
    }
  }
  for (; i + kW <= hidden; i += kW) {
    const Vec w0 = Vec::Load(w + i);
    for (int r = 0; r < R; ++r) acc[r][0] = Vec::Fma(Vec::Load(xs[r] + i), w0, acc[r][0]);
  }
  for (int r = 0; r < R; ++r) {
    float sum = (acc[r][0] + acc[r][1]).Sum();
    for (int64_t j = i; j < hidden; ++j) sum += ToFloat(xs[r][j]) * ToFloat(w[j]);
    out[r] = sum;
  }
}

// Output of R tokens that share one tree path of `levels` rows: out[r] (+)= sum_l acts[r][l] * rows[l],
// accumulated in float32 registers and written once. Each row is loaded once for the R tokens, so FMAs
// outnumber loads. Out is y's dtype, or float32 for the K > 1 accumulator (`add`: add to what is there;
// `stream`: see Put).
template <int R, typename T, typename Out>
void OutputBlock(const T* const* rows, const float* const* acts, int64_t levels, int64_t hidden,
                 Out* const* out, bool add, bool stream) {
  int64_t i = 0;
  for (; i + 2 * kW <= hidden; i += 2 * kW) {
    Vec acc[R][2];
    for (int r = 0; r < R; ++r) {
      acc[r][0] = add ? Vec::Load(out[r] + i) : Vec::Zero();
      acc[r][1] = add ? Vec::Load(out[r] + i + kW) : Vec::Zero();
    }
    for (int64_t l = 0; l < levels; ++l) {
      const Vec w0 = Vec::Load(rows[l] + i), w1 = Vec::Load(rows[l] + i + kW);
      for (int r = 0; r < R; ++r) {
        const Vec a = Vec::Splat(acts[r][l]);
        acc[r][0] = Vec::Fma(a, w0, acc[r][0]);
        acc[r][1] = Vec::Fma(a, w1, acc[r][1]);
      }
    }
    for (int r = 0; r < R; ++r) {
      Put(acc[r][0], out[r] + i, stream);
      Put(acc[r][1], out[r] + i + kW, stream);
    }
  }
  for (; i + kW <= hidden; i += kW) {
    for (int r = 0; r < R; ++r) {
      Vec acc = add ? Vec::Load(out[r] + i) : Vec::Zero();
      for (int64_t l = 0; l < levels; ++l) acc = Vec::Fma(Vec::Splat(acts[r][l]), Vec::Load(rows[l] + i), acc);
      Put(acc, out[r] + i, stream);
    }
  }
  for (; i < hidden; ++i) {
    for (int r = 0; r < R; ++r) {
      float acc = add ? ToFloat(out[r][i]) : 0.0f;
      for (int64_t l = 0; l < levels; ++l) acc += acts[r][l] * ToFloat(rows[l][i]);
      out[r][i] = FromFloat<Out>(acc);
    }
  }
}

// Calls block(i, std::integral_constant<int, R>{}) for blocks [i, i + R) that cover [0, m): kMax tokens
// each, then one block of the m % kMax left over. R is a compile-time constant, so the last block is as
// unrolled as the others: groups at the last levels hold about 8 tokens, and a one-token block is a
// latency-bound chain of FMAs.
template <int R, typename Block>
void LastBlock(int64_t i, int64_t rest, const Block& block) {
  if constexpr (R > 0) {
    if (rest == R) {
      block(i, std::integral_constant<int, R>{});
    } else {
      LastBlock<R - 1>(i, rest, block);
    }
  }
}

template <int kMax, typename Block>
void ForEachBlock(int64_t m, const Block& block) {
  int64_t i = 0;
  for (; i + kMax <= m; i += kMax) block(i, std::integral_constant<int, kMax>{});
  LastBlock<kMax - 1>(i, m - i, block);
}

// ---------------------------------------------------------------------------------------------------------
// Work sharing on XLA's intra-op pool.

// State shared between a ParallelFor caller and the pool threads that help it.
struct Job {
  std::atomic<int64_t> next{0};
  int64_t n = 0;
  const std::function<void(int64_t)>* body = nullptr;
  std::mutex mu;
  std::condition_variable idle;
  int64_t active = 0;
  bool closed = false;

  void Work() {
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) (*body)(i);
  }
};

// A pool thread joins the job unless the caller has already closed it (then body may be gone).
void Help(Job& job) {
  {
    std::lock_guard<std::mutex> lock(job.mu);
    if (job.closed) return;
    ++job.active;
  }
  job.Work();
  std::lock_guard<std::mutex> lock(job.mu);
  --job.active;
  job.idle.notify_all();
}

// Runs body(i) for every i in [0, n): the calling thread works through the indices itself, and up to
// `helpers` pool threads join while there is work left. A helper that starts after the caller has
// finished touches only the shared job state (never the caller's stack), so a busy or starved pool can
// delay the call but cannot deadlock it.
void ParallelFor(ffi::ThreadPool& pool, int64_t helpers, int64_t n, const std::function<void(int64_t)>& body) {
  auto job = std::make_shared<Job>();
  job->n = n;
  job->body = &body;
  for (int64_t i = 0; i < std::min(helpers, n - 1); ++i) pool.Schedule([job]() { Help(*job); });
  job->Work();
  std::unique_lock<std::mutex> lock(job->mu);
  job->closed = true;
  job->idle.wait(lock, [&] { return job->active == 0; });
}

// ---------------------------------------------------------------------------------------------------------
// The typed implementation.

// Tokens per top-stage task (they descend from the root together, sharing its rows).
constexpr int64_t kTopChunkTokens = 256;
// Deep-stage task size cap: a subtree with more tokens is split so that shallow trees (no top stage) and
// skewed routings still spread over all threads.
constexpr int64_t kDeepChunkTokens = 512;
// A subtree's w_in rows must fit in this many bytes (L2-resident while its tokens walk it).
constexpr int64_t kSubtreeBytes = 256 * 1024;
// Tokens per task of the bfloat16 conversion of the K > 1 accumulator.
constexpr int64_t kConvertChunkTokens = 256;
// Paths have at most this many levels (N <= 2^30 - 1 is validated).
constexpr int64_t kMaxLevels = 30;

template <typename T, typename TB>
struct Problem {
  const T* x;       // [T, H]
  const T* w_in;    // [K, N, H]
  const TB* b_in;   // [K, N]
  const T* w_out;   // [K, N, H]
  T* y;             // [T, H]
  int64_t tokens, hidden, trees, nodes, levels;

  const T* InRow(int64_t tree, int64_t node) const { return w_in + (tree * nodes + node) * hidden; }
  const T* OutRow(int64_t tree, int64_t node) const { return w_out + (tree * nodes + node) * hidden; }
  float Bias(int64_t tree, int64_t node) const { return ToFloat(b_in[tree * nodes + node]); }
  // Index into the [K, T, L] activation records.
  int64_t Record(int64_t tree, int64_t token, int64_t level) const {
    return (tree * tokens + token) * levels + level;
  }
};

// Logits of the tokens idx[0..m) against one w_in row (+ bias): z [m] float32.
template <typename T, typename TB>
void GroupLogits(const Problem<T, TB>& p, const T* w, float bias, const int32_t* idx, int64_t m, float* z) {
  // Six tokens per row load: 12 accumulators and 2 row vectors take 14 of AVX2's 16 registers; measured in
  // L1/L2 at 1.37 cycles per FMA against 1.53 for four tokens.
  ForEachBlock<6>(m, [&](int64_t i, auto size) {
    constexpr int R = decltype(size)::value;
    const T* xs[R];
    for (int r = 0; r < R; ++r) xs[r] = p.x + idx[i + r] * p.hidden;
    DotBlock<R>(w, xs, p.hidden, z + i);
  });
  for (int64_t j = 0; j < m; ++j) z[j] += bias;
}

// Per-task buffers for Descend: the current group's logits, their GELUs and its parked right turns.
struct Scratch {
  std::vector<float> z;
  std::vector<float> gelu;
  std::vector<int32_t> rights;
};

// Walks tree `tree` depth first from `node` on `level` for the tokens idx[0..m), which all sit there:
// one w_in row serves the whole group, then the group splits stably and in place into its left turns
// (z <= 0 or NaN) and right turns, and each half descends. Halving the group at every level keeps its x
// rows in L2 and then L1 on the way down. Records each token's activation (rounded to the weights' dtype)
// in acts [K, T, L]. After level `last` - 1 the group, whose tokens share the whole path down to `node`,
// goes to at_end(node, idx, m, lefts): idx[0..lefts) turn left there and idx[lefts..m) right.
template <typename T, typename TB, typename AtEnd>
void Descend(const Problem<T, TB>& p, float* acts, int64_t tree, int64_t level, int64_t last, int64_t node,
             int32_t* idx, int64_t m, Scratch& s, const AtEnd& at_end) {
  if (m == 0) return;
  float* z = s.z.data();
  float* gelu = s.gelu.data();
  GroupLogits(p, p.InRow(tree, node), p.Bias(tree, node), idx, m, z);
  GeluInto(z, gelu, m);
  int64_t lefts = 0, num_rights = 0;
  for (int64_t i = 0; i < m; ++i) {
    const int32_t token = idx[i];
    acts[p.Record(tree, token, level)] = ToFloat(FromFloat<T>(gelu[i]));
    if (z[i] > 0.0f) {
      s.rights[num_rights++] = token;
    } else {
      idx[lefts++] = token;
    }
  }
  std::copy(s.rights.begin(), s.rights.begin() + num_rights, idx + lefts);
  if (level + 1 == last) {
    at_end(node, idx, m, lefts);
    return;
  }
  Descend(p, acts, tree, level + 1, last, 2 * node + 1, idx, lefts, s, at_end);
  Descend(p, acts, tree, level + 1, last, 2 * node + 2, idx + lefts, num_rights, s, at_end);
}

// y rows of a group of tokens that share one whole path of tree `tree`, down to `leaf`: rows loaded once
// per block of four tokens.
template <typename T, typename TB, typename Out>
void GroupOutput(const Problem<T, TB>& p, const float* acts, int64_t tree, int64_t leaf, const int32_t* idx,
                 int64_t m, Out* out, bool add, bool stream) {
  const T* rows[kMaxLevels];
  for (int64_t l = p.levels - 1, n = leaf; l >= 0; --l, n = (n - 1) / 2) rows[l] = p.OutRow(tree, n);
  ForEachBlock<4>(m, [&](int64_t i, auto size) {
    constexpr int R = decltype(size)::value;
    const float* token_acts[R];
    Out* token_out[R];
    for (int r = 0; r < R; ++r) {
      token_acts[r] = acts + p.Record(tree, idx[i + r], 0);
      token_out[r] = out + idx[i + r] * p.hidden;
    }
    OutputBlock<R>(rows, token_acts, p.levels, p.hidden, token_out, add, stream);
  });
}

// Levels walked per subtree in the deep stage: the most whose w_in rows fit in kSubtreeBytes.
int64_t DeepLevels(int64_t levels, int64_t hidden, int64_t element_bytes) {
  const int64_t row_bytes = std::max<int64_t>(1, hidden * element_bytes);
  int64_t deep = 1;
  while (deep < levels && ((int64_t{2} << deep) - 1) * row_bytes <= kSubtreeBytes) ++deep;
  return deep;
}

// A deep-stage task: the tokens order[begin, end) walk the subtree rooted at `node`.
struct DeepTask {
  int64_t node, begin, end;
};

// Counting sort of one tree's tokens by the subtree root they reached on level `split` (frontier [T]) into
// order [T]; returns the deep-stage tasks: each subtree's run of order, cut into chunks of at most
// kDeepChunkTokens.
std::vector<DeepTask> SortBySubtree(const int32_t* frontier, int64_t tokens, int64_t split, int32_t* order) {
  const int64_t first_node = (int64_t{1} << split) - 1;
  const int64_t subtrees = int64_t{1} << split;
  std::vector<int64_t> start(subtrees + 1, 0);
  for (int64_t t = 0; t < tokens; ++t) ++start[frontier[t] - first_node + 1];
  for (int64_t s = 0; s < subtrees; ++s) start[s + 1] += start[s];
  std::vector<DeepTask> tasks;
  for (int64_t s = 0; s < subtrees; ++s) {
    for (int64_t b = start[s]; b < start[s + 1]; b += kDeepChunkTokens) {
      tasks.push_back({first_node + s, b, std::min(start[s + 1], b + kDeepChunkTokens)});
    }
  }
  for (int64_t t = 0; t < tokens; ++t) order[start[frontier[t] - first_node]++] = static_cast<int32_t>(t);
  return tasks;
}

// Everything one call shares between its stages.
template <typename T, typename TB>
struct Plan {
  const Problem<T, TB>& p;
  ffi::ThreadPool& pool;
  int64_t helpers;
  int64_t split;               // levels [0, split) form the top stage, [split, L) the deep stage
  std::vector<float> acts;     // [K, T, L] activations
  std::vector<int32_t> frontier;  // [K, T] node reached on level `split`
  std::vector<int32_t> order;     // [K, T] token ids, regrouped by each stage

  Scratch NewScratch(int64_t m) const { return {std::vector<float>(m), std::vector<float>(m), std::vector<int32_t>(m)}; }
};

// Top stage for all trees: chunks of tokens descend from the root to level `split`.
template <typename T, typename TB>
void TopStage(Plan<T, TB>& plan) {
  const Problem<T, TB>& p = plan.p;
  if (plan.split == 0) {
    std::fill(plan.frontier.begin(), plan.frontier.end(), 0);  // every token starts the deep stage at the root
    return;
  }
  const int64_t chunks = (p.tokens + kTopChunkTokens - 1) / kTopChunkTokens;
  ParallelFor(plan.pool, plan.helpers, p.trees * chunks, [&](int64_t task) {
    const int64_t tree = task / chunks, begin = (task % chunks) * kTopChunkTokens;
    const int64_t m = std::min(kTopChunkTokens, p.tokens - begin);
    int32_t* idx = plan.order.data() + tree * p.tokens + begin;
    for (int64_t i = 0; i < m; ++i) idx[i] = static_cast<int32_t>(begin + i);
    Scratch s = plan.NewScratch(m);
    int32_t* frontier = plan.frontier.data() + tree * p.tokens;
    Descend(p, plan.acts.data(), tree, 0, plan.split, /*node=*/0, idx, m, s,
            [&](int64_t node, const int32_t* group, int64_t size, int64_t lefts) {
              for (int64_t i = 0; i < size; ++i) {
                frontier[group[i]] = static_cast<int32_t>(2 * node + (i < lefts ? 1 : 2));
              }
            });
  });
}

// Deep stage for one tree: each subtree's tokens descend to the leaves, then write (or add) their output.
template <typename T, typename TB, typename Out>
void DeepStage(Plan<T, TB>& plan, int64_t tree, Out* out, bool add) {
  const Problem<T, TB>& p = plan.p;
  // Streaming stores (Put) need every row of out aligned to the vector width.
  constexpr int64_t kAlign = kW * sizeof(float);
  const bool stream = std::is_same_v<Out, float> && !add && (p.hidden * sizeof(float)) % kAlign == 0 &&
                      reinterpret_cast<uintptr_t>(out) % kAlign == 0;
  int32_t* order = plan.order.data() + tree * p.tokens;
  const std::vector<DeepTask> tasks =
      SortBySubtree(plan.frontier.data() + tree * p.tokens, p.tokens, plan.split, order);
  ParallelFor(plan.pool, plan.helpers, static_cast<int64_t>(tasks.size()), [&](int64_t i) {
    const DeepTask& task = tasks[i];
    Scratch s = plan.NewScratch(task.end - task.begin);
    Descend(p, plan.acts.data(), tree, plan.split, p.levels, task.node, order + task.begin,
            task.end - task.begin, s, [&](int64_t leaf, const int32_t* group, int64_t size, int64_t) {
              GroupOutput(p, plan.acts.data(), tree, leaf, group, size, out, add, stream);
            });
    Vec::StreamFence();  // this task's y rows are visible before ParallelFor reports it done
  });
}

// Asks the kernel to back the 2 MiB-aligned interior of a large buffer that XLA has just allocated with huge
// pages. A fresh output is mapped on first write; with 4 KiB pages the faults cost about a third of the
// kernel at 16384 tokens (measured, docs/cpu_kernel.md). Only a hint: contents and ownership are unchanged,
// and a failure (THP off, heap memory) just leaves the small pages.
void AdviseHugePages(void* data, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t{1} << 21;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>(bytes)) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// One tree writes y directly; K > 1 trees add up in float32 (in y itself when it is float32) and the sum
// is rounded to y's dtype once, as in the reference.
template <typename T, typename TB>
void FffCpuTyped(const Problem<T, TB>& p, ffi::ThreadPool& pool) {
  Plan<T, TB> plan{p,
                   pool,
                   std::max<int64_t>(0, pool.num_threads() - 1),
                   p.levels - DeepLevels(p.levels, p.hidden, sizeof(T)),
                   std::vector<float>(p.trees * p.tokens * p.levels),
                   std::vector<int32_t>(p.trees * p.tokens),
                   std::vector<int32_t>(p.trees * p.tokens)};
  AdviseHugePages(p.y, p.tokens * p.hidden * static_cast<int64_t>(sizeof(T)));
  TopStage(plan);
  if (p.trees == 1) {
    DeepStage(plan, 0, p.y, /*add=*/false);
    return;
  }
  std::unique_ptr<float[]> scratch;  // [T, H], left uninitialised (tree 0 stores) so the hint below applies
  float* sum = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    sum = p.y;
  } else {
    scratch.reset(new float[p.tokens * p.hidden]);
    sum = scratch.get();
    AdviseHugePages(sum, p.tokens * p.hidden * static_cast<int64_t>(sizeof(float)));
  }
  for (int64_t k = 0; k < p.trees; ++k) DeepStage(plan, k, sum, /*add=*/k > 0);
  if constexpr (!std::is_same_v<T, float>) {
    const int64_t chunks = (p.tokens + kConvertChunkTokens - 1) / kConvertChunkTokens;
    ParallelFor(pool, plan.helpers, chunks, [&](int64_t c) {
      const int64_t begin = c * kConvertChunkTokens * p.hidden;
      const int64_t end = std::min(p.tokens, (c + 1) * kConvertChunkTokens) * p.hidden;
      for (int64_t i = begin; i < end; ++i) p.y[i] = FromFloat<T>(sum[i]);
    });
  }
}

// ---------------------------------------------------------------------------------------------------------
// Validation and dtype dispatch.

std::string Dims(ffi::AnyBuffer::Dimensions dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

std::string DtypeName(ffi::DataType dtype) {
  switch (dtype) {
    case ffi::DataType::F32:
      return "float32";
    case ffi::DataType::BF16:
      return "bfloat16";
    case ffi::DataType::F16:
      return "float16";
    case ffi::DataType::F64:
      return "float64";
    default:
      return "dtype #" + std::to_string(static_cast<int>(dtype));
  }
}

// Checks every shape and dtype before any pointer is touched; the message names the bad value.
ffi::Error Validate(const ffi::AnyBuffer& x, const ffi::AnyBuffer& w_in, const ffi::AnyBuffer& b_in,
                    const ffi::AnyBuffer& w_out, const ffi::AnyBuffer& y) {
  auto bad = [](const std::string& msg) { return ffi::Error::InvalidArgument("fff_cpu: " + msg); };
  if (w_in.dimensions().size() != 3) return bad("w_in must be [K, N, H]; got " + Dims(w_in.dimensions()));
  const int64_t trees = w_in.dimensions()[0], nodes = w_in.dimensions()[1], hidden = w_in.dimensions()[2];
  const std::string knh = Dims(w_in.dimensions());
  if (Dims(w_out.dimensions()) != knh) return bad("w_out must be " + knh + "; got " + Dims(w_out.dimensions()));
  if (b_in.dimensions().size() != 2 || b_in.dimensions()[0] != trees || b_in.dimensions()[1] != nodes) {
    return bad("b_in must be [K, N] = [" + std::to_string(trees) + ", " + std::to_string(nodes) + "]; got " +
               Dims(b_in.dimensions()));
  }
  if (x.dimensions().size() != 2 || x.dimensions()[1] != hidden) {
    return bad("x must be [T, H] with H=" + std::to_string(hidden) + "; got " + Dims(x.dimensions()));
  }
  if (Dims(y.dimensions()) != Dims(x.dimensions())) {
    return bad("y must have x's shape " + Dims(x.dimensions()) + "; got " + Dims(y.dimensions()));
  }
  if (trees < 1) return bad("need at least one tree; got K=" + std::to_string(trees));
  if (nodes < 1 || nodes > (int64_t{1} << 30) || ((nodes + 1) & nodes) != 0) {
    return bad("trees need N = 2^(D+1) - 1 nodes (1, 3, 7, ..., 2^30 - 1); got N=" + std::to_string(nodes));
  }
  if (x.dimensions()[0] > INT32_MAX) return bad("T=" + std::to_string(x.dimensions()[0]) + " exceeds 2^31 - 1");
  const ffi::DataType dtype = x.element_type();
  if (dtype != ffi::DataType::F32 && dtype != ffi::DataType::BF16) {
    return bad("x must be float32 or bfloat16; got " + DtypeName(dtype));
  }
  for (auto [name, buf] : {std::pair{"w_in", &w_in}, {"w_out", &w_out}, {"y", &y}}) {
    if (buf->element_type() != dtype) {
      return bad(std::string(name) + " must have x's dtype " + DtypeName(dtype) + "; got " +
                 DtypeName(buf->element_type()));
    }
  }
  if (b_in.element_type() != ffi::DataType::F32 && b_in.element_type() != dtype) {
    return bad("b_in must be float32 or x's dtype " + DtypeName(dtype) + "; got " +
               DtypeName(b_in.element_type()));
  }
  return ffi::Error::Success();
}

// L = D + 1 for N = 2^(D+1) - 1 (validated).
int64_t Levels(int64_t nodes) {
  int64_t levels = 0;
  while ((int64_t{1} << levels) - 1 < nodes) ++levels;
  return levels;
}

template <typename T, typename TB>
void Run(ffi::ThreadPool& pool, const ffi::AnyBuffer& x, const ffi::AnyBuffer& w_in, const ffi::AnyBuffer& b_in,
         const ffi::AnyBuffer& w_out, ffi::AnyBuffer& y) {
  const auto knh = w_in.dimensions();
  const Problem<T, TB> p{static_cast<const T*>(x.untyped_data()),
                         static_cast<const T*>(w_in.untyped_data()),
                         static_cast<const TB*>(b_in.untyped_data()),
                         static_cast<const T*>(w_out.untyped_data()),
                         static_cast<T*>(y.untyped_data()),
                         x.dimensions()[0],
                         knh[2],
                         knh[0],
                         knh[1],
                         Levels(knh[1])};
  if (p.tokens > 0) FffCpuTyped(p, pool);
}

ffi::Error FffCpuImpl(ffi::ThreadPool pool, ffi::AnyBuffer x, ffi::AnyBuffer w_in, ffi::AnyBuffer b_in,
                      ffi::AnyBuffer w_out, ffi::Result<ffi::AnyBuffer> y) {
  if (ffi::Error error = Validate(x, w_in, b_in, w_out, *y); error.failure()) return error;
  const bool bias_f32 = b_in.element_type() == ffi::DataType::F32;
  if (x.element_type() == ffi::DataType::F32) {
    Run<float, float>(pool, x, w_in, b_in, w_out, *y);
  } else if (bias_f32) {
    Run<Bf16, float>(pool, x, w_in, b_in, w_out, *y);
  } else {
    Run<Bf16, Bf16>(pool, x, w_in, b_in, w_out, *y);
  }
  return ffi::Error::Success();
}

}  // namespace

// The handler symbol, registered from Python as the CPU target "ufbert_fff_cpu".
XLA_FFI_DEFINE_HANDLER_SYMBOL(FffCpu, FffCpuImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()     // XLA's intra-op pool (caller joins in)
                                  .Arg<ffi::AnyBuffer>()      // x [T, H]: float32 or bfloat16
                                  .Arg<ffi::AnyBuffer>()      // w_in [K, N, H]: x's dtype
                                  .Arg<ffi::AnyBuffer>()      // b_in [K, N]: float32 or x's dtype
                                  .Arg<ffi::AnyBuffer>()      // w_out [K, N, H]: x's dtype
                                  .Ret<ffi::AnyBuffer>());    // y [T, H]: x's dtype

// float32 lanes of the SIMD vector this build uses (16 AVX-512, 8 AVX2, 1 portable): lets Python check
// which build it loaded.
extern "C" __attribute__((visibility("default"))) int FffCpuVectorWidth() { return static_cast<int>(kW); }
