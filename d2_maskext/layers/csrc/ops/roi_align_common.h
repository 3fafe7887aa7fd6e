// Per-sample RoIAlign math shared by the CPU and CUDA kernels.
//
// The semantics are torchvision's roi_align (same sample positions, same validity test, same clamping),
// written once so both devices agree. Unlike torchvision, samples that cannot touch the map are never
// visited (`sample_range`), so absurdly large boxes cost O(map size), not O(box size).
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define D2MX_HOST_DEVICE __host__ __device__
#else
#define D2MX_HOST_DEVICE
#endif

namespace d2_maskext {
namespace roi_align_detail {

// FPN pyramids have 4-6 levels; a fixed bound lets the level table travel to CUDA kernels by value.
constexpr int kMaxLevels = 8;
// Adaptive sample grids are clamped here so their size never overflows; only samples inside the map are
// visited, so the bound affects boxes ~1e12 pixels wide, for which torchvision's result is undefined.
constexpr int64_t kMaxGrid = int64_t(1) << 40;
// Grids up to this size are scanned sample by sample; larger ones are first narrowed to the map.
constexpr int64_t kScanAllGrid = 64;

// The maps of a feature pyramid (or of its gradient): one entry per level, all with the same batch and
// channels. `element_t` is `const scalar_t` for features, the accumulator type for gradients.
template <typename element_t>
struct LevelTable {
  element_t* data[kMaxLevels];
  int64_t height[kMaxLevels];
  int64_t width[kMaxLevels];
  double scale[kMaxLevels];
  int num_levels;
};

// Where one roi's bins and samples lie on its level's map, in map pixels.
template <typename T>
struct RoiGeometry {
  T start_h, start_w;  // top-left corner
  T bin_h, bin_w;      // bin size (negative for inverted boxes when aligned)
  int64_t grid_h, grid_w;  // samples per bin along each axis; <= 0 means no samples (output 0)
};

// Bilinear interpolation of one sample along one axis. `valid` is false when the sample lies more than
// one pixel outside the map; it then contributes 0 (but still counts in the average, like torchvision).
template <typename T>
struct AxisSample {
  int64_t low, high;
  T w_low, w_high;
  bool valid;
};

template <typename T>
D2MX_HOST_DEVICE inline bool finite_value(T v) {
  return v == v && v - v == T(0);  // false for NaN and +-inf; works for host and device alike
}

template <typename T>
D2MX_HOST_DEVICE inline int64_t sample_grid(T bin, int64_t sampling_ratio) {
  if (sampling_ratio > 0) {
    return sampling_ratio;
  }
  const T grid = ceil(bin);
  if (!(grid > T(0))) {
    return 0;
  }
  return grid >= T(kMaxGrid) ? kMaxGrid : static_cast<int64_t>(grid);
}

// `roi` is (batch_index, x1, y1, x2, y2) in image coordinates; returns false when the scaled box is not
// finite, in which case the roi has no samples.
template <typename T>
D2MX_HOST_DEVICE inline bool roi_geometry(
    const T* roi,
    T spatial_scale,
    int64_t pooled_height,
    int64_t pooled_width,
    int64_t sampling_ratio,
    bool aligned,
    RoiGeometry<T>* geometry) {
  const T offset = aligned ? T(0.5) : T(0);
  const T start_w = roi[1] * spatial_scale - offset;
  const T start_h = roi[2] * spatial_scale - offset;
  const T end_w = roi[3] * spatial_scale - offset;
  const T end_h = roi[4] * spatial_scale - offset;
  T roi_width = end_w - start_w;
  T roi_height = end_h - start_h;
  // Tested before the legacy clamp below, which would turn a NaN or -inf size into a 1-pixel box.
  if (!(finite_value(start_w) && finite_value(start_h) && finite_value(roi_width) && finite_value(roi_height))) {
    return false;
  }
  if (!aligned) {
    // Legacy (aligned=False) RoIAlign forces malformed rois to be 1x1.
    roi_width = roi_width > T(1) ? roi_width : T(1);
    roi_height = roi_height > T(1) ? roi_height : T(1);
  }
  geometry->start_h = start_h;
  geometry->start_w = start_w;
  geometry->bin_h = roi_height / static_cast<T>(pooled_height);
  geometry->bin_w = roi_width / static_cast<T>(pooled_width);
  geometry->grid_h = sample_grid(geometry->bin_h, sampling_ratio);
  geometry->grid_w = sample_grid(geometry->bin_w, sampling_ratio);
  return true;
}

// First coordinate of bin `bin_index`; evaluated in torchvision's order so positions match bit for bit.
template <typename T>
D2MX_HOST_DEVICE inline T bin_start(T start, T bin, int64_t bin_index) {
  return start + static_cast<T>(bin_index) * bin;
}

template <typename T>
D2MX_HOST_DEVICE inline T sample_position(T bin_origin, T bin, int64_t sample, int64_t grid) {
  return bin_origin + static_cast<T>(static_cast<float>(sample) + .5f) * bin / static_cast<T>(grid);
}

template <typename T>
D2MX_HOST_DEVICE inline AxisSample<T> axis_sample(T position, int64_t size) {
  AxisSample<T> s{0, 0, T(0), T(0), false};
  if (size <= 0 || position < T(-1) || position > static_cast<T>(size)) {
    return s;
  }
  if (position <= T(0)) {
    position = T(0);
  }
  s.low = static_cast<int64_t>(position);
  if (s.low >= size - 1) {
    s.low = s.high = size - 1;
    position = static_cast<T>(s.low);
  } else {
    s.high = s.low + 1;
  }
  s.w_high = position - static_cast<T>(s.low);
  s.w_low = T(1) - s.w_high;
  s.valid = true;
  return s;
}

// Half-open range of sample indices [*first, *last) of one bin that may lie within [-1, size]; a superset
// (widened by the rounding error of `sample_position`), so `axis_sample` still makes the exact decision.
template <typename T>
D2MX_HOST_DEVICE inline void sample_range(
    T bin_origin, T bin, int64_t grid, int64_t size, int64_t* first, int64_t* last) {
  *first = 0;
  *last = grid > 0 ? grid : 0;
  if (grid <= kScanAllGrid || bin == T(0)) {
    return;
  }
  const double step = static_cast<double>(bin) / static_cast<double>(grid);
  const double magnitude = fabs(static_cast<double>(bin_origin)) + 2.0 * fabs(static_cast<double>(bin));
  const double slack = 8.0 * static_cast<double>(std::numeric_limits<T>::epsilon()) * magnitude + 1e-6;
  double lo = (-1.0 - slack - static_cast<double>(bin_origin)) / step - 0.5;
  double hi = (static_cast<double>(size) + slack - static_cast<double>(bin_origin)) / step - 0.5;
  if (step < 0) {
    const double tmp = lo;
    lo = hi;
    hi = tmp;
  }
  const double grid_d = static_cast<double>(grid);
  lo = lo < -1.0 ? -1.0 : (lo > grid_d ? grid_d : lo);
  hi = hi < -1.0 ? -1.0 : (hi > grid_d ? grid_d : hi);
  const int64_t lo_i = static_cast<int64_t>(floor(lo)) - 1;
  const int64_t hi_i = static_cast<int64_t>(floor(hi)) + 2;
  *first = lo_i < 0 ? 0 : lo_i;
  *last = hi_i > grid ? grid : hi_i;
  if (*last < *first) {
    *last = *first;
  }
}

// True when `roi` (batch_index, x1, y1, x2, y2) has only finite values and a batch index in
// [0, batch_size); other rois are input errors, reported by `check_roi_values` (ops/roi_align.h).
template <typename T>
D2MX_HOST_DEVICE inline bool roi_values_valid(const T* roi, int64_t batch_size) {
  for (int j = 0; j < 5; ++j) {
    if (!finite_value(roi[j])) {
      return false;
    }
  }
  return roi[0] >= T(0) && roi[0] < static_cast<T>(batch_size);
}

// Reads (batch index, level) of roi `k`; returns false when the roi must produce zeros: a level outside the
// table (e.g. Detectron2's level for a box with negative area) or a batch index outside [0, batch_size).
template <typename T>
D2MX_HOST_DEVICE inline bool roi_target(
    const T* roi, const int64_t* levels, int64_t k, int num_levels, int64_t batch_size,
    int64_t* batch_index, int* level) {
  const int64_t lvl = levels == nullptr ? 0 : levels[k];
  if (lvl < 0 || lvl >= num_levels) {
    return false;
  }
  const T b = roi[0];
  if (!(b >= T(0) && b < static_cast<T>(batch_size))) {
    return false;
  }
  *batch_index = static_cast<int64_t>(b);
  *level = static_cast<int>(lvl);
  return true;
}

}  // namespace roi_align_detail
}  // namespace d2_maskext
