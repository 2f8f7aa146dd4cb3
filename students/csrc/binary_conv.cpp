// Binary convolution on packed sign bits (CPU): the inference kernel behind students/packed_conv.py.
//
// Signs are packed along channels, 64 per machine word, one bit per channel (1: positive). A tap of the dot
// product between an activation patch and a filter is then K - 2 popcount(a XOR w) over the words, K the number of
// channels. Exact zeros (torch.sign(0) = 0) are kept with a second bit plane per side, "non-zero": the masked tap is
// popcount(m) - 2 popcount(m AND (a XOR w)) with m = nz_a AND nz_w. Zero padding contributes nothing: taps that fall
// outside the input are skipped, which is exactly what a float convolution of zero-padded +-1 values computes.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

#ifdef __AVX2__
#include <immintrin.h>
#endif

namespace {

constexpr int64_t kBlock = 16;  // output channels per inner block (four 256-bit vectors of 64-bit words)

#ifdef __AVX2__
// Per-byte popcount of a 256-bit vector by nibble lookup (vpshufb): no AVX-512 VPOPCNT needed.
inline __m256i popcount_bytes(__m256i v) {
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  return _mm256_add_epi8(_mm256_shuffle_epi8(table, _mm256_and_si256(v, low)),
                         _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)));
}
#endif

// differ[oc] = sum over the patch's words j of popcount(patch[j] XOR filter word (word_index[j], oc)), for the
// kBlock output channels at `ft` (filters transposed: word-major, kBlock channels contiguous per word).
inline void count_differences(const uint64_t* patch, const int64_t* word_index, int64_t words, const uint64_t* ft,
                              int64_t stride_words, uint64_t* differ) {
#ifdef __AVX2__
  __m256i bytes[4], total[4];
  for (int v = 0; v < 4; ++v) bytes[v] = total[v] = _mm256_setzero_si256();
  int pending = 0;
  for (int64_t j = 0; j < words; ++j) {
    const __m256i a = _mm256_set1_epi64x(static_cast<long long>(patch[j]));
    const uint64_t* fw = ft + word_index[j] * stride_words;
    for (int v = 0; v < 4; ++v) {
      const __m256i f = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(fw + 4 * v));
      bytes[v] = _mm256_add_epi8(bytes[v], popcount_bytes(_mm256_xor_si256(a, f)));
    }
    if (++pending == 31) {  // a byte counter holds at most 31 x 8 = 248
      for (int v = 0; v < 4; ++v) {
        total[v] = _mm256_add_epi64(total[v], _mm256_sad_epu8(bytes[v], _mm256_setzero_si256()));
        bytes[v] = _mm256_setzero_si256();
      }
      pending = 0;
    }
  }
  for (int v = 0; v < 4; ++v) {
    total[v] = _mm256_add_epi64(total[v], _mm256_sad_epu8(bytes[v], _mm256_setzero_si256()));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(differ + 4 * v), total[v]);
  }
#else
  for (int64_t c = 0; c < kBlock; ++c) differ[c] = 0;
  for (int64_t j = 0; j < words; ++j) {
    const uint64_t* fw = ft + word_index[j] * stride_words;
    for (int64_t c = 0; c < kBlock; ++c) differ[c] += __builtin_popcountll(patch[j] ^ fw[c]);
  }
#endif
}

inline int64_t words_for(int64_t channels) { return (channels + 63) / 64; }

// NCHW float -> (bits, nonzero bits or an empty tensor when there is no exact zero), both (N, H, W, words) int64.
// Reads each channel plane row by row (contiguous) and sets one bit per pixel, so no NHWC copy is made.
std::vector<torch::Tensor> pack_signs(const torch::Tensor& input) {
  TORCH_CHECK(input.dim() == 4, "pack_signs: expects an (N, C, H, W) tensor");
  const auto x = input.to(torch::kFloat).contiguous();
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), wd = words_for(c);
  auto bits = torch::zeros({n, h, w, wd}, torch::kLong);
  auto nonzero = torch::zeros({n, h, w, wd}, torch::kLong);
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
      for (int64_t k = 0; k < wd; ++k) {
        const int64_t stop = std::min<int64_t>(64, c - 64 * k);
        const uint64_t full = stop == 64 ? ~uint64_t(0) : ((uint64_t(1) << stop) - 1);
        for (int64_t px0 = 0; px0 < w; px0 += kChunk) {
          const int64_t count = std::min<int64_t>(kChunk, w - px0);
          for (int64_t px = 0; px < count; ++px) pos[px] = nz[px] = 0;
          for (int64_t j = 0; j < stop; ++j) {
            const float* v = src + ((img * c + 64 * k + j) * h + y) * w + px0;
            for (int64_t px = 0; px < count; ++px) {
              pos[px] |= static_cast<uint64_t>(v[px] > 0.0f) << j;
              nz[px] |= static_cast<uint64_t>(v[px] != 0.0f) << j;
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

// Packed activations (N, H, W, words), packed filters (O, KH, KW, words) -> the integer dot products as float32
// (N, O, Ho, Wo). Optional non-zero planes of the same shapes (undefined tensors when there are no zeros).
torch::Tensor binary_conv2d(const torch::Tensor& act, const c10::optional<torch::Tensor>& act_nonzero,
                            const torch::Tensor& filt, const c10::optional<torch::Tensor>& filt_nonzero,
                            int64_t channels, int64_t stride, int64_t padding) {
  TORCH_CHECK(act.dim() == 4 && filt.dim() == 4 && act.size(3) == filt.size(3),
              "binary_conv2d: activation and filter words differ");
  TORCH_CHECK(act.is_contiguous() && filt.is_contiguous(), "binary_conv2d: expects contiguous inputs");
  const int64_t n = act.size(0), h = act.size(1), w = act.size(2), wd = act.size(3);
  const int64_t o = filt.size(0), kh = filt.size(1), kw = filt.size(2);
  const int64_t ho = (h + 2 * padding - kh) / stride + 1, wo = (w + 2 * padding - kw) / stride + 1;
  auto out = torch::empty({n, o, ho, wo}, torch::kFloat);
  const bool masked = (act_nonzero.has_value() && act_nonzero->defined()) ||
                      (filt_nonzero.has_value() && filt_nonzero->defined());
  const auto* a = reinterpret_cast<const uint64_t*>(act.data_ptr<int64_t>());
  const auto* f = reinterpret_cast<const uint64_t*>(filt.data_ptr<int64_t>());
  // Missing planes mean "every real channel is non-zero": the full mask of `channels` bits per tap.
  std::vector<uint64_t> full(wd);
  for (int64_t k = 0; k < wd; ++k) {
    const int64_t bits = std::min<int64_t>(64, channels - 64 * k);
    full[k] = bits == 64 ? ~uint64_t(0) : ((uint64_t(1) << bits) - 1);
  }
  const uint64_t* az = masked && act_nonzero.has_value() && act_nonzero->defined()
                           ? reinterpret_cast<const uint64_t*>(act_nonzero->data_ptr<int64_t>()) : nullptr;
  const uint64_t* fz = masked && filt_nonzero.has_value() && filt_nonzero->defined()
                           ? reinterpret_cast<const uint64_t*>(filt_nonzero->data_ptr<int64_t>()) : nullptr;
  float* dst = out.data_ptr<float>();
  const int64_t taps = kh * kw, row = taps * wd, plane = ho * wo;
  // Without zeros: filters transposed to (row words, O padded to kBlock) for the vectorized count.
  const int64_t blocks = (o + kBlock - 1) / kBlock, opad = blocks * kBlock;
  std::vector<uint64_t> ft;
  if (!masked) {
    ft.assign(row * opad, 0);
    for (int64_t oc = 0; oc < o; ++oc)
      for (int64_t j = 0; j < row; ++j) ft[(oc / kBlock) * row * kBlock + j * kBlock + oc % kBlock] = f[oc * row + j];
  }

  at::parallel_for(0, n * ho, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> patch(row), patch_nz(row);
    std::vector<int64_t> tap_index(taps), word_index(row);
    uint64_t differ[kBlock];
    for (int64_t job = begin; job < end; ++job) {
      const int64_t b = job / ho, oy = job % ho;
      for (int64_t ox = 0; ox < wo; ++ox) {
        // Gather the valid taps' words into one contiguous patch; remember which filter words they meet.
        int64_t valid = 0;
        for (int64_t ky = 0; ky < kh; ++ky) {
          const int64_t iy = oy * stride - padding + ky;
          if (iy < 0 || iy >= h) continue;
          for (int64_t kx = 0; kx < kw; ++kx) {
            const int64_t ix = ox * stride - padding + kx;
            if (ix < 0 || ix >= w) continue;
            const int64_t src = ((b * h + iy) * w + ix) * wd;
            for (int64_t k = 0; k < wd; ++k) {
              patch[valid * wd + k] = a[src + k];
              patch_nz[valid * wd + k] = az ? az[src + k] : full[k];
              word_index[valid * wd + k] = (ky * kw + kx) * wd + k;
            }
            tap_index[valid++] = ky * kw + kx;
          }
        }
        float* out_px = dst + b * o * plane + oy * wo + ox;
        if (!masked) {
          for (int64_t blk = 0; blk < blocks; ++blk) {
            count_differences(patch.data(), word_index.data(), valid * wd, ft.data() + blk * row * kBlock, kBlock,
                              differ);
            const int64_t stop = std::min<int64_t>(kBlock, o - blk * kBlock);
            for (int64_t c = 0; c < stop; ++c)
              out_px[(blk * kBlock + c) * plane] =
                  static_cast<float>(valid * channels - 2 * static_cast<int64_t>(differ[c]));
          }
          continue;
        }
        for (int64_t oc = 0; oc < o; ++oc) {
          const uint64_t* frow = f + oc * row;
          const uint64_t* zrow = fz ? fz + oc * row : nullptr;
          int64_t dot = 0;
          for (int64_t t = 0; t < valid; ++t) {
            const int64_t off = tap_index[t] * wd;
            for (int64_t k = 0; k < wd; ++k) {
              const uint64_t m = patch_nz[t * wd + k] & (zrow ? zrow[off + k] : full[k]);
              dot += __builtin_popcountll(m) - 2 * __builtin_popcountll(m & (patch[t * wd + k] ^ frow[off + k]));
            }
          }
          out_px[oc * plane] = static_cast<float>(dot);
        }
      }
    }
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pack_signs", &pack_signs, "pack the signs of an NCHW tensor along channels, 64 per word");
  m.def("binary_conv2d", &binary_conv2d, "binary convolution of packed signs (integer dot products as float)");
}
