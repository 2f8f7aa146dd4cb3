// Binary convolution on packed sign bits (CPU): the inference kernel behind students/packed_conv.py.
//
// Signs are packed along channels, 64 per machine word, one bit per channel (1: positive). A tap of the dot
// product between an activation patch and a filter is then K - 2 popcount(a XOR w) over the words, K the number of
// channels. Exact zeros (torch.sign(0) = 0) are kept with a second bit plane per side, "non-zero": a tap then counts
// popcount(m) - 2 popcount(m AND (a XOR w)) with m = nz_a AND nz_w. Zero padding contributes nothing: taps that
// fall outside the input are skipped, which is exactly what a float convolution of zero-padded +-1 values computes.
//
// The valid taps of an output pixel form a rectangle of the kernel, and for each kernel row the words of its valid
// taps are contiguous both in the packed activation (N, H, W, words) and in the packed filter (O, KH, KW, words), so
// the inner loop streams two contiguous runs of words with no gather. Output channels go 16 at a time against one
// broadcast activation word: two AVX-512 vectors with the vector popcount (VPOPCNTDQ) where the CPU has it, else four
// AVX2 vectors with a table-lookup popcount, else scalar popcounts (ARM, old x86); with AVX-512, output pixels whose
// window lies inside the input go four at a time, sharing each filter load, and eight at a time on 32-bit lanes when
// the input has at most 32 channels (half of each 64-bit word would be empty), filters with exact zeros included.
// A channels-last float input is packed by each thread, row by row, inside the convolution's own pass, and only the
// output rows whose window holds an exact zero take the masked count. The output is written channels-last.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlock = 16;  // output channels per inner block

inline int64_t words_for(int64_t channels) { return (channels + 63) / 64; }

inline uint64_t low_bits(int64_t count) { return count >= 64 ? ~uint64_t(0) : ((uint64_t(1) << count) - 1); }

// The differences of one output pixel against one block of kBlock filters: over `runs` runs of `words` consecutive
// activation words (run r at a + r * a_step, its filter words at ft + r * f_step, kBlock channels contiguous per
// word; the non-zero planes az / fz alike when masked), differ[c] = sum of popcount(m AND (a XOR w)) and, with a
// filter mask, valid[c] = sum of popcount(m), m the mask (all ones without masks). One function with local
// accumulators, so that they stay in registers across the runs.
template <bool kActMask, bool kFiltMask>
inline void count_block(const uint64_t* a, const uint64_t* az, int64_t a_step, const uint64_t* ft, const uint64_t* fz,
                        int64_t f_step, int64_t runs, int64_t words, uint64_t* differ, uint64_t* valid) {
#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
  __m512i total[2], vtotal[2];
  for (int v = 0; v < 2; ++v) total[v] = vtotal[v] = _mm512_setzero_si512();
  for (int64_t r = 0; r < runs; ++r) {
    const uint64_t* ar = a + r * a_step;
    const uint64_t* fr = ft + r * f_step;
    for (int64_t j = 0; j < words; ++j) {
      const __m512i av = _mm512_set1_epi64(static_cast<long long>(ar[j]));
      for (int v = 0; v < 2; ++v) {
        __m512i x = _mm512_xor_si512(av, _mm512_loadu_si512(fr + j * kBlock + 8 * v));
        if (kFiltMask) {
          __m512i m = _mm512_loadu_si512(fz + r * f_step + j * kBlock + 8 * v);
          if (kActMask) m = _mm512_and_si512(m, _mm512_set1_epi64(static_cast<long long>(az[r * a_step + j])));
          x = _mm512_and_si512(x, m);
          vtotal[v] = _mm512_add_epi64(vtotal[v], _mm512_popcnt_epi64(m));
        } else if (kActMask) {
          x = _mm512_and_si512(x, _mm512_set1_epi64(static_cast<long long>(az[r * a_step + j])));
        }
        total[v] = _mm512_add_epi64(total[v], _mm512_popcnt_epi64(x));
      }
    }
  }
  for (int v = 0; v < 2; ++v) {
    _mm512_storeu_si512(differ + 8 * v, total[v]);
    if (kFiltMask) _mm512_storeu_si512(valid + 8 * v, vtotal[v]);
  }
#elif defined(__AVX2__)
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
  // per-byte popcount by nibble lookup (vpshufb): AVX2 has no vector popcount
  const auto popcount_bytes = [&](__m256i v) {
    return _mm256_add_epi8(_mm256_shuffle_epi8(table, _mm256_and_si256(v, low)),
                           _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)));
  };
  __m256i bytes[4], total[4], vbytes[4], vtotal[4];
  for (int v = 0; v < 4; ++v) bytes[v] = total[v] = vbytes[v] = vtotal[v] = zero;
  int pending = 0;
  for (int64_t r = 0; r < runs; ++r) {
    const uint64_t* ar = a + r * a_step;
    const uint64_t* fr = ft + r * f_step;
    for (int64_t j = 0; j < words; ++j) {
      const __m256i av = _mm256_set1_epi64x(static_cast<long long>(ar[j]));
      for (int v = 0; v < 4; ++v) {
        __m256i x = _mm256_xor_si256(av, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(fr + j * kBlock + 4 * v)));
        if (kFiltMask) {
          __m256i m = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(fz + r * f_step + j * kBlock + 4 * v));
          if (kActMask) m = _mm256_and_si256(m, _mm256_set1_epi64x(static_cast<long long>(az[r * a_step + j])));
          x = _mm256_and_si256(x, m);
          vbytes[v] = _mm256_add_epi8(vbytes[v], popcount_bytes(m));
        } else if (kActMask) {
          x = _mm256_and_si256(x, _mm256_set1_epi64x(static_cast<long long>(az[r * a_step + j])));
        }
        bytes[v] = _mm256_add_epi8(bytes[v], popcount_bytes(x));
      }
      if (++pending == 31) {  // byte counters hold at most 31 words x 8 bits = 248
        for (int v = 0; v < 4; ++v) {
          total[v] = _mm256_add_epi64(total[v], _mm256_sad_epu8(bytes[v], zero));
          bytes[v] = zero;
          if (kFiltMask) {
            vtotal[v] = _mm256_add_epi64(vtotal[v], _mm256_sad_epu8(vbytes[v], zero));
            vbytes[v] = zero;
          }
        }
        pending = 0;
      }
    }
  }
  for (int v = 0; v < 4; ++v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(differ + 4 * v),
                        _mm256_add_epi64(total[v], _mm256_sad_epu8(bytes[v], zero)));
    if (kFiltMask)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(valid + 4 * v),
                          _mm256_add_epi64(vtotal[v], _mm256_sad_epu8(vbytes[v], zero)));
  }
#else
  for (int64_t c = 0; c < kBlock; ++c) differ[c] = valid[c] = 0;
  for (int64_t r = 0; r < runs; ++r) {
    for (int64_t j = 0; j < words; ++j) {
      const uint64_t aw = a[r * a_step + j];
      const uint64_t am = kActMask ? az[r * a_step + j] : ~uint64_t(0);
      for (int64_t c = 0; c < kBlock; ++c) {
        const uint64_t m = kFiltMask ? am & fz[r * f_step + j * kBlock + c] : am;
        if (kFiltMask) valid[c] += __builtin_popcountll(m);
        differ[c] += __builtin_popcountll(m & (aw ^ ft[r * f_step + j * kBlock + c]));
      }
    }
  }
#endif
}

// Packed filters (O, KH, KW, words) -> (blocks, KH, KW, words, kBlock): kBlock output channels contiguous per word,
// the layout the inner loop streams; channels past O are zero. Done once per conv, when its weights are packed.
torch::Tensor block_filters(const torch::Tensor& filt) {
  TORCH_CHECK(filt.dim() == 4 && filt.is_contiguous() && filt.scalar_type() == torch::kLong,
              "block_filters: expects contiguous packed filters (O, KH, KW, words)");
  const int64_t o = filt.size(0), row = filt.size(1) * filt.size(2) * filt.size(3);
  const int64_t blocks = (o + kBlock - 1) / kBlock;
  auto out = torch::zeros({blocks, filt.size(1), filt.size(2), filt.size(3), kBlock}, torch::kLong);
  const auto* f = reinterpret_cast<const uint64_t*>(filt.data_ptr<int64_t>());
  auto* ft = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  for (int64_t oc = 0; oc < o; ++oc)
    for (int64_t j = 0; j < row; ++j) ft[(oc / kBlock) * row * kBlock + j * kBlock + oc % kBlock] = f[oc * row + j];
  return out;
}

// A channels-last float map read by the epilogue (or a channel slice of one): channels contiguous, pixels, rows and
// images at its own strides (in floats); null data: none.
struct Map {
  const float* data = nullptr;
  int64_t pixel = 0, row = 0, image = 0;
  const float* at(int64_t b, int64_t y) const { return data ? data + b * image + y * row : nullptr; }
};

// What a binarized unit does to the conv's output, applied to each output row while it is still in cache instead of
// in separate passes over memory: [+ residual] -> RPReLU (+ shift_in, PReLU slope, + shift_out) -> [+ residual] ->
// [+ a per-channel addend (the res-block's time embedding)] -> [+ a map (the res-block's input, or the other conv
// of CP-Down or of a binarized CS-Fusion)], each step one float rounding in the order torch computes them unfused
// (built with -ffp-contract=off, so no step merges into an FMA). The per-channel tables have one row per sample or
// one row for all (row_step 0).
struct Epilogue {
  const float* shift_in = nullptr;  // null: no activation
  const float* slope = nullptr;
  const float* shift_out = nullptr;
  int64_t row_step = 0;
  const float* channel_add = nullptr;  // null: none
  int64_t add_row_step = 0;
  Map residual;
  bool residual_first = false;  // added before the activation (ReActNet) or after it (BI-DiffSR, BBCU)
  Map addend;
  bool any() const { return shift_in || residual.data || channel_add || addend.data; }
};

template <bool kAct, int kResidual, bool kAdd, bool kAddend>  // kResidual: 0 none, 1 before the activation, 2 after
void finish_row(float* __restrict__ out, const float* __restrict__ res, int64_t res_step,
                const float* __restrict__ shift_in, const float* __restrict__ slope,
                const float* __restrict__ shift_out, const float* __restrict__ add, const float* __restrict__ addend,
                int64_t addend_step, int64_t pixels, int64_t o) {
  for (int64_t p = 0; p < pixels; ++p) {
    float* v = out + p * o;
    const float* r = kResidual ? res + p * res_step : nullptr;
    const float* m = kAddend ? addend + p * addend_step : nullptr;
    for (int64_t c = 0; c < o; ++c) {
      float y = v[c];
      if (kResidual == 1) y = y + r[c];
      if (kAct) {
        y = y + shift_in[c];
        y = y > 0.0f ? y : y * slope[c];
        y = y + shift_out[c];
      }
      if (kResidual == 2) y = y + r[c];
      if (kAdd) y = y + add[c];
      if (kAddend) y = y + m[c];
      v[c] = y;
    }
  }
}

// finish_row for the steps this epilogue has: one instantiation per combination, so no test runs per value.
template <bool kAct, int kResidual>
void finish_with(const Epilogue& e, int64_t b, int64_t oy, const float* si, const float* sl, const float* so,
                 float* out, int64_t wo, int64_t o) {
  const float* res = e.residual.at(b, oy);
  const float* add = e.channel_add ? e.channel_add + b * e.add_row_step : nullptr;
  const float* addend = e.addend.at(b, oy);
  const int64_t rs = e.residual.pixel, ms = e.addend.pixel;
  if (add && addend) finish_row<kAct, kResidual, true, true>(out, res, rs, si, sl, so, add, addend, ms, wo, o);
  else if (add) finish_row<kAct, kResidual, true, false>(out, res, rs, si, sl, so, add, addend, ms, wo, o);
  else if (addend) finish_row<kAct, kResidual, false, true>(out, res, rs, si, sl, so, add, addend, ms, wo, o);
  else finish_row<kAct, kResidual, false, false>(out, res, rs, si, sl, so, add, addend, ms, wo, o);
}

void finish(const Epilogue& e, float* out, int64_t b, int64_t oy, int64_t ho, int64_t wo, int64_t o) {
  float* row_out = out + (b * ho + oy) * wo * o;
  const int64_t row = b * e.row_step;
  const float *si = e.shift_in ? e.shift_in + row : nullptr, *sl = e.slope ? e.slope + row : nullptr,
              *so = e.shift_out ? e.shift_out + row : nullptr;
  const int kind = e.residual.data ? (e.residual_first ? 1 : 2) : 0;
  if (si) {
    if (kind == 0) finish_with<true, 0>(e, b, oy, si, sl, so, row_out, wo, o);
    else if (kind == 1) finish_with<true, 1>(e, b, oy, si, sl, so, row_out, wo, o);
    else finish_with<true, 2>(e, b, oy, si, sl, so, row_out, wo, o);
  } else if (kind != 0) {  // without an activation, before and after are the same
    finish_with<false, 2>(e, b, oy, si, sl, so, row_out, wo, o);
  } else {
    finish_with<false, 0>(e, b, oy, si, sl, so, row_out, wo, o);
  }
}

#if defined(__AVX512F__) && defined(__AVX512VPOPCNTDQ__)
#define BIDISTILL_PIXEL_GROUPS 1
constexpr int64_t kPixels = 4;  // output pixels that share each load of a filter block (unmasked, all taps inside)

// count_block for kPixels output pixels at once, activations without zeros: pixel p's runs start p * pixel_step words
// after a, and differ[p * kBlock + c] receives its counts. Each filter vector is loaded once for all of them: a filter
// block of a wide layer (294 KB at 512 channels) streams from L2 for every pixel otherwise, which bounds the one-pixel
// loop. Filters with exact zeros (kFiltMask) mask each difference with their non-zero plane fz (the layout of ft);
// how many positions count is then the filters' own, the same for every pixel (`Conv::valid_rows`).
template <bool kFiltMask>
inline void count_pixels(const uint64_t* a, int64_t pixel_step, int64_t a_step, const uint64_t* ft, const uint64_t* fz,
                         int64_t f_step, int64_t runs, int64_t words, uint64_t* differ) {
  __m512i total[kPixels][2];
  for (int p = 0; p < kPixels; ++p) total[p][0] = total[p][1] = _mm512_setzero_si512();
  for (int64_t r = 0; r < runs; ++r) {
    const uint64_t* ar = a + r * a_step;
    const uint64_t* fr = ft + r * f_step;
    for (int64_t j = 0; j < words; ++j) {
      const __m512i f0 = _mm512_loadu_si512(fr + j * kBlock), f1 = _mm512_loadu_si512(fr + j * kBlock + 8);
      __m512i m0 = f0, m1 = f1;
      if (kFiltMask) {
        m0 = _mm512_loadu_si512(fz + r * f_step + j * kBlock);
        m1 = _mm512_loadu_si512(fz + r * f_step + j * kBlock + 8);
      }
      for (int p = 0; p < kPixels; ++p) {
        const __m512i av = _mm512_set1_epi64(static_cast<long long>(ar[p * pixel_step + j]));
        __m512i x0 = _mm512_xor_si512(av, f0), x1 = _mm512_xor_si512(av, f1);
        if (kFiltMask) {
          x0 = _mm512_and_si512(x0, m0);
          x1 = _mm512_and_si512(x1, m1);
        }
        total[p][0] = _mm512_add_epi64(total[p][0], _mm512_popcnt_epi64(x0));
        total[p][1] = _mm512_add_epi64(total[p][1], _mm512_popcnt_epi64(x1));
      }
    }
  }
  for (int p = 0; p < kPixels; ++p) {
    _mm512_storeu_si512(differ + p * kBlock, total[p][0]);
    _mm512_storeu_si512(differ + p * kBlock + 8, total[p][1]);
  }
}
constexpr int64_t kPixels32 = 8;  // the same for layers of at most 32 input channels, on 32-bit words

// count_pixels for inputs of at most 32 channels, whose 64-bit words are half empty: each tap's word is one 32-bit
// lane, so a vector holds a whole block of 16 output channels and does twice the work of the 64-bit path per
// instruction. f32 holds the block's filter taps as 16 32-bit lanes each (runs at f32 + r * f_step, tap t at t * 16),
// m32 their non-zero plane alike (kFiltMask).
template <bool kFiltMask>
inline void count_pixels32(const uint64_t* a, int64_t pixel_step, int64_t a_step, const uint32_t* f32,
                           const uint32_t* m32, int64_t f_step, int64_t runs, int64_t taps, uint64_t* differ) {
  __m512i total[kPixels32];
  for (int p = 0; p < kPixels32; ++p) total[p] = _mm512_setzero_si512();
  for (int64_t r = 0; r < runs; ++r) {
    const uint64_t* ar = a + r * a_step;
    for (int64_t t = 0; t < taps; ++t) {
      const __m512i f = _mm512_loadu_si512(f32 + r * f_step + t * kBlock);
      const __m512i m = kFiltMask ? _mm512_loadu_si512(m32 + r * f_step + t * kBlock) : f;
      for (int p = 0; p < kPixels32; ++p) {
        const __m512i av = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(ar[p * pixel_step + t])));
        __m512i x = _mm512_xor_si512(av, f);
        if (kFiltMask) x = _mm512_and_si512(x, m);
        total[p] = _mm512_add_epi32(total[p], _mm512_popcnt_epi32(x));
      }
    }
  }
  for (int p = 0; p < kPixels32; ++p) {  // widened to the 64-bit counts write_block reads
    _mm512_storeu_si512(differ + p * kBlock, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(total[p])));
    _mm512_storeu_si512(differ + p * kBlock + 8, _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(total[p], 1)));
  }
}
#else
#define BIDISTILL_PIXEL_GROUPS 0
#endif

// One output pixel's block of channels from its counts: scale * (count - 2 differ) + bias, count the valid (masked)
// positions per channel or `unmasked` for all.
template <bool kFiltMask>
inline void write_block(float* dst, const uint64_t* differ, const uint64_t* valid, int64_t unmasked,
                        const float* scale, const float* bias, int64_t stop) {
  for (int64_t c = 0; c < stop; ++c) {
    const int64_t count = kFiltMask ? static_cast<int64_t>(valid[c]) : unmasked;
    const float dot = static_cast<float>(count - 2 * static_cast<int64_t>(differ[c]));
    float v = dot * scale[c];
    if (bias) v = v + bias[c];
    dst[c] = v;
  }
}

// A per-channel float32 table with one row per sample or one row for all: its data and row step (0 or C).
const float* table_rows(const c10::optional<torch::Tensor>& table, int64_t n, int64_t c, const char* name,
                        int64_t* row_step) {
  if (!table.has_value() || !table->defined()) return nullptr;
  TORCH_CHECK(table->scalar_type() == torch::kFloat && table->is_contiguous() && table->dim() == 2 &&
                  table->size(1) == c && (table->size(0) == 1 || table->size(0) == n),
              name, ": expects a contiguous float32 (1 or N, C) table");
  *row_step = table->size(0) == 1 ? 0 : c;
  return table->data_ptr<float>();
}

// The sign bits of `count` (<= 64) consecutive floats plus their shifts (none when null): bit j of *positive is
// x_j + shift_j > 0, of *nonzero x_j + shift_j != 0 (NaN counts as non-zero and not positive, as in the scalar
// comparisons). Sixteen (AVX-512) or eight (AVX2) channels per compare.
inline void sign_word(const float* x, const float* shift, int64_t count, uint64_t* positive, uint64_t* nonzero) {
  uint64_t p = 0, m = 0;
  int64_t j = 0;
#if defined(__AVX512F__)
  const __m512 zero = _mm512_setzero_ps();
  for (; j < count; j += 16) {
    const __mmask16 lanes = count - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (count - j)) - 1);
    __m512 v = _mm512_maskz_loadu_ps(lanes, x + j);
    if (shift) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(lanes, shift + j));
    p |= static_cast<uint64_t>(_mm512_mask_cmp_ps_mask(lanes, v, zero, _CMP_GT_OQ)) << j;
    m |= static_cast<uint64_t>(_mm512_mask_cmp_ps_mask(lanes, v, zero, _CMP_NEQ_UQ)) << j;
  }
#elif defined(__AVX2__)
  const __m256 zero = _mm256_setzero_ps();
  for (; j + 8 <= count; j += 8) {
    __m256 v = _mm256_loadu_ps(x + j);
    if (shift) v = _mm256_add_ps(v, _mm256_loadu_ps(shift + j));
    p |= static_cast<uint64_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_GT_OQ))) << j;
    m |= static_cast<uint64_t>(_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_NEQ_UQ))) << j;
  }
#endif
  for (; j < count; ++j) {
    const float v = shift ? x[j] + shift[j] : x[j];
    p |= static_cast<uint64_t>(v > 0.0f) << j;
    m |= static_cast<uint64_t>(v != 0.0f) << j;
  }
  *positive = p;
  *nonzero = m;
}

// Channels contiguous within each pixel (stride 1), pixels at any stride: channels-last tensors and the channel
// slices of one (x[:, :C/2] of CP-Down), read in place instead of copied.
bool pixels_of_channels(const torch::Tensor& t) {
  return t.dim() == 4 && (t.size(1) == 1 || t.stride(1) == 1) && t.stride(3) >= t.size(1) &&
         t.stride(2) >= t.stride(3) * t.size(3) && t.stride(0) >= t.stride(2) * t.size(2) && !t.is_contiguous();
}

// One image row of a channels-last float input (pixels `pixel_step` floats apart, channels contiguous), plus the
// per-channel shift when given -> its packed words (w, words) and non-zero words; true when the row holds an exact
// zero (a non-zero bit missing).
bool pack_row(const float* line, int64_t pixel_step, const float* shift, int64_t c, int64_t w, int64_t wd,
              uint64_t* bits, uint64_t* nonzero) {
  bool zero = false;
  for (int64_t px = 0; px < w; ++px) {
    for (int64_t k = 0; k < wd; ++k) {
      const int64_t stop = std::min<int64_t>(64, c - 64 * k);
      uint64_t p = 0, m = 0;
      sign_word(line + px * pixel_step + 64 * k, shift ? shift + 64 * k : nullptr, stop, &p, &m);
      bits[px * wd + k] = p;
      nonzero[px * wd + k] = m;
      zero |= m != low_bits(stop);
    }
  }
  return zero;
}

// NCHW float (any memory format), with an optional per-channel shift added first (the TaR shift, a (1 or N, C)
// table) -> (bits, nonzero bits or an empty tensor when there is no exact zero), both (N, H, W, words) int64: the
// signs of x + shift, the same float sums torch makes. A channels-last input (or a channel slice of one) is read
// pixel by pixel; a contiguous one channel plane by plane, row by row, setting one bit per pixel, so neither needs a
// copy.
std::vector<torch::Tensor> pack_signs(const torch::Tensor& input, const c10::optional<torch::Tensor>& shift) {
  TORCH_CHECK(input.dim() == 4, "pack_signs: expects an (N, C, H, W) tensor");
  TORCH_CHECK(input.scalar_type() == torch::kFloat, "pack_signs: expects float32");
  int64_t shift_step = 0;
  const float* shifts = table_rows(shift, input.size(0), input.size(1), "pack_signs shift", &shift_step);
  const bool channels_last = pixels_of_channels(input);
  const auto x = channels_last ? input : input.contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), wd = words_for(c);
  // channels-last strides (pixel, row, image) in floats; only read on that path
  const int64_t pixel_step = x.stride(3), row_step = x.stride(2), image_step = x.stride(0);
  auto bits = torch::empty({n, h, w, wd}, torch::kLong);
  auto nonzero = torch::empty({n, h, w, wd}, torch::kLong);
  const float* src = x.data_ptr<float>();
  auto* b = reinterpret_cast<uint64_t*>(bits.data_ptr<int64_t>());
  auto* z = reinterpret_cast<uint64_t*>(nonzero.data_ptr<int64_t>());
  std::vector<int> any_zero(at::get_num_threads() + 1, 0);
  at::parallel_for(0, n * h, 1, [&](int64_t begin, int64_t end) {
    int found = 0;
    constexpr int64_t kChunk = 64;  // pixels whose words are built in registers / L1 at a time
    uint64_t pos[kChunk], nz[kChunk];
    for (int64_t job = begin; job < end; ++job) {
      const int64_t img = job / h, y = job % h;
      uint64_t* brow = b + (img * h + y) * w * wd;
      uint64_t* zrow = z + (img * h + y) * w * wd;
      if (channels_last) {
        const float* sh = shifts ? shifts + img * shift_step : nullptr;
        found |= pack_row(src + img * image_step + y * row_step, pixel_step, sh, c, w, wd, brow, zrow);
        continue;
      }
      for (int64_t k = 0; k < wd; ++k) {
        const int64_t stop = std::min<int64_t>(64, c - 64 * k);
        const uint64_t full = low_bits(stop);
        for (int64_t px0 = 0; px0 < w; px0 += kChunk) {
          const int64_t count = std::min<int64_t>(kChunk, w - px0);
          for (int64_t px = 0; px < count; ++px) pos[px] = nz[px] = 0;
          for (int64_t j = 0; j < stop; ++j) {
            const float* v = src + ((img * c + 64 * k + j) * h + y) * w + px0;
            const float sh = shifts ? shifts[img * shift_step + 64 * k + j] : 0.0f;
            for (int64_t px = 0; px < count; ++px) {
              // adding 0.0f when there is no shift leaves every value's sign as it is (-0.0f + 0.0f is +0: a zero)
              const float u = v[px] + sh;
              pos[px] |= static_cast<uint64_t>(u > 0.0f) << j;
              nz[px] |= static_cast<uint64_t>(u != 0.0f) << j;
            }
          }
          for (int64_t px = 0; px < count; ++px) {
            brow[(px0 + px) * wd + k] = pos[px];
            zrow[(px0 + px) * wd + k] = nz[px];
            found |= nz[px] != full;
          }
        }
      }
    }
    if (found) any_zero[at::get_thread_num()] = 1;
  });
  for (int f : any_zero) {
    if (f) return {bits, nonzero};
  }
  return {bits, torch::Tensor()};
}

// The shape of one convolution and what it reads and writes, shared by the row function and its driver.
struct Conv {
  const uint64_t* ft;   // filters in block_filters layout
  const uint64_t* fz;   // their non-zero plane, or null
  const uint32_t* f32;  // the filters' low halves for inputs of at most 32 channels (the 8-pixel path), or null
  const uint32_t* m32;  // those of their non-zero plane, or null
  // with a non-zero plane: per kernel row and output channel, the positions its taps count ((KH, blocks * kBlock))
  const uint64_t* valid_rows;
  const float* scale;
  const float* bias;    // or null
  float* out;           // (N, Ho, Wo, O)
  int64_t h, w, wd, o, kh, kw, channels, stride, padding, ho, wo;
};

// Where the packed activation rows come from. A channels-last float input (x set) is packed by each thread, row by
// row, just before its convolution reads the row (the input is read once, in the same pass over memory as the
// convolution, with the TaR shift added), and only output rows whose window holds an exact zero take the masked path;
// other inputs come packed, with one non-zero plane for all rows or none.
struct Source {
  const float* x = nullptr;
  int64_t pixel_step = 0, row_step = 0, image_step = 0;
  const float* shift = nullptr;
  int64_t shift_step = 0;
  const uint64_t* bits = nullptr;  // (N, H, W, words) when packed beforehand
  const uint64_t* nonzero = nullptr;
};

// The float input row that the next packing reads, fetched into cache a slice per output pixel while this row's
// convolution computes, so that reading it overlaps computing instead of following it.
struct Prefetch {
  const float* row = nullptr;  // null: nothing to fetch
  int64_t floats = 0;          // the row's extent in floats
  inline void fetch(int64_t ox, int64_t wo) const {
    if (row == nullptr) return;
    const int64_t from = floats * ox / wo, to = floats * (ox + 1) / wo;
    for (int64_t f = from - from % 16; f < to; f += 16) __builtin_prefetch(row + f, 0, 3);
  }
};

// Per-thread scratch of the row function.
struct Counts {
  std::vector<uint64_t> window;  // filters with zeros: the positions each output channel counts in this row's window

  alignas(64) uint64_t differ[kBlock];
  alignas(64) uint64_t valid[kBlock];
#if BIDISTILL_PIXEL_GROUPS
  alignas(64) uint64_t pixels[kPixels32 * kBlock];
#endif
};

// Output row oy of image b. `a` / `az` hold the packed input rows from `first_row` on (az null without a mask).
template <bool kActMask, bool kFiltMask>
void convolve_row(const Conv& cv, const uint64_t* a, const uint64_t* az, int64_t first_row, int64_t b, int64_t oy,
                  const Prefetch& next, Counts& counts) {
  const int64_t h = cv.h, w = cv.w, wd = cv.wd, o = cv.o, kh = cv.kh, kw = cv.kw, stride = cv.stride;
  const int64_t row = kh * kw * wd, blocks = (o + kBlock - 1) / kBlock;
  // the columns whose kernel window lies inside the input: [inner_begin, inner_end)
  const int64_t inner_begin = std::min<int64_t>(cv.wo, (cv.padding + stride - 1) / stride);
  const int64_t inner_end =
      std::max<int64_t>(inner_begin, std::min<int64_t>(cv.wo, (w - kw + cv.padding) / stride + 1));
  const int64_t y0 = oy * stride - cv.padding;
  const int64_t ky0 = std::max<int64_t>(0, -y0), ky1 = std::min<int64_t>(kh, h - y0);
  const int64_t runs = std::max<int64_t>(0, ky1 - ky0);
  const int64_t top = (y0 + ky0 - first_row) * w;  // the first input row read, in pixels from a
  if (kFiltMask && !kActMask) {  // inside columns count the filters' own non-zero positions over the rows read
    counts.window.assign(blocks * kBlock, 0);
    for (int64_t ky = ky0; ky < ky0 + runs; ++ky)
      for (int64_t c = 0; c < blocks * kBlock; ++c) counts.window[c] += cv.valid_rows[ky * blocks * kBlock + c];
  }
#if BIDISTILL_PIXEL_GROUPS
  const int64_t group = cv.f32 ? kPixels32 : kPixels;  // output pixels per pass over a filter block
#endif
  for (int64_t ox = 0; ox < cv.wo;) {
    const int64_t x0 = ox * stride - cv.padding;
    float* px = cv.out + ((b * cv.ho + oy) * cv.wo + ox) * o;
    next.fetch(ox, cv.wo);
#if BIDISTILL_PIXEL_GROUPS
    if (!kActMask && ox >= inner_begin && ox + group <= inner_end) {
      const int64_t src = (top + x0) * wd, unmasked = runs * kw * cv.channels;
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t fsrc = (blk * row + ky0 * kw * wd) * kBlock, f32src = (blk * kh + ky0) * kw * kBlock;
        if (cv.f32)
          count_pixels32<kFiltMask>(a + src, stride, w, cv.f32 + f32src, kFiltMask ? cv.m32 + f32src : nullptr,
                                    kw * kBlock, runs, kw, counts.pixels);
        else
          count_pixels<kFiltMask>(a + src, stride * wd, w * wd, cv.ft + fsrc, kFiltMask ? cv.fz + fsrc : nullptr,
                                  kw * wd * kBlock, runs, kw * wd, counts.pixels);
        const int64_t stop = std::min<int64_t>(kBlock, o - blk * kBlock);
        for (int64_t p = 0; p < group; ++p)
          write_block<kFiltMask>(px + p * o + blk * kBlock, counts.pixels + p * kBlock,
                                 kFiltMask ? counts.window.data() + blk * kBlock : nullptr, unmasked,
                                 cv.scale + blk * kBlock, cv.bias ? cv.bias + blk * kBlock : nullptr, stop);
      }
      ox += group;
      continue;
    }
#endif
    const int64_t kx0 = std::max<int64_t>(0, -x0), kx1 = std::min<int64_t>(kw, w - x0);
    const int64_t run_words = std::max<int64_t>(0, kx1 - kx0) * wd;
    const int64_t src = (top + x0 + kx0) * wd;
    // K per valid tap, times the valid taps: what the dot product counts when nothing is masked
    int64_t unmasked = runs * (run_words / wd) * cv.channels;
    if (kActMask && !kFiltMask) {
      int64_t act_valid = 0;
      for (int64_t r = 0; r < runs; ++r)
        for (int64_t j = 0; j < run_words; ++j) act_valid += __builtin_popcountll(az[src + r * w * wd + j]);
      unmasked = act_valid;
    }
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t fsrc = (blk * row + (ky0 * kw + kx0) * wd) * kBlock;
      count_block<kActMask, kFiltMask>(a + src, kActMask ? az + src : nullptr, w * wd, cv.ft + fsrc,
                                       kFiltMask ? cv.fz + fsrc : nullptr, kw * wd * kBlock, runs, run_words,
                                       counts.differ, counts.valid);
      write_block<kFiltMask>(px + blk * kBlock, counts.differ, counts.valid, unmasked, cv.scale + blk * kBlock,
                             cv.bias ? cv.bias + blk * kBlock : nullptr, std::min<int64_t>(kBlock, o - blk * kBlock));
    }
    ++ox;
  }
}

template <bool kFiltMask>
void convolve_row_masked_or_not(bool masked, const Conv& cv, const uint64_t* a, const uint64_t* az,
                                int64_t first_row, int64_t b, int64_t oy, const Prefetch& next, Counts& counts) {
  if (masked) convolve_row<true, kFiltMask>(cv, a, az, first_row, b, oy, next, counts);
  else convolve_row<false, kFiltMask>(cv, a, nullptr, first_row, b, oy, next, counts);
}

// Every output row, in parallel; each thread's rows are consecutive, so with a float source it packs the input rows
// they read once (plus a kernel's height at the edges of its share), into a buffer of its own.
void convolve(const Conv& cv, const Source& in, const Epilogue& epilogue, int64_t n) {
  const bool fused = epilogue.any();
  const int64_t h = cv.h, w = cv.w, wd = cv.wd, plane = h * w * wd;
  at::parallel_for(0, n * cv.ho, 1, [&](int64_t begin, int64_t end) {
    Counts counts;
    std::vector<uint64_t> bits, nonzero;  // packed rows [first, packed) of image `image`
    std::vector<char> zero_rows;
    int64_t image = -1, first = 0, packed = 0, last_row = 0;
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / cv.ho, oy = job % cv.ho;
      const int64_t y0 = oy * cv.stride - cv.padding;
      const int64_t lo = std::max<int64_t>(0, y0), hi = std::min<int64_t>(h, y0 + cv.kh);  // the rows it reads
      if (in.x == nullptr) {
        const bool masked = in.nonzero != nullptr;
        const uint64_t* az = masked ? in.nonzero + b * plane : nullptr;
        if (cv.fz) convolve_row_masked_or_not<true>(masked, cv, in.bits + b * plane, az, 0, b, oy, {}, counts);
        else convolve_row_masked_or_not<false>(masked, cv, in.bits + b * plane, az, 0, b, oy, {}, counts);
      } else {
        if (b != image) {  // this share's first row of an image: room for every row its rows of that image read
          const int64_t last_oy = std::min<int64_t>(end - 1, (b + 1) * cv.ho - 1) % cv.ho;
          last_row = std::min<int64_t>(h, last_oy * cv.stride - cv.padding + cv.kh);
          image = b;
          first = packed = lo;
          bits.resize(std::max<int64_t>(1, last_row - first) * w * wd);
          nonzero.resize(bits.size());
          zero_rows.assign(std::max<int64_t>(1, last_row - first), 0);
        }
        for (; packed < hi; ++packed) {
          const int64_t at = (packed - first) * w * wd;
          zero_rows[packed - first] = pack_row(in.x + b * in.image_step + packed * in.row_step, in.pixel_step,
                                               in.shift ? in.shift + b * in.shift_step : nullptr, cv.channels, w, wd,
                                               bits.data() + at, nonzero.data() + at);
        }
        bool masked = false;
        for (int64_t y = lo; y < hi; ++y) masked |= zero_rows[y - first] != 0;
        Prefetch next;  // the row the next output row packs, if this share has one
        if (job + 1 < end && (job + 1) / cv.ho == b && hi < h && hi < last_row) {
          next.row = in.x + b * in.image_step + hi * in.row_step;
          next.floats = (w - 1) * in.pixel_step + cv.channels;
        }
        const uint64_t *a = bits.data(), *az = nonzero.data();
        if (cv.fz) convolve_row_masked_or_not<true>(masked, cv, a, az, first, b, oy, next, counts);
        else convolve_row_masked_or_not<false>(masked, cv, a, az, first, b, oy, next, counts);
      }
      if (fused) finish(epilogue, cv.out, b, oy, cv.ho, cv.wo, cv.o);
    }
  });
}

// A float32 map of the output's shape for the epilogue, read in place when channels-last (or a channel slice of a
// channels-last map), else from a channels-last copy (returned, to keep it alive while the kernel reads it).
torch::Tensor output_map(const c10::optional<torch::Tensor>& map, int64_t n, int64_t o, int64_t ho, int64_t wo,
                         const char* name, Map* into) {
  if (!map.has_value() || !map->defined()) return torch::Tensor();
  const torch::Tensor t = pixels_of_channels(*map) ? *map : map->contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(t.scalar_type() == torch::kFloat && t.dim() == 4 && t.size(0) == n && t.size(1) == o &&
                  t.size(2) == ho && t.size(3) == wo,
              name, ": expects a float32 map of the output's shape");
  into->data = t.data_ptr<float>();
  into->pixel = t.stride(3);
  into->row = t.stride(2);
  into->image = t.stride(0);
  return t;
}

// A float32 (N, C, H, W) input plus an optional per-channel shift (the TaR shift, a (1 or N, C) table) and filters
// in `block_filters` layout (blocks, KH, KW, words, kBlock) with an optional non-zero plane of the same shape,
// per-channel scale (O) and optional bias (O) -> scale * (sign(x + shift) conv W) + bias as float32 (N, O, Ho, Wo) in
// channels-last memory, then the unit's epilogue: an RPReLU given by its three (1 or N, O) tables (all or none), a
// residual (N, O, Ho, Wo) added before or after it, a (1 or N, O) table and last a map (N, O, Ho, Wo) added. A
// channels-last input (or a channel slice of one) is packed inside the convolution's pass; any other is packed first
// (`pack_signs`).
torch::Tensor binary_conv2d(const torch::Tensor& input, const c10::optional<torch::Tensor>& shift,
                            const torch::Tensor& filt, const c10::optional<torch::Tensor>& filt_nonzero,
                            const torch::Tensor& scale, const c10::optional<torch::Tensor>& bias, int64_t channels,
                            int64_t stride, int64_t padding, const c10::optional<torch::Tensor>& shift_in,
                            const c10::optional<torch::Tensor>& slope, const c10::optional<torch::Tensor>& shift_out,
                            const c10::optional<torch::Tensor>& residual, bool residual_first,
                            const c10::optional<torch::Tensor>& channel_add,
                            const c10::optional<torch::Tensor>& addend) {
  const int64_t o = scale.numel();
  TORCH_CHECK(input.dim() == 4 && input.scalar_type() == torch::kFloat && input.size(1) == channels,
              "binary_conv2d: expects a float32 (N, ", channels, ", H, W) input");
  TORCH_CHECK(filt.dim() == 5 && filt.is_contiguous() && filt.size(3) == words_for(channels),
              "binary_conv2d: the filters' words do not fit ", channels, " input channels");
  TORCH_CHECK(filt.size(0) == (o + kBlock - 1) / kBlock && filt.size(4) == kBlock,
              "binary_conv2d: filters are not in block_filters layout for this many output channels");
  const int64_t n = input.size(0), h = input.size(2), w = input.size(3), wd = filt.size(3);
  const int64_t kh = filt.size(1), kw = filt.size(2);
  TORCH_CHECK(scale.scalar_type() == torch::kFloat && scale.is_contiguous(),
              "binary_conv2d: expects one float32 scale per output channel");
  const bool has_bias = bias.has_value() && bias->defined();
  TORCH_CHECK(!has_bias || (bias->scalar_type() == torch::kFloat && bias->is_contiguous() && bias->numel() == o),
              "binary_conv2d: expects one float32 bias per output channel");
  const int64_t ho = (h + 2 * padding - kh) / stride + 1, wo = (w + 2 * padding - kw) / stride + 1;
  auto out = torch::empty({n, ho, wo, o}, torch::kFloat);
  const bool filt_mask = filt_nonzero.has_value() && filt_nonzero->defined();
  TORCH_CHECK(!filt_mask || filt_nonzero->sizes() == filt.sizes(), "binary_conv2d: filter planes differ in shape");

  Source source;
  std::vector<torch::Tensor> prepacked;
  if (pixels_of_channels(input)) {
    source.x = input.data_ptr<float>();
    source.pixel_step = input.stride(3);
    source.row_step = input.stride(2);
    source.image_step = input.stride(0);
    source.shift = table_rows(shift, n, channels, "binary_conv2d shift", &source.shift_step);
  } else {
    prepacked = pack_signs(input, shift);
    source.bits = reinterpret_cast<const uint64_t*>(prepacked[0].data_ptr<int64_t>());
    if (prepacked[1].defined()) source.nonzero = reinterpret_cast<const uint64_t*>(prepacked[1].data_ptr<int64_t>());
  }

  Epilogue epilogue;
  int64_t steps[3] = {0, 0, 0};
  epilogue.shift_in = table_rows(shift_in, n, o, "binary_conv2d shift_in", &steps[0]);
  epilogue.slope = table_rows(slope, n, o, "binary_conv2d slope", &steps[1]);
  epilogue.shift_out = table_rows(shift_out, n, o, "binary_conv2d shift_out", &steps[2]);
  TORCH_CHECK((epilogue.shift_in == nullptr) == (epilogue.slope == nullptr) &&
                  (epilogue.slope == nullptr) == (epilogue.shift_out == nullptr) && steps[0] == steps[1] &&
                  steps[1] == steps[2],
              "binary_conv2d: the activation's three tables come together, with as many rows each");
  epilogue.row_step = steps[0];
  epilogue.channel_add = table_rows(channel_add, n, o, "binary_conv2d channel_add", &epilogue.add_row_step);
  const torch::Tensor res = output_map(residual, n, o, ho, wo, "binary_conv2d residual", &epilogue.residual);
  const torch::Tensor more = output_map(addend, n, o, ho, wo, "binary_conv2d addend", &epilogue.addend);
  epilogue.residual_first = residual_first;
  const auto* ft = reinterpret_cast<const uint64_t*>(filt.data_ptr<int64_t>());
  const int64_t blocks = filt.size(0);
  const uint64_t* fz = filt_mask ? reinterpret_cast<const uint64_t*>(filt_nonzero->data_ptr<int64_t>()) : nullptr;
  // at most 32 input channels: the filters' low halves (and their non-zero plane's) as 32-bit lanes,
  // (blocks, KH, KW, kBlock)
  std::vector<uint32_t> low_halves, mask_halves;
#if BIDISTILL_PIXEL_GROUPS
  if (wd == 1 && channels <= 32) {
    low_halves.resize(filt.numel());
    for (int64_t i = 0; i < filt.numel(); ++i) low_halves[i] = static_cast<uint32_t>(ft[i]);
    if (fz) {
      mask_halves.resize(filt.numel());
      for (int64_t i = 0; i < filt.numel(); ++i) mask_halves[i] = static_cast<uint32_t>(fz[i]);
    }
  }
#endif
  std::vector<uint64_t> valid_rows;
  if (fz) {
    valid_rows.assign(kh * blocks * kBlock, 0);
    for (int64_t blk = 0; blk < blocks; ++blk)
      for (int64_t ky = 0; ky < kh; ++ky)
        for (int64_t j = 0; j < kw * wd; ++j)
          for (int64_t c = 0; c < kBlock; ++c)
            valid_rows[ky * blocks * kBlock + blk * kBlock + c] +=
                __builtin_popcountll(fz[((blk * kh + ky) * kw * wd + j) * kBlock + c]);
  }
  const Conv cv{ft,
                fz,
                low_halves.empty() ? nullptr : low_halves.data(),
                mask_halves.empty() ? nullptr : mask_halves.data(),
                valid_rows.empty() ? nullptr : valid_rows.data(),
                scale.data_ptr<float>(),
                has_bias ? bias->data_ptr<float>() : nullptr,
                out.data_ptr<float>(),
                h, w, wd, o, kh, kw, channels, stride, padding, ho, wo};
  convolve(cv, source, epilogue, n);
  return out.permute({0, 3, 1, 2});
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pack_signs", &pack_signs, "pack the signs of an NCHW tensor (plus a per-channel shift) along channels, 64 per "
        "word");
  m.def("block_filters", &block_filters, "packed filters in the kernel's layout: 16 output channels per word");
  m.def("binary_conv2d", &binary_conv2d,
        "binary convolution of packed signs: scale * dot + bias, then the unit's RPReLU and residual, channels-last");
}
