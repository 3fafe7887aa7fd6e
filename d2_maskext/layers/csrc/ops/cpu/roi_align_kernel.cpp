// CPU kernels of d2_maskext::roi_align.
//
// RoIAlign is separable: out[c, ph, pw] = sum_y sum_x Wy[ph, y] * Wx[pw, x] * map[c, y, x], where
// Wy/Wx are the bilinear weights of a bin's samples summed per pixel (and divided by the sample count).
// Each roi's two small banded weight tables are built once; pooling is then two short passes (over y,
// then over x) whose inner loops run over channels, so they vectorize however small the roi is.
//
// Channels must be contiguous for that. NHWC maps are used as they are; NCHW maps are copied, 16 channels
// at a time, into a small channel-interleaved tile covering the rois of one (image, level), and every
// roi is pooled from that tile (the backward accumulates into such a tile and writes it out once).
// Work is split into (image, channel chunk) tasks. A task owns its channels of the output and of the
// gradient, so the backward needs no atomics, and adds rois in a fixed order, so it is deterministic.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <limits>
#include <vector>

#include "ops/roi_align.h"
#include "ops/roi_align_common.h"

// Hot loops are compiled for AVX-512, AVX2+FMA and baseline x86-64, picked at load time by the CPU.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define D2MX_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define D2MX_SIMD_CLONES
#endif
// Helpers called from those loops are inlined into them, so they are compiled for the same instruction set.
#if defined(__GNUC__)
#define D2MX_INLINE inline __attribute__((always_inline))
#else
#define D2MX_INLINE inline
#endif

namespace d2_maskext {
namespace {

using roi_align_detail::LevelTable;
using roi_align_detail::RoiGeometry;

// Channels per NCHW tile: one 64-byte vector of float32 per pixel.
constexpr int64_t kTileChannels = 16;

// Summed bilinear weights of every bin of one roi along one axis, over the pixels the roi touches.
template <typename acc_t>
class AxisWeights {
 public:
  // Returns false when no sample of any bin lies on the map, i.e. the roi pools to zeros.
  bool build(acc_t start, acc_t bin, int64_t grid, int64_t bins, int64_t size) {
    using roi_align_detail::axis_sample;
    using roi_align_detail::bin_start;
    using roi_align_detail::sample_position;
    sample_first_.assign(bins, 0);
    sample_last_.assign(bins, 0);
    bin_first_.assign(bins, 0);
    bin_last_.assign(bins, 0);
    int64_t lo_all = std::numeric_limits<int64_t>::max();
    int64_t hi_all = -1;
    for (int64_t p = 0; p < bins; ++p) {
      const acc_t origin = bin_start(start, bin, p);
      roi_align_detail::sample_range(origin, bin, grid, size, &sample_first_[p], &sample_last_[p]);
      int64_t lo = std::numeric_limits<int64_t>::max();
      int64_t hi = -1;
      for (int64_t i = sample_first_[p]; i < sample_last_[p]; ++i) {
        const auto s = axis_sample(sample_position(origin, bin, i, grid), size);
        if (s.valid) {
          lo = std::min(lo, s.low);
          hi = std::max(hi, s.high);
        }
      }
      if (hi >= 0) {
        bin_first_[p] = lo;
        bin_last_[p] = hi + 1;
        lo_all = std::min(lo_all, lo);
        hi_all = std::max(hi_all, hi);
      }
    }
    if (hi_all < 0) {
      return false;
    }
    first_ = lo_all;
    extent_ = hi_all + 1 - lo_all;
    weights_.assign(bins * extent_, acc_t(0));
    const acc_t inv_grid = acc_t(1) / static_cast<acc_t>(grid);
    for (int64_t p = 0; p < bins; ++p) {
      const acc_t origin = bin_start(start, bin, p);
      acc_t* row = weights_.data() + p * extent_;
      for (int64_t i = sample_first_[p]; i < sample_last_[p]; ++i) {
        const auto s = axis_sample(sample_position(origin, bin, i, grid), size);
        if (s.valid) {
          row[s.low - first_] += s.w_low;
          row[s.high - first_] += s.w_high;
        }
      }
      for (int64_t x = bin_first_[p]; x < bin_last_[p]; ++x) {
        row[x - first_] *= inv_grid;
      }
    }
    // Bins each pixel belongs to (a contiguous range: bins tile the roi in order).
    pixel_bin_first_.assign(extent_, bins);
    pixel_bin_last_.assign(extent_, 0);
    for (int64_t p = 0; p < bins; ++p) {
      for (int64_t x = bin_first_[p]; x < bin_last_[p]; ++x) {
        pixel_bin_first_[x - first_] = std::min(pixel_bin_first_[x - first_], p);
        pixel_bin_last_[x - first_] = std::max(pixel_bin_last_[x - first_], p + 1);
      }
    }
    return true;
  }

  int64_t first() const { return first_; }
  int64_t extent() const { return extent_; }
  int64_t bin_first(int64_t p) const { return bin_first_[p]; }
  int64_t bin_last(int64_t p) const { return bin_last_[p]; }
  // Summed weight of pixel `x` (absolute index, within [bin_first(p), bin_last(p))) in bin `p`.
  acc_t weight(int64_t p, int64_t x) const { return weights_[p * extent_ + x - first_]; }
  // Bins [pixel_bin_first(x), pixel_bin_last(x)) read pixel `x` (absolute index within the extent).
  int64_t pixel_bin_first(int64_t x) const { return pixel_bin_first_[x - first_]; }
  int64_t pixel_bin_last(int64_t x) const { return pixel_bin_last_[x - first_]; }

 private:
  std::vector<int64_t> sample_first_, sample_last_, bin_first_, bin_last_, pixel_bin_first_, pixel_bin_last_;
  std::vector<acc_t> weights_;
  int64_t first_ = 0;
  int64_t extent_ = 0;
};

// Sums run over kChunk values at a time (four 64-byte vectors of float32), then kVector, accumulated in
// registers; widths are compile-time constants so the loops vectorize fully. A shorter tail uses `width`.
constexpr int64_t kVector = 16;
constexpr int64_t kChunk = 4 * kVector;

template <int64_t kWidth, bool kAdd, typename acc_t, typename dst_t, typename Weight, typename Source>
D2MX_INLINE void weighted_block(dst_t* __restrict__ dst, int64_t width, int64_t first, int64_t last, const Weight& weight,
                           const Source& source) {
  const int64_t n = kWidth > 0 ? kWidth : width;
  acc_t acc[kWidth > 0 ? kWidth : kVector] = {};
  for (int64_t i = first; i < last; ++i) {
    const acc_t w = weight(i);
    const auto* __restrict__ src = source(i);
    for (int64_t j = 0; j < n; ++j) {
      acc[j] += w * static_cast<acc_t>(src[j]);
    }
  }
  for (int64_t j = 0; j < n; ++j) {
    dst[j] = kAdd ? dst[j] + acc[j] : acc[j];
  }
}

// dst[0:n] = (kAdd ? dst[0:n] : 0) + sum_{i in [first, last)} weight(i) * source(i)[0:n].
template <bool kAdd, typename acc_t, typename dst_t, typename Weight, typename Source>
D2MX_INLINE void weighted_run(dst_t* dst, int64_t n, int64_t first, int64_t last, const Weight& weight,
                         const Source& source) {
  int64_t c = 0;
  const auto from = [&](int64_t offset) { return [&source, offset](int64_t i) { return source(i) + offset; }; };
  for (; c + kChunk <= n; c += kChunk) {
    weighted_block<kChunk, kAdd, acc_t>(dst + c, kChunk, first, last, weight, from(c));
  }
  for (; c + kVector <= n; c += kVector) {
    weighted_block<kVector, kAdd, acc_t>(dst + c, kVector, first, last, weight, from(c));
  }
  if (c < n) {
    weighted_block<0, kAdd, acc_t>(dst + c, n - c, first, last, weight, from(c));
  }
}

// out[j * out_stride + i] = in[i * in_stride + j] for i < rows, j < cols, in kVector squares (which
// compile to vector shuffles) and a remainder.
template <typename In, typename Out>
D2MX_INLINE void transpose(const In* __restrict__ in, int64_t in_stride, Out* __restrict__ out, int64_t out_stride,
                      int64_t rows, int64_t cols) {
  for (int64_t i0 = 0; i0 < rows; i0 += kVector) {
    for (int64_t j0 = 0; j0 < cols; j0 += kVector) {
      const In* src = in + i0 * in_stride + j0;
      Out* dst = out + j0 * out_stride + i0;
      if (i0 + kVector <= rows && j0 + kVector <= cols) {
        for (int64_t j = 0; j < kVector; ++j) {
          for (int64_t i = 0; i < kVector; ++i) {
            dst[j * out_stride + i] = static_cast<Out>(src[i * in_stride + j]);
          }
        }
      } else {
        for (int64_t j = 0; j < std::min(kVector, cols - j0); ++j) {
          for (int64_t i = 0; i < std::min(kVector, rows - i0); ++i) {
            dst[j * out_stride + i] = static_cast<Out>(src[i * in_stride + j]);
          }
        }
      }
    }
  }
}

// Pixels of one image of one level (or of a tile cut from it at `y_origin`, `x_origin`) whose first
// `inner` values, from `data` on, are the channels a task works on.
template <typename T>
struct PixelView {
  T* data;
  int64_t row_stride, pixel_stride, y_origin, x_origin;
  T* at(int64_t y, int64_t x) const {
    return data + (y - y_origin) * row_stride + (x - x_origin) * pixel_stride;
  }
};

// Scratch of one task, reused from roi to roi.
template <typename acc_t>
struct Scratch {
  std::vector<acc_t> rows, bins;
};

// Pools one roi for `inner` channels from `map` into `out` ([inner][PH][PW], channel stride PH * PW):
// rows[x] = sum_y Wy[ph, y] * map[y, x] over the roi's x extent, then bin[ph, pw] = sum_x Wx[pw, x] * rows[x].
template <typename scalar_t, typename acc_t>
D2MX_SIMD_CLONES void pool_roi(
    PixelView<const scalar_t> map,
    int64_t inner,
    const AxisWeights<acc_t>& wy,
    const AxisWeights<acc_t>& wx,
    int64_t pooled_height,
    int64_t pooled_width,
    Scratch<acc_t>& scratch,
    scalar_t* __restrict__ out) {
  const int64_t extent = wx.extent();
  const int64_t x0 = wx.first();
  const int64_t bins = pooled_height * pooled_width;
  scratch.rows.resize(extent * inner);
  scratch.bins.resize(bins * inner);
  acc_t* rows = scratch.rows.data();  // [x][channel]
  acc_t* bin_values = scratch.bins.data();  // [bin][channel]
  for (int64_t ph = 0; ph < pooled_height; ++ph) {
    const auto w_y = [&](int64_t y) { return wy.weight(ph, y); };
    if (map.pixel_stride == inner) {  // the roi's pixels of a row are one contiguous run
      weighted_run<false, acc_t>(
          rows, extent * inner, wy.bin_first(ph), wy.bin_last(ph), w_y, [&](int64_t y) { return map.at(y, x0); });
    } else {
      for (int64_t x = 0; x < extent; ++x) {
        weighted_run<false, acc_t>(rows + x * inner, inner, wy.bin_first(ph), wy.bin_last(ph), w_y,
                                   [&](int64_t y) { return map.at(y, x0 + x); });
      }
    }
    for (int64_t pw = 0; pw < pooled_width; ++pw) {
      weighted_run<false, acc_t>(
          bin_values + (ph * pooled_width + pw) * inner, inner, wx.bin_first(pw), wx.bin_last(pw),
          [&](int64_t x) { return wx.weight(pw, x); }, [&](int64_t x) { return rows + (x - x0) * inner; });
    }
  }
  transpose(bin_values, inner, out, bins, bins, inner);
}

// Adds one roi's gradient for `inner` channels into `grad_map`; `grad_out` is laid out as `out` above:
// rows[ph, x] = sum_pw grad[ph, pw] * Wx[pw, x], then map[y, x] += sum_ph Wy[ph, y] * rows[ph, x].
template <typename scalar_t, typename acc_t>
D2MX_SIMD_CLONES void unpool_roi(
    const scalar_t* __restrict__ grad_out,
    PixelView<acc_t> grad_map,
    int64_t inner,
    const AxisWeights<acc_t>& wy,
    const AxisWeights<acc_t>& wx,
    int64_t pooled_height,
    int64_t pooled_width,
    Scratch<acc_t>& scratch) {
  const int64_t extent = wx.extent();
  const int64_t x0 = wx.first();
  const int64_t bins = pooled_height * pooled_width;
  scratch.rows.resize(pooled_height * extent * inner);
  scratch.bins.resize(bins * inner);
  acc_t* rows = scratch.rows.data();  // [ph][x][channel]
  acc_t* bin_grads = scratch.bins.data();  // [bin][channel]
  transpose(grad_out, bins, bin_grads, inner, inner, bins);
  for (int64_t ph = 0; ph < pooled_height; ++ph) {
    if (wy.bin_last(ph) <= wy.bin_first(ph)) {
      std::fill(rows + ph * extent * inner, rows + (ph + 1) * extent * inner, acc_t(0));  // reads no pixel row
      continue;
    }
    for (int64_t x = x0; x < x0 + extent; ++x) {
      weighted_run<false, acc_t>(
          rows + (ph * extent + x - x0) * inner, inner, wx.pixel_bin_first(x), wx.pixel_bin_last(x),
          [&](int64_t pw) { return wx.weight(pw, x); },
          [&](int64_t pw) { return bin_grads + (ph * pooled_width + pw) * inner; });
    }
  }
  for (int64_t y = wy.first(); y < wy.first() + wy.extent(); ++y) {
    const auto w_y = [&](int64_t ph) { return wy.weight(ph, y); };
    if (grad_map.pixel_stride == inner) {  // the roi's pixels of a row are one contiguous run
      weighted_run<true, acc_t>(grad_map.at(y, x0), extent * inner, wy.pixel_bin_first(y), wy.pixel_bin_last(y), w_y,
                                [&](int64_t ph) { return rows + ph * extent * inner; });
    } else {
      for (int64_t x = 0; x < extent; ++x) {
        weighted_run<true, acc_t>(grad_map.at(y, x0 + x), inner, wy.pixel_bin_first(y), wy.pixel_bin_last(y), w_y,
                                  [&](int64_t ph) { return rows + (ph * extent + x) * inner; });
      }
    }
  }
}

// A rectangle of pixels [y0, y1) x [x0, x1).
struct Box {
  int64_t y0 = 0, y1 = 0, x0 = 0, x1 = 0;
  int64_t height() const { return y1 - y0; }
  int64_t width() const { return x1 - x0; }
};

// tile[y - box.y0][x - box.x0][c] = planes[c][y][x] over the box, for channels c < n.
template <typename scalar_t>
D2MX_SIMD_CLONES void gather_tile(
    const scalar_t* __restrict__ planes, int64_t width, int64_t plane_stride, int64_t n, Box box,
    scalar_t* __restrict__ tile) {
  for (int64_t y = box.y0; y < box.y1; ++y) {
    transpose(planes + y * width + box.x0, plane_stride, tile + (y - box.y0) * box.width() * n, n, n, box.width());
  }
}

// planes[c][y][x] = tile[y - box.y0][x - box.x0][c] inside the box and 0 elsewhere, for channels c < n.
template <typename acc_t>
D2MX_SIMD_CLONES void scatter_tile(
    const acc_t* __restrict__ tile, Box box, int64_t n, int64_t height, int64_t width, int64_t plane_stride,
    acc_t* __restrict__ planes) {
  for (int64_t y = 0; y < height; ++y) {
    const bool in_box = y >= box.y0 && y < box.y1;
    for (int64_t c = 0; c < n; ++c) {
      acc_t* dst = planes + c * plane_stride + y * width;
      std::fill(dst, dst + (in_box ? box.x0 : width), acc_t(0));
      if (in_box) {
        std::fill(dst + box.x1, dst + width, acc_t(0));
      }
    }
    if (in_box) {
      transpose(tile + (y - box.y0) * box.width() * n, n, planes + y * width + box.x0, plane_stride, box.width(), n);
    }
  }
}

struct PoolingParams {
  int64_t pooled_height, pooled_width, sampling_ratio;
  bool aligned;
};

// Everything about the rois that does not depend on the channel: their weight tables and their order
// grouped by (image, level).
template <typename acc_t>
struct RoiPlan {
  std::vector<AxisWeights<acc_t>> wy, wx;
  std::vector<char> pooled;            // false: the roi's output is zero (and it has no gradient)
  std::vector<int64_t> order;          // rois with pooled == true, grouped, each group sorted by top row
  std::vector<int64_t> group_begin;    // group (image, level) is order[group_begin[g] : group_begin[g + 1]]
  std::vector<Box> group_box;          // pixels the rois of a group touch
  int num_levels = 0;

  const int64_t* group(int64_t image, int level, int64_t* size) const {
    const int64_t g = image * num_levels + level;
    *size = group_begin[g + 1] - group_begin[g];
    return order.data() + group_begin[g];
  }
};

// Validates the boxes (non-finite values and batch indices out of range are errors), then builds the plan.
template <typename acc_t, typename element_t>
RoiPlan<acc_t> plan_rois(const LevelTable<element_t>& table, const at::Tensor& rois, const int64_t* levels,
                         int64_t batch_size, const PoolingParams& p) {
  const acc_t* roi_data = rois.const_data_ptr<acc_t>();
  const int64_t num_rois = rois.size(0);
  std::vector<int64_t> image(num_rois, -1);
  std::vector<int> level(num_rois, 0);
  for (int64_t k = 0; k < num_rois; ++k) {
    const acc_t* roi = roi_data + k * 5;
    roi_align_detail::check_roi_values(roi, k, batch_size);
    if (!roi_align_detail::roi_target(roi, levels, k, table.num_levels, batch_size, &image[k], &level[k])) {
      image[k] = -1;  // level outside the table
    }
  }
  RoiPlan<acc_t> plan;
  plan.num_levels = table.num_levels;
  plan.wy.resize(num_rois);
  plan.wx.resize(num_rois);
  plan.pooled.assign(num_rois, 0);
  at::parallel_for(0, num_rois, 16, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      if (image[k] < 0) {
        continue;
      }
      const int l = level[k];
      RoiGeometry<acc_t> g;
      plan.pooled[k] = roi_align_detail::roi_geometry(
                           roi_data + k * 5, static_cast<acc_t>(table.scale[l]), p.pooled_height, p.pooled_width,
                           p.sampling_ratio, p.aligned, &g) &&
          plan.wy[k].build(g.start_h, g.bin_h, g.grid_h, p.pooled_height, table.height[l]) &&
          plan.wx[k].build(g.start_w, g.bin_w, g.grid_w, p.pooled_width, table.width[l]);
    }
  });
  const int64_t groups = batch_size * table.num_levels;
  plan.group_begin.assign(groups + 1, 0);
  for (int64_t k = 0; k < num_rois; ++k) {
    if (plan.pooled[k]) {
      ++plan.group_begin[image[k] * table.num_levels + level[k] + 1];
    }
  }
  for (int64_t g = 0; g < groups; ++g) {
    plan.group_begin[g + 1] += plan.group_begin[g];
  }
  plan.order.resize(plan.group_begin[groups]);
  std::vector<int64_t> fill(plan.group_begin.begin(), plan.group_begin.end() - 1);
  for (int64_t k = 0; k < num_rois; ++k) {
    if (plan.pooled[k]) {
      plan.order[fill[image[k] * table.num_levels + level[k]]++] = k;
    }
  }
  plan.group_box.resize(groups);
  for (int64_t g = 0; g < groups; ++g) {
    // Top to bottom, so consecutive rois read (or write) neighbouring rows of a tile.
    std::stable_sort(
        plan.order.begin() + plan.group_begin[g], plan.order.begin() + plan.group_begin[g + 1],
        [&](int64_t a, int64_t b) { return plan.wy[a].first() < plan.wy[b].first(); });
    Box& box = plan.group_box[g];
    for (int64_t i = plan.group_begin[g]; i < plan.group_begin[g + 1]; ++i) {
      const int64_t k = plan.order[i];
      const Box roi{plan.wy[k].first(), plan.wy[k].first() + plan.wy[k].extent(), plan.wx[k].first(),
                    plan.wx[k].first() + plan.wx[k].extent()};
      box = i == plan.group_begin[g] ? roi
                                     : Box{std::min(box.y0, roi.y0), std::max(box.y1, roi.y1),
                                           std::min(box.x0, roi.x0), std::max(box.x1, roi.x1)};
    }
  }
  return plan;
}

// Runs task(image, c_begin, c_end) for every image and every tile-wide channel chunk. Threads pull tasks
// from a shared counter rather than taking fixed halves, so a thread slowed down by other processes on the
// machine does not hold the others up; results do not depend on which thread runs a task.
template <typename Task>
void for_each_task(int64_t batch_size, int64_t channels, const Task& task) {
  const int64_t chunks = std::max<int64_t>(1, (channels + kTileChannels - 1) / kTileChannels);
  const int64_t total = batch_size * chunks;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), total), 1, [&](int64_t, int64_t) {
    for (int64_t t = next++; t < total; t = next++) {
      const int64_t c_begin = (t % chunks) * kTileChannels;
      task(t / chunks, c_begin, std::min(channels, c_begin + kTileChannels));
    }
  });
}

template <typename scalar_t>
void forward_impl(const LevelTable<const scalar_t>& table, int64_t channels, bool channels_last,
                  const at::Tensor& rois, const int64_t* levels, int64_t batch_size, const PoolingParams& p,
                  at::Tensor& output) {
  using acc_t = at::opmath_type<scalar_t>;
  const RoiPlan<acc_t> plan = plan_rois<acc_t>(table, rois, levels, batch_size, p);
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const int64_t bins = p.pooled_height * p.pooled_width;
  const int64_t roi_numel = channels * bins;
  for (int64_t k = 0; k < rois.size(0); ++k) {
    if (!plan.pooled[k]) {
      std::fill(out + k * roi_numel, out + (k + 1) * roi_numel, scalar_t(0));
    }
  }
  for_each_task(batch_size, channels, [&](int64_t image, int64_t c_begin, int64_t c_end) {
    thread_local std::vector<scalar_t> tile;  // kept between calls: a fresh one page-faults every time
    Scratch<acc_t> scratch;
    // Pools every roi of the group from `view` into output channels [c, c + inner).
    const auto pool_group = [&](const int64_t* group, int64_t count, PixelView<const scalar_t> view, int64_t c,
                                int64_t inner) {
      for (int64_t i = 0; i < count; ++i) {
        const int64_t k = group[i];
        pool_roi<scalar_t, acc_t>(
            view, inner, plan.wy[k], plan.wx[k], p.pooled_height, p.pooled_width, scratch,
            out + k * roi_numel + c * bins);
      }
    };
    for (int level = 0; level < table.num_levels; ++level) {
      int64_t count = 0;
      const int64_t* group = plan.group(image, level, &count);
      if (count == 0) {
        continue;
      }
      const int64_t height = table.height[level];
      const int64_t width = table.width[level];
      const scalar_t* map = table.data[level] + image * channels * height * width;
      if (channels_last) {
        pool_group(group, count, {map + c_begin, width * channels, channels, 0, 0}, c_begin, c_end - c_begin);
        continue;
      }
      const Box box = plan.group_box[image * table.num_levels + level];
      for (int64_t c = c_begin; c < c_end; c += kTileChannels) {
        const int64_t n = std::min(kTileChannels, c_end - c);
        tile.resize(box.height() * box.width() * n);
        gather_tile(map + c * height * width, width, height * width, n, box, tile.data());
        pool_group(group, count, {tile.data(), box.width() * n, n, box.y0, box.x0}, c, n);
      }
    }
  });
}

template <typename scalar_t>
void backward_impl(const at::Tensor& grad, bool channels_last, const at::Tensor& rois, const int64_t* levels,
                   const LevelTable<at::opmath_type<scalar_t>>& grad_maps, int64_t batch_size, int64_t channels,
                   const PoolingParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const RoiPlan<acc_t> plan = plan_rois<acc_t>(grad_maps, rois, levels, batch_size, p);
  const scalar_t* go = grad.const_data_ptr<scalar_t>();
  const int64_t bins = p.pooled_height * p.pooled_width;
  const int64_t roi_numel = channels * bins;
  for_each_task(batch_size, channels, [&](int64_t image, int64_t c_begin, int64_t c_end) {
    thread_local std::vector<acc_t> tile;  // kept between calls: a fresh one page-faults every time
    Scratch<acc_t> scratch;
    // Adds the gradient of every roi of the group, channels [c, c + inner), into `view`.
    const auto unpool_group = [&](const int64_t* group, int64_t count, PixelView<acc_t> view, int64_t c,
                                  int64_t inner) {
      for (int64_t i = 0; i < count; ++i) {
        const int64_t k = group[i];
        unpool_roi<scalar_t, acc_t>(
            go + k * roi_numel + c * bins, view, inner, plan.wy[k], plan.wx[k], p.pooled_height, p.pooled_width,
            scratch);
      }
    };
    for (int level = 0; level < grad_maps.num_levels; ++level) {
      int64_t count = 0;
      const int64_t* group = plan.group(image, level, &count);
      const int64_t height = grad_maps.height[level];
      const int64_t width = grad_maps.width[level];
      acc_t* grad_map = grad_maps.data[level] + image * channels * height * width;
      if (channels_last) {
        // This task's channel slice of every pixel starts at zero.
        for (int64_t px = 0; px < height * width; ++px) {
          std::fill(grad_map + px * channels + c_begin, grad_map + px * channels + c_end, acc_t(0));
        }
        unpool_group(group, count, {grad_map + c_begin, width * channels, channels, 0, 0}, c_begin, c_end - c_begin);
        continue;
      }
      const Box box = plan.group_box[image * grad_maps.num_levels + level];
      for (int64_t c = c_begin; c < c_end; c += kTileChannels) {
        const int64_t n = std::min(kTileChannels, c_end - c);
        tile.assign(box.height() * box.width() * n, acc_t(0));
        unpool_group(group, count, {tile.data(), box.width() * n, n, box.y0, box.x0}, c, n);
        scatter_tile(tile.data(), box, n, height, width, height * width, grad_map + c * height * width);
      }
    }
  });
}

at::Tensor roi_align_forward_cpu(
    at::TensorList features,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& levels,
    at::ArrayRef<double> spatial_scales,
    int64_t pooled_height,
    int64_t pooled_width,
    int64_t sampling_ratio,
    bool aligned) {
  roi_align_detail::check_forward_inputs(features, rois, levels, spatial_scales, pooled_height, pooled_width);
  const bool channels_last = roi_align_detail::use_channels_last(features);
  std::vector<at::Tensor> maps;
  for (const auto& f : features) {
    maps.push_back(channels_last ? f : f.contiguous());
  }
  const at::Tensor& first = maps[0];
  const int64_t batch_size = first.size(0);
  const int64_t channels = first.size(1);
  const at::Tensor rois_acc = rois.to(roi_align_detail::accumulate_type(first.scalar_type())).contiguous();
  const at::Tensor levels_long = roi_align_detail::levels_as_long(levels);
  const int64_t* level_data = levels_long.defined() ? levels_long.const_data_ptr<int64_t>() : nullptr;
  at::Tensor output = at::empty({rois.size(0), channels, pooled_height, pooled_width}, first.options());
  const PoolingParams params{pooled_height, pooled_width, sampling_ratio, aligned};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "roi_align_forward_cpu", [&] {
    const auto table = roi_align_detail::level_table<const scalar_t>(maps, spatial_scales);
    forward_impl<scalar_t>(table, channels, channels_last, rois_acc, level_data, batch_size, params, output);
  });
  return output;
}

std::vector<at::Tensor> roi_align_backward_cpu(
    const at::Tensor& grad,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& levels,
    at::ArrayRef<double> spatial_scales,
    int64_t pooled_height,
    int64_t pooled_width,
    int64_t batch_size,
    int64_t channels,
    at::IntArrayRef heights,
    at::IntArrayRef widths,
    int64_t sampling_ratio,
    bool aligned,
    bool channels_last) {
  roi_align_detail::check_backward_inputs(
      grad, rois, levels, spatial_scales, pooled_height, pooled_width, channels,
      c10::fromIntArrayRefSlow(heights), c10::fromIntArrayRefSlow(widths));
  const at::ScalarType acc_type = roi_align_detail::accumulate_type(grad.scalar_type());
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  std::vector<at::Tensor> grad_maps;
  for (size_t l = 0; l < heights.size(); ++l) {
    grad_maps.push_back(
        at::empty({batch_size, channels, heights[l], widths[l]}, grad.options().dtype(acc_type), format));
  }
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor rois_acc = rois.to(acc_type).contiguous();
  const at::Tensor levels_long = roi_align_detail::levels_as_long(levels);
  const int64_t* level_data = levels_long.defined() ? levels_long.const_data_ptr<int64_t>() : nullptr;
  const PoolingParams params{pooled_height, pooled_width, sampling_ratio, aligned};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto table = roi_align_detail::level_table<acc_t>(grad_maps, spatial_scales);
    backward_impl<scalar_t>(grad_c, channels_last, rois_acc, level_data, table, batch_size, channels, params);
  });
  if (acc_type != grad.scalar_type()) {
    for (auto& g : grad_maps) {
      g = g.to(grad.scalar_type());
    }
  }
  return grad_maps;
}

}  // namespace
}  // namespace d2_maskext

TORCH_LIBRARY_IMPL(d2_maskext, CPU, m) {
  m.impl("roi_align", &d2_maskext::roi_align_forward_cpu);
  m.impl("_roi_align_backward", &d2_maskext::roi_align_backward_cpu);
}
