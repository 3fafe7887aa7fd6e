// CPU kernels of d2_maskext::roi_align.
//
// RoIAlign is separable: out[c, ph, pw] = sum_y sum_x Wy[ph, y] * Wx[pw, x] * map[c, y, x], where
// Wy/Wx are the bilinear weights of a bin's samples summed per pixel (and divided by the sample count).
// Each roi's two small banded weight tables are built once; every channel then costs two short passes whose
// inner loops run along the contiguous axis of the map (x for NCHW, channels for NHWC) and vectorize.
//
// Work is split into (image, channel chunk) tasks. A task owns its channels of the output and of the
// gradient, so the backward needs no atomics, and adds rois in index order, so it is deterministic. For
// NCHW maps a task walks channel blocks small enough to stay in L2 and pools every roi of that level from
// them, so each map is read from memory about once instead of once per overlapping roi.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
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

namespace d2_maskext {
namespace {

using roi_align_detail::LevelTable;
using roi_align_detail::RoiGeometry;

// Bytes of NCHW planes a task keeps hot while it pools every roi of a level from them (about half of L2).
constexpr int64_t kPlaneBlockBytes = 1 << 20;

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
    return true;
  }

  int64_t first() const { return first_; }
  int64_t extent() const { return extent_; }
  int64_t bin_first(int64_t p) const { return bin_first_[p]; }
  int64_t bin_last(int64_t p) const { return bin_last_[p]; }
  // Weight of pixel `x` (absolute index, within [bin_first(p), bin_last(p))) is bin_weights(p)[x - first()].
  const acc_t* bin_weights(int64_t p) const { return weights_.data() + p * extent_; }

 private:
  std::vector<int64_t> sample_first_, sample_last_, bin_first_, bin_last_;
  std::vector<acc_t> weights_;
  int64_t first_ = 0;
  int64_t extent_ = 0;
};

template <typename dst_t, typename src_t, typename acc_t>
inline void axpy(dst_t* __restrict__ dst, const src_t* __restrict__ src, acc_t w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    dst[i] = static_cast<dst_t>(static_cast<acc_t>(dst[i]) + w * static_cast<acc_t>(src[i]));
  }
}

// NCHW rows are short (a roi spans a few dozen pixels), so they are processed in whole blocks of kBlock
// values: fully vectorized, with no scalar tail. Callers make sure the extra values may be touched.
constexpr int64_t kBlock = 16;

inline int64_t round_up_to_block(int64_t n) {
  return (n + kBlock - 1) / kBlock * kBlock;
}

template <typename dst_t, typename src_t, typename acc_t>
inline void axpy_blocks(dst_t* __restrict__ dst, const src_t* __restrict__ src, acc_t w, int64_t n_blocked) {
  for (int64_t i = 0; i < n_blocked; i += kBlock) {
    for (int64_t j = 0; j < kBlock; ++j) {
      dst[i + j] = static_cast<dst_t>(static_cast<acc_t>(dst[i + j]) + w * static_cast<acc_t>(src[i + j]));
    }
  }
}

// dst[x][0:inner] += w * src[x][0:inner] for `pixels` pixels, each side with its own pixel stride.
template <typename dst_t, typename src_t, typename acc_t>
inline void axpy_pixels(
    dst_t* dst, int64_t dst_stride, const src_t* src, int64_t src_stride, acc_t w, int64_t pixels, int64_t inner) {
  if (dst_stride == inner && src_stride == inner) {
    axpy(dst, src, w, pixels * inner);
    return;
  }
  for (int64_t x = 0; x < pixels; ++x) {
    axpy(dst + x * dst_stride, src + x * src_stride, w, inner);
  }
}

// How one image of one level is laid out: NCHW has a plane per channel and one value per pixel; NHWC one
// plane whose pixels hold all channels. A channel range [c_begin, c_end) is then a range of planes (NCHW)
// or a slice of every pixel (NHWC).
template <bool kChannelsLast>
struct MapLayout {
  int64_t channels, height, width;
  int64_t pixel_stride() const { return kChannelsLast ? channels : 1; }
  int64_t plane_stride() const { return height * width; }
  int64_t row_stride() const { return width * pixel_stride(); }
  int64_t image_stride() const { return channels * height * width; }
  int64_t planes(int64_t c_begin, int64_t c_end) const { return kChannelsLast ? 1 : c_end - c_begin; }
  int64_t inner(int64_t c_begin, int64_t c_end) const { return kChannelsLast ? c_end - c_begin : 1; }
  // Offset of plane `plane` of the range, at pixel (0, 0).
  int64_t offset(int64_t c_begin, int64_t plane) const {
    return kChannelsLast ? c_begin : (c_begin + plane) * plane_stride();
  }
  // Accumulators of one row of a roi spanning `extent` pixels (NCHW: rounded up to whole blocks).
  int64_t row_scratch(int64_t extent, int64_t c_begin, int64_t c_end) const {
    return kChannelsLast ? extent * inner(c_begin, c_end) : round_up_to_block(extent);
  }
};

// Pools one roi for channels [c_begin, c_end) from `map` (its image on its level) into `out` ([C][PH][PW]).
// `map_end` bounds the level's data (NCHW rows read whole blocks when they stay below it).
// Scratch: `rows` holds layout.row_scratch() accumulators, `bin_sum` one per channel of the range.
template <typename scalar_t, typename acc_t, bool kChannelsLast>
D2MX_SIMD_CLONES void pool_roi(
    const scalar_t* map,
    const scalar_t* map_end,
    MapLayout<kChannelsLast> layout,
    int64_t c_begin,
    int64_t c_end,
    const AxisWeights<acc_t>& wy,
    const AxisWeights<acc_t>& wx,
    int64_t pooled_height,
    int64_t pooled_width,
    acc_t* __restrict__ rows,
    acc_t* __restrict__ bin_sum,
    scalar_t* __restrict__ out) {
  const int64_t inner = layout.inner(c_begin, c_end);
  const int64_t pixel_stride = layout.pixel_stride();
  const int64_t extent = wx.extent();
  const int64_t run = layout.row_scratch(extent, c_begin, c_end);
  const int64_t bins = pooled_height * pooled_width;
  const int64_t y0 = wy.first();
  const int64_t x0 = wx.first();
  for (int64_t plane = 0; plane < layout.planes(c_begin, c_end); ++plane) {
    const scalar_t* src = map + layout.offset(c_begin, plane) + x0 * pixel_stride;
    scalar_t* dst = out + (c_begin + plane) * bins;
    for (int64_t ph = 0; ph < pooled_height; ++ph) {
      // rows[x] = sum_y Wy[ph, y] * map[y, x] over the roi's x extent.
      std::fill(rows, rows + run, acc_t(0));
      const acc_t* w_y = wy.bin_weights(ph);
      for (int64_t y = wy.bin_first(ph); y < wy.bin_last(ph); ++y) {
        const scalar_t* row = src + y * layout.row_stride();
        if constexpr (kChannelsLast) {
          axpy_pixels(rows, inner, row, pixel_stride, w_y[y - y0], extent, inner);
        } else if (row + run <= map_end) {
          axpy_blocks(rows, row, w_y[y - y0], run);  // values past the extent are never read back
        } else {
          axpy(rows, row, w_y[y - y0], extent);
        }
      }
      // out[ph, pw] = sum_x Wx[pw, x] * rows[x] over the pixels of bin pw.
      for (int64_t pw = 0; pw < pooled_width; ++pw) {
        const acc_t* w_x = wx.bin_weights(pw);
        if constexpr (kChannelsLast) {
          std::fill(bin_sum, bin_sum + inner, acc_t(0));
          for (int64_t x = wx.bin_first(pw); x < wx.bin_last(pw); ++x) {
            axpy(bin_sum, rows + (x - x0) * inner, w_x[x - x0], inner);
          }
          for (int64_t c = 0; c < inner; ++c) {
            dst[c * bins + ph * pooled_width + pw] = static_cast<scalar_t>(bin_sum[c]);
          }
        } else {
          acc_t sum = 0;
          for (int64_t x = wx.bin_first(pw); x < wx.bin_last(pw); ++x) {
            sum += w_x[x - x0] * rows[x - x0];
          }
          dst[ph * pooled_width + pw] = static_cast<scalar_t>(sum);
        }
      }
    }
  }
}

// Adds one roi's gradient for channels [c_begin, c_end) into `grad_map` (its image on its level, in the
// accumulator type). `grad_out` is the roi's [C][PH][PW] output gradient. Scratch as for pool_roi.
template <typename scalar_t, typename acc_t, bool kChannelsLast>
D2MX_SIMD_CLONES void unpool_roi(
    const scalar_t* grad_out,
    MapLayout<kChannelsLast> layout,
    int64_t c_begin,
    int64_t c_end,
    const AxisWeights<acc_t>& wy,
    const AxisWeights<acc_t>& wx,
    int64_t pooled_height,
    int64_t pooled_width,
    acc_t* __restrict__ rows,
    acc_t* __restrict__ bin_grad,
    acc_t* grad_map) {
  const int64_t inner = layout.inner(c_begin, c_end);
  const int64_t pixel_stride = layout.pixel_stride();
  const int64_t extent = wx.extent();
  const int64_t run = layout.row_scratch(extent, c_begin, c_end);
  const int64_t bins = pooled_height * pooled_width;
  const int64_t y0 = wy.first();
  const int64_t x0 = wx.first();
  for (int64_t plane = 0; plane < layout.planes(c_begin, c_end); ++plane) {
    acc_t* plane_begin = grad_map + layout.offset(c_begin, plane);
    const acc_t* plane_end = plane_begin + layout.plane_stride();
    acc_t* dst = plane_begin + x0 * pixel_stride;
    const scalar_t* go = grad_out + (c_begin + plane) * bins;
    for (int64_t ph = 0; ph < pooled_height; ++ph) {
      if (wy.bin_last(ph) <= wy.bin_first(ph)) {
        continue;
      }
      // rows[x] = sum_pw grad[ph, pw] * Wx[pw, x]; then map[y, x] += Wy[ph, y] * rows[x].
      std::fill(rows, rows + run, acc_t(0));
      for (int64_t pw = 0; pw < pooled_width; ++pw) {
        const acc_t* w_x = wx.bin_weights(pw);
        if constexpr (kChannelsLast) {
          for (int64_t c = 0; c < inner; ++c) {
            bin_grad[c] = static_cast<acc_t>(go[c * bins + ph * pooled_width + pw]);
          }
          for (int64_t x = wx.bin_first(pw); x < wx.bin_last(pw); ++x) {
            axpy(rows + (x - x0) * inner, bin_grad, w_x[x - x0], inner);
          }
        } else {
          const acc_t g = static_cast<acc_t>(go[ph * pooled_width + pw]);
          for (int64_t x = wx.bin_first(pw); x < wx.bin_last(pw); ++x) {
            rows[x - x0] += g * w_x[x - x0];
          }
        }
      }
      const acc_t* w_y = wy.bin_weights(ph);
      for (int64_t y = wy.bin_first(ph); y < wy.bin_last(ph); ++y) {
        acc_t* row = dst + y * layout.row_stride();
        if constexpr (kChannelsLast) {
          axpy_pixels(row, pixel_stride, rows, inner, w_y[y - y0], extent, inner);
        } else if (row + run <= plane_end) {
          axpy_blocks(row, rows, w_y[y - y0], run);  // rows past the extent are 0: those pixels keep their value
        } else {
          axpy(row, rows, w_y[y - y0], extent);
        }
      }
    }
  }
}

struct PoolingParams {
  int64_t pooled_height, pooled_width, sampling_ratio;
  bool aligned;
};

// Everything about the rois that does not depend on the channel: their weight tables and their order
// grouped by (image, level), ascending roi index within a group.
template <typename acc_t>
struct RoiPlan {
  std::vector<AxisWeights<acc_t>> wy, wx;
  std::vector<char> pooled;            // false: the roi's output is zero (and it has no gradient)
  std::vector<int64_t> order;          // rois with pooled == true, grouped
  std::vector<int64_t> group_begin;    // group (image, level) is order[group_begin[g] : group_begin[g + 1]]
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
    for (int j = 0; j < 5; ++j) {
      TORCH_CHECK(
          std::isfinite(static_cast<double>(roi[j])), "roi_align: roi ", k, " = (", roi[0], ", ", roi[1], ", ",
          roi[2], ", ", roi[3], ", ", roi[4], ") has a non-finite value");
    }
    TORCH_CHECK(
        roi[0] >= 0 && roi[0] < static_cast<acc_t>(batch_size), "roi_align: roi ", k, " has batch index ",
        roi[0], " but the feature maps hold ", batch_size, " images");
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
  return plan;
}

// Splits (image, channel) work into tasks: enough to keep every thread busy; NHWC chunks stay wide
// enough to vectorize. Calls task(image, c_begin, c_end) in parallel.
template <bool kChannelsLast, typename Task>
void for_each_task(int64_t batch_size, int64_t channels, const Task& task) {
  const int64_t min_chunk = kChannelsLast ? 16 : 1;
  const int64_t wanted = (4 * at::get_num_threads() + batch_size - 1) / std::max<int64_t>(batch_size, 1);
  const int64_t chunks = std::max<int64_t>(1, std::min(wanted, channels / min_chunk));
  const int64_t chunk_size = std::max<int64_t>(1, (channels + chunks - 1) / chunks);
  at::parallel_for(0, batch_size * chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t c_begin = (t % chunks) * chunk_size;
      const int64_t c_end = std::min(channels, c_begin + chunk_size);
      if (c_begin < c_end) {
        task(t / chunks, c_begin, c_end);
      }
    }
  });
}

// Channels per block: NCHW blocks of planes that fit kPlaneBlockBytes; NHWC takes the chunk at once.
template <bool kChannelsLast>
int64_t channel_block(const MapLayout<kChannelsLast>& layout, int64_t element_size, int64_t chunk) {
  if (kChannelsLast) {
    return chunk;
  }
  return std::max<int64_t>(1, kPlaneBlockBytes / std::max<int64_t>(1, layout.plane_stride() * element_size));
}

template <typename scalar_t, bool kChannelsLast>
void forward_impl(const LevelTable<const scalar_t>& table, int64_t channels, const at::Tensor& rois,
                  const int64_t* levels, int64_t batch_size, const PoolingParams& p, at::Tensor& output) {
  using acc_t = at::opmath_type<scalar_t>;
  const RoiPlan<acc_t> plan = plan_rois<acc_t>(table, rois, levels, batch_size, p);
  scalar_t* out = output.mutable_data_ptr<scalar_t>();
  const int64_t roi_numel = channels * p.pooled_height * p.pooled_width;
  for (int64_t k = 0; k < rois.size(0); ++k) {
    if (!plan.pooled[k]) {
      std::fill(out + k * roi_numel, out + (k + 1) * roi_numel, scalar_t(0));
    }
  }
  for_each_task<kChannelsLast>(batch_size, channels, [&](int64_t image, int64_t c_begin, int64_t c_end) {
    std::vector<acc_t> rows, bin_sum(c_end - c_begin);
    for (int level = 0; level < table.num_levels; ++level) {
      int64_t count = 0;
      const int64_t* group = plan.group(image, level, &count);
      const MapLayout<kChannelsLast> layout{channels, table.height[level], table.width[level]};
      const scalar_t* map = table.data[level] + image * layout.image_stride();
      const scalar_t* map_end = table.data[level] + batch_size * layout.image_stride();
      const int64_t block = channel_block(layout, sizeof(scalar_t), c_end - c_begin);
      for (int64_t cb = c_begin; cb < c_end; cb += block) {
        const int64_t ce = std::min(c_end, cb + block);
        for (int64_t i = 0; i < count; ++i) {
          const int64_t k = group[i];
          rows.resize(layout.row_scratch(plan.wx[k].extent(), cb, ce));
          pool_roi<scalar_t, acc_t, kChannelsLast>(
              map, map_end, layout, cb, ce, plan.wy[k], plan.wx[k], p.pooled_height, p.pooled_width, rows.data(),
              bin_sum.data(), out + k * roi_numel);
        }
      }
    }
  });
}

template <typename scalar_t, bool kChannelsLast>
void backward_impl(const at::Tensor& grad, const at::Tensor& rois, const int64_t* levels,
                   const LevelTable<at::opmath_type<scalar_t>>& grad_maps, int64_t batch_size, int64_t channels,
                   const PoolingParams& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const RoiPlan<acc_t> plan = plan_rois<acc_t>(grad_maps, rois, levels, batch_size, p);
  const scalar_t* go = grad.const_data_ptr<scalar_t>();
  const int64_t roi_numel = channels * p.pooled_height * p.pooled_width;
  for_each_task<kChannelsLast>(batch_size, channels, [&](int64_t image, int64_t c_begin, int64_t c_end) {
    std::vector<acc_t> rows, bin_grad(c_end - c_begin);
    for (int level = 0; level < grad_maps.num_levels; ++level) {
      int64_t count = 0;
      const int64_t* group = plan.group(image, level, &count);
      const MapLayout<kChannelsLast> layout{channels, grad_maps.height[level], grad_maps.width[level]};
      acc_t* grad_map = grad_maps.data[level] + image * layout.image_stride();
      const int64_t block = channel_block(layout, sizeof(acc_t), c_end - c_begin);
      for (int64_t cb = c_begin; cb < c_end; cb += block) {
        const int64_t ce = std::min(c_end, cb + block);
        // This task's slice of the gradient starts at zero (zeroed here, while it is about to be used).
        for (int64_t plane = 0; plane < layout.planes(cb, ce); ++plane) {
          acc_t* slice = grad_map + layout.offset(cb, plane);
          const int64_t pixels = kChannelsLast ? layout.height * layout.width : 1;
          const int64_t width = kChannelsLast ? ce - cb : layout.plane_stride();
          for (int64_t px = 0; px < pixels; ++px) {
            std::fill(slice + px * layout.pixel_stride(), slice + px * layout.pixel_stride() + width, acc_t(0));
          }
        }
        for (int64_t i = 0; i < count; ++i) {
          const int64_t k = group[i];
          rows.resize(layout.row_scratch(plan.wx[k].extent(), cb, ce));
          unpool_roi<scalar_t, acc_t, kChannelsLast>(
              go + k * roi_numel, layout, cb, ce, plan.wy[k], plan.wx[k], p.pooled_height, p.pooled_width,
              rows.data(), bin_grad.data(), grad_map);
        }
      }
    }
  });
}

at::Tensor prepared_levels(const std::optional<at::Tensor>& levels) {
  if (!levels.has_value() || !levels->defined()) {
    return at::Tensor();
  }
  return levels->to(at::kLong).contiguous();
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
  const at::Tensor levels_long = prepared_levels(levels);
  const int64_t* level_data = levels_long.defined() ? levels_long.const_data_ptr<int64_t>() : nullptr;
  at::Tensor output = at::empty({rois.size(0), channels, pooled_height, pooled_width}, first.options());
  const PoolingParams params{pooled_height, pooled_width, sampling_ratio, aligned};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "roi_align_forward_cpu", [&] {
    LevelTable<const scalar_t> table{};
    table.num_levels = static_cast<int>(maps.size());
    for (size_t l = 0; l < maps.size(); ++l) {
      table.data[l] = maps[l].const_data_ptr<scalar_t>();
      table.height[l] = maps[l].size(2);
      table.width[l] = maps[l].size(3);
      table.scale[l] = spatial_scales[l];
    }
    if (channels_last) {
      forward_impl<scalar_t, true>(table, channels, rois_acc, level_data, batch_size, params, output);
    } else {
      forward_impl<scalar_t, false>(table, channels, rois_acc, level_data, batch_size, params, output);
    }
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
      grad, rois, levels, spatial_scales, pooled_height, pooled_width, c10::fromIntArrayRefSlow(heights),
      c10::fromIntArrayRefSlow(widths));
  TORCH_CHECK(
      grad.size(1) == channels, "roi_align backward: grad has ", grad.size(1), " channels, expected ", channels);
  const at::ScalarType acc_type = roi_align_detail::accumulate_type(grad.scalar_type());
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  std::vector<at::Tensor> grad_maps;
  for (size_t l = 0; l < heights.size(); ++l) {
    grad_maps.push_back(
        at::empty({batch_size, channels, heights[l], widths[l]}, grad.options().dtype(acc_type), format));
  }
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor rois_acc = rois.to(acc_type).contiguous();
  const at::Tensor levels_long = prepared_levels(levels);
  const int64_t* level_data = levels_long.defined() ? levels_long.const_data_ptr<int64_t>() : nullptr;
  const PoolingParams params{pooled_height, pooled_width, sampling_ratio, aligned};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    LevelTable<acc_t> table{};
    table.num_levels = static_cast<int>(heights.size());
    for (size_t l = 0; l < heights.size(); ++l) {
      table.data[l] = grad_maps[l].mutable_data_ptr<acc_t>();
      table.height[l] = heights[l];
      table.width[l] = widths[l];
      table.scale[l] = spatial_scales[l];
    }
    if (channels_last) {
      backward_impl<scalar_t, true>(grad_c, rois_acc, level_data, table, batch_size, channels, params);
    } else {
      backward_impl<scalar_t, false>(grad_c, rois_acc, level_data, table, batch_size, channels, params);
    }
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
