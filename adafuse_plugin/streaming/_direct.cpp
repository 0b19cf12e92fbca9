// Direct convolution over a channel subset, float32, channels-last: the streaming runner's
// "direct" mode (see _direct.py). A per-frame channel selection needs no weight copy and
// no per-shape compile here: the weight is laid out once in blocks of 64 output channels,
// each block input-major ([block][tap][input channel][64]), so an input-channel subset is
// a list of contiguous 256-byte rows read in place, and an output-channel subset is a few
// blocks packed for the call (`pack_blocks`), or, on small maps, computed pixel-major from
// the rows of an output-major weight (`subset_conv_outputs`), or, for a few channels of a
// stride-1 conv, row by row from the input made planar (`subset_conv_planar`). Zero
// padding is read, never copied (the planar copy holds it once). Written with GCC/Clang vector extensions: the compiler emits AVX-512, AVX2 or
// NEON code for the machine it builds on.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

namespace {

typedef float vec __attribute__((vector_size(64)));
typedef float vec_unaligned __attribute__((vector_size(64), aligned(4)));
constexpr int64_t kLanes = 16;  // floats per vector
constexpr int64_t kBlock = 64;  // output channels per weight block (4 vectors)

inline vec load(const float* p) { return *reinterpret_cast<const vec_unaligned*>(p); }
inline void store(float* p, vec v) { *reinterpret_cast<vec_unaligned*>(p) = v; }

// What every tile of one call shares.
struct Call {
  const float* input;     // [N][H][W][S]: the S input channels taking part, NHWC
  const float* zeros;     // [S] zeros: what a tap reads in the padding
  const int64_t* rows;    // [S]: the weight's input channel of each input channel
  const float* weight;    // [blocks][taps][C_in][64]
  const float* bias;      // [C_out]
  const float* add;       // [N][P][C_out] or null
  float* out;             // [N][P][C_out]
  int64_t S, H, W, C_in, C_out, out_w, P, stride_h, stride_w, pad_h, pad_w, kernel_w, taps;
  bool relu;
};

// Accumulators per tile: 24 of the 32 vector registers (AVX-512), the rest hold weights.
constexpr int kAccumulators = 24;

// Output pixels q .. q + NP - 1 of image n (NP = 24 / NV: narrow blocks take more pixels,
// so each weight row loaded serves as many multiply-adds), output channels
// [64 * block, + 16 * NV). Pixels past the last one repeat it and are not stored.
template <int NV>
void tile(const Call& c, int64_t n, int64_t block, int64_t q) {
  constexpr int NP = kAccumulators / NV;
  int64_t top[NP], left[NP];  // input row and column of each pixel's first tap
  for (int p = 0; p < NP; ++p) {
    const int64_t at = std::min(q + p, c.P - 1);
    top[p] = at / c.out_w * c.stride_h - c.pad_h;
    left[p] = at % c.out_w * c.stride_w - c.pad_w;
  }
  const int64_t first = block * kBlock;
  const int64_t valid = std::min(kBlock, c.C_out - first);
  vec acc[NP][NV];
  for (int v = 0; v < NV; ++v) {
    vec b = {};
    const int64_t lanes = std::min(kLanes, valid - v * kLanes);
    for (int64_t l = 0; l < lanes; ++l) b[l] = c.bias[first + v * kLanes + l];
    for (int p = 0; p < NP; ++p) acc[p][v] = b;
  }
  const float* weight = c.weight + block * c.taps * c.C_in * kBlock;
  for (int64_t t = 0; t < c.taps; ++t) {
    const float* taps_weight = weight + t * c.C_in * kBlock;
    const int64_t dy = t / c.kernel_w, dx = t % c.kernel_w;
    const float* x[NP];
    for (int p = 0; p < NP; ++p) {
      const int64_t h = top[p] + dy, w = left[p] + dx;
      const bool inside = h >= 0 && h < c.H && w >= 0 && w < c.W;
      x[p] = inside ? c.input + ((n * c.H + h) * c.W + w) * c.S : c.zeros;
    }
    for (int64_t j = 0; j < c.S; ++j) {
      const float* row = taps_weight + c.rows[j] * kBlock;
      vec w[NV];
      for (int v = 0; v < NV; ++v) w[v] = load(row + v * kLanes);
      for (int p = 0; p < NP; ++p) {
        const float s = x[p][j];
        for (int v = 0; v < NV; ++v) acc[p][v] += s * w[v];
      }
    }
  }
  const int pixels = static_cast<int>(std::min<int64_t>(NP, c.P - q));
  for (int p = 0; p < pixels; ++p) {
    const int64_t at = (n * c.P + q + p) * c.C_out + first;
    for (int v = 0; v < NV; ++v) {
      const int64_t lanes = std::min(kLanes, valid - v * kLanes);
      float* dst = c.out + at + v * kLanes;
      const float* other = c.add ? c.add + at + v * kLanes : nullptr;
      vec y = acc[p][v];
      if (lanes == kLanes) {
        if (other) y += load(other);
        if (c.relu) {
          const vec zero = {};
          y = y > zero ? y : zero;
        }
        store(dst, y);
      } else {  // the last channels of a count that is not a multiple of 16
        for (int64_t l = 0; l < lanes; ++l) {
          float value = y[l] + (other ? other[l] : 0.f);
          dst[l] = c.relu && value < 0 ? 0.f : value;
        }
      }
    }
  }
}

// Vectors (of 16 channels) in output block ``block``.
int block_vectors(const Call& c, int64_t block) {
  const int64_t valid = std::min(kBlock, c.C_out - block * kBlock);
  return static_cast<int>((valid + kLanes - 1) / kLanes);
}

void run_tile(const Call& c, int64_t n, int64_t block, int64_t q) {
  switch (block_vectors(c, block)) {
    case 1: return tile<1>(c, n, block, q);
    case 2: return tile<2>(c, n, block, q);
    case 3: return tile<3>(c, n, block, q);
    default: return tile<4>(c, n, block, q);
  }
}

at::Tensor subset_conv(const at::Tensor& input, const at::Tensor& rows, const at::Tensor& weight,
                       const at::Tensor& bias, const std::optional<at::Tensor>& add,
                       int64_t out_h, int64_t out_w, int64_t stride_h, int64_t stride_w,
                       int64_t pad_h, int64_t pad_w, int64_t kernel_h, int64_t kernel_w,
                       int64_t out_channels, bool relu) {
  TORCH_CHECK(input.dim() == 4 && input.is_contiguous() && input.scalar_type() == at::kFloat,
              "input: a contiguous float32 [N, H, W, S] tensor");
  TORCH_CHECK(weight.dim() == 4 && weight.is_contiguous() && weight.size(3) == kBlock &&
                  weight.size(1) == kernel_h * kernel_w && weight.scalar_type() == at::kFloat,
              "weight: a contiguous float32 [blocks, taps, C_in, 64] tensor");
  TORCH_CHECK(weight.size(0) * kBlock >= out_channels, "weight has too few output blocks");
  TORCH_CHECK(rows.dim() == 1 && rows.size(0) == input.size(3) && rows.is_contiguous() &&
                  rows.scalar_type() == at::kLong,
              "rows: one int64 weight row per input channel");
  TORCH_CHECK(bias.is_contiguous() && bias.numel() >= out_channels &&
                  bias.scalar_type() == at::kFloat,
              "bias: a contiguous float32 vector with one value per output channel");
  TORCH_CHECK(out_h >= 1 && out_w >= 1 &&
                  (out_h - 1) * stride_h + kernel_h <= input.size(1) + 2 * pad_h &&
                  (out_w - 1) * stride_w + kernel_w <= input.size(2) + 2 * pad_w,
              "the output size does not fit the padded input");
  const int64_t* row_data = rows.data_ptr<int64_t>();
  for (int64_t j = 0; j < rows.numel(); ++j) {
    TORCH_CHECK(row_data[j] >= 0 && row_data[j] < weight.size(2),
                "rows out of the weight's input channels");
  }
  const int64_t N = input.size(0), P = out_h * out_w;
  auto out = at::empty({N, out_h, out_w, out_channels}, input.options());
  if (add) {
    TORCH_CHECK(add->is_contiguous() && add->sizes() == out.sizes() &&
                    add->scalar_type() == at::kFloat,
                "add: a contiguous float32 [N, out_h, out_w, C_out] tensor");
  }
  const std::vector<float> zeros(input.size(3), 0.f);
  const Call c{input.data_ptr<float>(), zeros.data(), row_data, weight.data_ptr<float>(),
               bias.data_ptr<float>(), add ? add->data_ptr<float>() : nullptr,
               out.data_ptr<float>(), input.size(3), input.size(1), input.size(2),
               weight.size(2), out_channels, out_w, P, stride_h, stride_w, pad_h, pad_w,
               kernel_w, kernel_h * kernel_w, relu};
  const int64_t blocks = (out_channels + kBlock - 1) / kBlock;
  // Work items (image, block, first pixel); the tiles of one block are neighbours, so a
  // thread's chunk reuses one block's weights.
  std::vector<std::array<int64_t, 3>> items;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t pixels = kAccumulators / block_vectors(c, block);
      for (int64_t q = 0; q < P; q += pixels) items.push_back({n, block, q});
    }
  at::parallel_for(0, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) run_tile(c, items[i][0], items[i][1], items[i][2]);
  });
  return out;
}

// The rows ``outputs`` of an output-major weight [C_out][taps][C_in], as the blocks of 64
// output channels `subset_conv` reads ([blocks][taps][C_in][64], zero beyond the last).
at::Tensor pack_blocks(const at::Tensor& weight, const at::Tensor& outputs) {
  TORCH_CHECK(weight.dim() == 3 && weight.is_contiguous() && weight.scalar_type() == at::kFloat,
              "weight: a contiguous float32 [C_out, taps, C_in] tensor");
  TORCH_CHECK(outputs.dim() == 1 && outputs.is_contiguous() &&
                  outputs.scalar_type() == at::kLong,
              "outputs: int64 output channels");
  const int64_t count = outputs.numel(), inner = weight.size(1) * weight.size(2);
  const int64_t blocks = (count + kBlock - 1) / kBlock;
  const int64_t* index = outputs.data_ptr<int64_t>();
  for (int64_t j = 0; j < count; ++j) {
    TORCH_CHECK(index[j] >= 0 && index[j] < weight.size(0),
                "outputs out of the weight's output channels");
  }
  auto packed = at::empty({blocks, weight.size(1), weight.size(2), kBlock}, weight.options());
  const float* src = weight.data_ptr<float>();
  float* dst = packed.data_ptr<float>();
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t lanes = std::min(kBlock, count - b * kBlock);
      const int64_t* block_index = index + b * kBlock;
      float* block = dst + b * inner * kBlock;
      // 16 positions at a time: the 64 rows' runs of 16 floats (one cache line each)
      // are copied into a tile, which is then written out along the block's rows.
      constexpr int64_t kRun = 16;
      float run[kBlock][kRun];
      for (int64_t k0 = 0; k0 < inner; k0 += kRun) {
        const int64_t width = std::min(kRun, inner - k0);
        for (int64_t l = 0; l < lanes; ++l) {
          const float* row = src + block_index[l] * inner + k0;
          for (int64_t k = 0; k < width; ++k) run[l][k] = row[k];
        }
        for (int64_t l = lanes; l < kBlock; ++l)
          for (int64_t k = 0; k < kRun; ++k) run[l][k] = 0.f;
        for (int64_t k = 0; k < width; ++k) {
          float* out_row = block + (k0 + k) * kBlock;
          for (int64_t l = 0; l < kBlock; ++l) out_row[l] = run[l][k];
        }
      }
    }
  });
  return packed;
}


// The arguments both output-major kernels share: an NHWC input, a weight of rows
// [C_out][taps * C_in], the selected output channels and the bias.
void check_output_major(const at::Tensor& input, const at::Tensor& weight,
                        const at::Tensor& outputs, const at::Tensor& bias, int64_t taps) {
  TORCH_CHECK(input.dim() == 4 && input.is_contiguous() && input.scalar_type() == at::kFloat,
              "input: a contiguous float32 [N, H, W, C_in] tensor");
  TORCH_CHECK(weight.dim() == 2 && weight.is_contiguous() &&
                  weight.size(1) == taps * input.size(3) && weight.scalar_type() == at::kFloat,
              "weight: a contiguous float32 [C_out, taps * C_in] tensor");
  TORCH_CHECK(outputs.dim() == 1 && outputs.is_contiguous() &&
                  outputs.scalar_type() == at::kLong,
              "outputs: int64 output channels");
  TORCH_CHECK(bias.is_contiguous() && bias.numel() == weight.size(0) &&
                  bias.scalar_type() == at::kFloat,
              "bias: a contiguous float32 vector with one value per output channel");
  const int64_t* index = outputs.data_ptr<int64_t>();
  for (int64_t j = 0; j < outputs.numel(); ++j) {
    TORCH_CHECK(index[j] >= 0 && index[j] < weight.size(0),
                "outputs out of the weight's output channels");
  }
}

// Output-channel subsets on small maps (fewer output pixels than selected channels): the
// pixels are the vector lanes, so the weight is read in place, one output channel's
// contiguous row of an output-major weight [C_out][taps * C_in] at a time, and only the
// input is rearranged, as columns [taps * C_in][pixels] (smaller than the selected
// weight there).
template <int NR, int NV>
void pixel_tile(const float* columns, int64_t K, int64_t Ppad, const float* const* rows,
                int64_t p0, float (*acc_out)[4 * kLanes]) {
  vec acc[NR][NV];
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vec{};
  for (int64_t k = 0; k < K; ++k) {
    vec x[NV];
    for (int v = 0; v < NV; ++v) x[v] = load(columns + k * Ppad + p0 + v * kLanes);
    for (int r = 0; r < NR; ++r) {
      const float s = rows[r][k];
      for (int v = 0; v < NV; ++v) acc[r][v] += s * x[v];
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) store(acc_out[r] + v * kLanes, acc[r][v]);
}

template <int NR>
void pixel_tile_vectors(int vectors, const float* columns, int64_t K, int64_t Ppad,
                        const float* const* rows, int64_t p0, float (*acc)[4 * kLanes]) {
  switch (vectors) {
    case 1: return pixel_tile<NR, 1>(columns, K, Ppad, rows, p0, acc);
    case 2: return pixel_tile<NR, 2>(columns, K, Ppad, rows, p0, acc);
    case 3: return pixel_tile<NR, 3>(columns, K, Ppad, rows, p0, acc);
    default: return pixel_tile<NR, 4>(columns, K, Ppad, rows, p0, acc);
  }
}

at::Tensor subset_conv_outputs(const at::Tensor& input, const at::Tensor& weight,
                               const at::Tensor& outputs, const at::Tensor& bias,
                               int64_t out_h, int64_t out_w, int64_t stride_h,
                               int64_t stride_w, int64_t pad_h, int64_t pad_w,
                               int64_t kernel_h, int64_t kernel_w, bool relu) {
  const int64_t taps = kernel_h * kernel_w;
  check_output_major(input, weight, outputs, bias, taps);
  const int64_t C_in = input.size(3), K = taps * C_in;
  const int64_t H = input.size(1), W = input.size(2);
  TORCH_CHECK(out_h >= 1 && out_w >= 1 && (out_h - 1) * stride_h + kernel_h <= H + 2 * pad_h &&
                  (out_w - 1) * stride_w + kernel_w <= W + 2 * pad_w,
              "the output size does not fit the padded input");
  const int64_t count = outputs.numel();
  const int64_t* index = outputs.data_ptr<int64_t>();
  const int64_t N = input.size(0), P = out_h * out_w, Ppad = (P + kLanes - 1) / kLanes * kLanes;
  auto out = at::empty({N, out_h, out_w, count}, input.options());
  auto columns = at::empty({N, K, Ppad}, input.options());
  const float* g = input.data_ptr<float>();
  float* col = columns.data_ptr<float>();
  at::parallel_for(0, N * taps, 1, [&](int64_t begin, int64_t end) {
    std::vector<const float*> sources(Ppad);
    const std::vector<float> zeros(C_in, 0.f);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / taps, t = i % taps, dy = t / kernel_w, dx = t % kernel_w;
      for (int64_t p = 0; p < Ppad; ++p) {  // padding and lanes past the last pixel: zeros
        const int64_t h = p / out_w * stride_h + dy - pad_h, w = p % out_w * stride_w + dx - pad_w;
        const bool inside = p < P && h >= 0 && h < H && w >= 0 && w < W;
        sources[p] = inside ? g + ((n * H + h) * W + w) * C_in : zeros.data();
      }
      // Writes run along the columns; the pixels' rows read stay in cache meanwhile.
      float* dst = col + (n * K + t * C_in) * Ppad;
      for (int64_t c = 0; c < C_in; ++c)
        for (int64_t p = 0; p < Ppad; ++p) dst[c * Ppad + p] = sources[p][c];
    }
  });
  constexpr int kRows = 6;  // output channels per tile: 6 x 4 accumulators
  const int64_t row_tiles = (count + kRows - 1) / kRows;
  const int64_t pixel_tiles = (Ppad + kBlock - 1) / kBlock;
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, N * row_tiles * pixel_tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / (row_tiles * pixel_tiles);
      const int64_t r0 = i / pixel_tiles % row_tiles * kRows, p0 = i % pixel_tiles * kBlock;
      const int nr = static_cast<int>(std::min<int64_t>(kRows, count - r0));
      const int vectors = static_cast<int>(std::min(kBlock, Ppad - p0) / kLanes);
      const float* rows[kRows];
      for (int r = 0; r < nr; ++r) rows[r] = w + index[r0 + r] * K;
      float acc[kRows][4 * kLanes];
      const float* cols = col + n * K * Ppad;
      switch (nr) {
        case 1: pixel_tile_vectors<1>(vectors, cols, K, Ppad, rows, p0, acc); break;
        case 2: pixel_tile_vectors<2>(vectors, cols, K, Ppad, rows, p0, acc); break;
        case 3: pixel_tile_vectors<3>(vectors, cols, K, Ppad, rows, p0, acc); break;
        case 4: pixel_tile_vectors<4>(vectors, cols, K, Ppad, rows, p0, acc); break;
        case 5: pixel_tile_vectors<5>(vectors, cols, K, Ppad, rows, p0, acc); break;
        default: pixel_tile_vectors<kRows>(vectors, cols, K, Ppad, rows, p0, acc);
      }
      const int64_t last = std::min(P, p0 + vectors * kLanes);
      for (int r = 0; r < nr; ++r) {
        const float shift = b[index[r0 + r]];
        for (int64_t p = p0; p < last; ++p) {
          const float value = acc[r][p - p0] + shift;
          o[(n * P + p) * count + r0 + r] = relu && value < 0 ? 0.f : value;
        }
      }
    }
  });
  return out;
}

// A few output channels on large maps, stride 1: the pixels of an output row are the
// vector lanes, read from the input made planar once per call ([C_in][rows][columns],
// zero padding included, so every tap of a row is one unaligned load), and each selected
// output channel's weights are scalars of its output-major row [taps * C_in]. Costs the
// selected channels only: the channel-major kernel fills a whole 16-channel vector for
// one channel, and the pixel-major one writes taps * C_in columns of the whole map.
template <int NR, int NV>
void planar_row(const float* planes, int64_t plane, int64_t Wp, int64_t C_in,
                int64_t kernel_h, int64_t kernel_w, const float* const* rows, int64_t y,
                float (*acc_out)[4 * kLanes]) {
  vec acc[NR][NV];
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vec{};
  for (int64_t dy = 0; dy < kernel_h; ++dy) {
    for (int64_t dx = 0; dx < kernel_w; ++dx) {
      const int64_t k0 = (dy * kernel_w + dx) * C_in;
      const float* source = planes + (y + dy) * Wp + dx;
      for (int64_t c = 0; c < C_in; ++c, source += plane) {
        vec x[NV];
        for (int v = 0; v < NV; ++v) x[v] = load(source + v * kLanes);
        for (int r = 0; r < NR; ++r) {
          const float s = rows[r][k0 + c];
          for (int v = 0; v < NV; ++v) acc[r][v] += s * x[v];
        }
      }
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < NV; ++v) store(acc_out[r] + v * kLanes, acc[r][v]);
}

template <int NR>
void planar_row_vectors(int vectors, const float* planes, int64_t plane, int64_t Wp,
                        int64_t C_in, int64_t kernel_h, int64_t kernel_w,
                        const float* const* rows, int64_t y, float (*acc)[4 * kLanes]) {
  switch (vectors) {
    case 1: return planar_row<NR, 1>(planes, plane, Wp, C_in, kernel_h, kernel_w, rows, y, acc);
    case 2: return planar_row<NR, 2>(planes, plane, Wp, C_in, kernel_h, kernel_w, rows, y, acc);
    case 3: return planar_row<NR, 3>(planes, plane, Wp, C_in, kernel_h, kernel_w, rows, y, acc);
    default: return planar_row<NR, 4>(planes, plane, Wp, C_in, kernel_h, kernel_w, rows, y, acc);
  }
}

at::Tensor subset_conv_planar(const at::Tensor& input, const at::Tensor& weight,
                              const at::Tensor& outputs, const at::Tensor& bias, int64_t out_h,
                              int64_t out_w, int64_t pad_h, int64_t pad_w, int64_t kernel_h,
                              int64_t kernel_w, bool relu) {
  check_output_major(input, weight, outputs, bias, kernel_h * kernel_w);
  const int64_t N = input.size(0), H = input.size(1), W = input.size(2), C_in = input.size(3);
  const int64_t K = kernel_h * kernel_w * C_in;
  TORCH_CHECK(out_w >= 1 && out_w <= 4 * kLanes && out_h >= 1 &&
                  out_h - 1 + kernel_h <= H + 2 * pad_h && out_w - 1 + kernel_w <= W + 2 * pad_w,
              "stride 1, at most 64 output columns, an output size that fits the padded input");
  const int64_t count = outputs.numel();
  const int64_t* index = outputs.data_ptr<int64_t>();
  const int vectors = static_cast<int>((out_w + kLanes - 1) / kLanes);
  // Rows and columns of a plane: the padded input, and columns up to the last lane read.
  const int64_t Hp = out_h - 1 + kernel_h, Wp = vectors * kLanes + kernel_w - 1;
  const int64_t plane = Hp * Wp;
  auto planes = at::zeros({N, C_in, Hp, Wp}, input.options());
  const float* g = input.data_ptr<float>();
  float* pl = planes.data_ptr<float>();
  at::parallel_for(0, N * Hp, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / Hp, row = i % Hp, h = row - pad_h;
      if (h < 0 || h >= H) continue;
      float* dst = pl + n * C_in * plane + row * Wp + pad_w;
      const float* src = g + (n * H + h) * W * C_in;
      const int64_t width = std::min(W, Wp - pad_w);
      for (int64_t w = 0; w < width; ++w)
        for (int64_t c = 0; c < C_in; ++c) dst[c * plane + w] = src[w * C_in + c];
    }
  });
  constexpr int kRows = 4;  // output channels per tile: 4 x 4 accumulators
  const int64_t row_tiles = (count + kRows - 1) / kRows;
  auto out = at::empty({N, out_h, out_w, count}, input.options());
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, N * out_h * row_tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / (out_h * row_tiles), y = i / row_tiles % out_h;
      const int64_t r0 = i % row_tiles * kRows;
      const int nr = static_cast<int>(std::min<int64_t>(kRows, count - r0));
      const float* rows[kRows];
      for (int r = 0; r < nr; ++r) rows[r] = w + index[r0 + r] * K;
      float acc[kRows][4 * kLanes];
      const float* planes_n = pl + n * C_in * plane;
      switch (nr) {
        case 1:
          planar_row_vectors<1>(vectors, planes_n, plane, Wp, C_in, kernel_h, kernel_w, rows, y,
                                acc);
          break;
        case 2:
          planar_row_vectors<2>(vectors, planes_n, plane, Wp, C_in, kernel_h, kernel_w, rows, y,
                                acc);
          break;
        case 3:
          planar_row_vectors<3>(vectors, planes_n, plane, Wp, C_in, kernel_h, kernel_w, rows, y,
                                acc);
          break;
        default:
          planar_row_vectors<kRows>(vectors, planes_n, plane, Wp, C_in, kernel_h, kernel_w, rows,
                                    y, acc);
      }
      for (int r = 0; r < nr; ++r) {
        const float shift = b[index[r0 + r]];
        float* dst = o + (n * out_h + y) * out_w * count + r0 + r;
        for (int64_t x = 0; x < out_w; ++x) {
          const float value = acc[r][x] + shift;
          dst[x * count] = relu && value < 0 ? 0.f : value;
        }
      }
    }
  });
  return out;
}

// The input `subset_conv` reads: channels of NHWC ``sources`` side by side (all of a
// source's channels, or those its index lists), in one pass.
at::Tensor gather_channels(at::TensorList sources, at::TensorList indices) {
  TORCH_CHECK(!sources.empty() && sources.size() == indices.size(),
              "one index (empty: every channel) per source");
  const at::Tensor& first = sources[0];
  const int64_t N = first.size(0), H = first.size(1), W = first.size(2);
  std::vector<const float*> data;
  std::vector<const int64_t*> picks;
  std::vector<int64_t> widths, counts;
  int64_t channels = 0;
  for (size_t i = 0; i < sources.size(); ++i) {
    const at::Tensor& source = sources[i];
    TORCH_CHECK(source.dim() == 4 && source.is_contiguous() &&
                    source.scalar_type() == at::kFloat && source.size(0) == N &&
                    source.size(1) == H && source.size(2) == W,
                "sources: contiguous float32 [N, H, W, C] tensors of one size");
    const at::Tensor& index = indices[i];
    const int64_t width = source.size(3);
    int64_t count = width;
    const int64_t* pick = nullptr;
    if (index.numel()) {
      TORCH_CHECK(index.dim() == 1 && index.is_contiguous() && index.scalar_type() == at::kLong,
                  "indices: int64 channel positions");
      pick = index.data_ptr<int64_t>();
      count = index.numel();
      for (int64_t j = 0; j < count; ++j)
        TORCH_CHECK(pick[j] >= 0 && pick[j] < width, "an index is out of its source's channels");
    }
    data.push_back(source.data_ptr<float>());
    picks.push_back(pick);
    widths.push_back(width);
    counts.push_back(count);
    channels += count;
  }
  auto gathered = at::empty({N, H, W, channels}, first.options());
  float* g = gathered.data_ptr<float>();
  at::parallel_for(0, N * H * W, 64, [&](int64_t begin, int64_t end) {
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      float* out = g + pixel * channels;
      for (size_t s = 0; s < data.size(); ++s) {
        const float* src = data[s] + pixel * widths[s];
        if (picks[s]) {
          for (int64_t j = 0; j < counts[s]; ++j) out[j] = src[picks[s][j]];
        } else {
          std::copy(src, src + counts[s], out);
        }
        out += counts[s];
      }
    }
  });
  return gathered;
}

}  // namespace

TORCH_LIBRARY(adafuse_direct, m) {
  m.def(
      "subset_conv(Tensor input, Tensor rows, Tensor weight, Tensor bias, Tensor? add, "
      "int out_h, int out_w, int stride_h, int stride_w, int pad_h, int pad_w, "
      "int kernel_h, int kernel_w, int out_channels, bool relu) -> Tensor");
  m.def("pack_blocks(Tensor weight, Tensor outputs) -> Tensor");
  m.def(
      "gather_channels(Tensor[] sources, Tensor[] indices) -> Tensor");
  m.def(
      "subset_conv_outputs(Tensor input, Tensor weight, Tensor outputs, Tensor bias, "
      "int out_h, int out_w, int stride_h, int stride_w, int pad_h, int pad_w, "
      "int kernel_h, int kernel_w, bool relu) -> Tensor");
  m.def(
      "subset_conv_planar(Tensor input, Tensor weight, Tensor outputs, Tensor bias, "
      "int out_h, int out_w, int pad_h, int pad_w, int kernel_h, int kernel_w, bool relu) "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(adafuse_direct, CPU, m) {
  m.impl("subset_conv", &subset_conv);
  m.impl("pack_blocks", &pack_blocks);
  m.impl("gather_channels", &gather_channels);
  m.impl("subset_conv_outputs", &subset_conv_outputs);
  m.impl("subset_conv_planar", &subset_conv_planar);
}
