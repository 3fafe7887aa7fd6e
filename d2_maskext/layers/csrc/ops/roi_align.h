// d2_maskext::roi_align: multi-level RoIAlign with torchvision's semantics.
//
// One op serves both the single-map case (one feature level, `levels` undefined) and the fused FPN pooler
// (one feature tensor per level, `levels[k]` = index of the level roi k is pooled from). Output row k is
// roi k, so no gather/scatter is needed around the call.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <type_traits>
#include <vector>

#include "ops/roi_align_common.h"

namespace d2_maskext {

at::Tensor roi_align(
    at::TensorList features,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& levels,
    at::ArrayRef<double> spatial_scales,
    c10::SymInt pooled_height,
    c10::SymInt pooled_width,
    int64_t sampling_ratio,
    bool aligned);

std::vector<at::Tensor> roi_align_backward(
    const at::Tensor& grad,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& levels,
    at::ArrayRef<double> spatial_scales,
    c10::SymInt pooled_height,
    c10::SymInt pooled_width,
    c10::SymInt batch_size,
    c10::SymInt channels,
    c10::SymIntArrayRef heights,
    c10::SymIntArrayRef widths,
    int64_t sampling_ratio,
    bool aligned,
    bool channels_last);

namespace roi_align_detail {

// Shape/dtype/device checks shared by every backend (Meta included), with the offending values in the
// message. Data-dependent checks (finite boxes, batch indices) run in the CPU and CUDA kernels through
// `check_roi_values`.
void check_forward_inputs(
    at::TensorList features,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& levels,
    at::ArrayRef<double> spatial_scales,
    const c10::SymInt& pooled_height,
    const c10::SymInt& pooled_width);

void check_backward_inputs(
    const at::Tensor& grad,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& levels,
    at::ArrayRef<double> spatial_scales,
    const c10::SymInt& pooled_height,
    const c10::SymInt& pooled_width,
    const c10::SymInt& channels,
    c10::SymIntArrayRef heights,
    c10::SymIntArrayRef widths);

// Raises for roi `k` unless `roi_values_valid`; CPU and CUDA both report bad rois through it, so the two
// devices fail with the same message.
template <typename T>
void check_roi_values(const T* roi, int64_t k, int64_t batch_size) {
  if (C10_LIKELY(roi_values_valid(roi, batch_size))) {
    return;
  }
  bool finite = true;
  for (int j = 0; j < 5; ++j) {
    finite = finite && finite_value(roi[j]);
  }
  TORCH_CHECK(
      finite, "roi_align: roi ", k, " = (", roi[0], ", ", roi[1], ", ", roi[2], ", ", roi[3], ", ", roi[4],
      ") has a non-finite value");
  TORCH_CHECK(
      false, "roi_align: roi ", k, " has batch index ", roi[0], " but the feature maps hold ", batch_size,
      " images");
}

// The layout the kernels pool in, and the gradients are returned in: channels-last (maps read in place)
// when every level is channels-last contiguous and at least one is not also NCHW contiguous; otherwise NCHW
// (non-channels-last levels copied). A level contiguous in both layouts (C = 1, or a 1x1 map) has the same
// memory order in either, so it never decides: a pyramid of only such levels is NCHW.
bool use_channels_last(at::TensorList features);

// Float type for coordinates and accumulation: double for float64 features, float otherwise.
at::ScalarType accumulate_type(at::ScalarType feature_type);

// `levels` as a contiguous int64 tensor, or an undefined tensor when there is none (every roi on level 0).
at::Tensor levels_as_long(const std::optional<at::Tensor>& levels);

// The kernels' view of per-level maps (features, or gradients when `element_t` is not const): data
// pointers, sizes and scales. `maps` must outlive the table.
template <typename element_t>
LevelTable<element_t> level_table(const std::vector<at::Tensor>& maps, at::ArrayRef<double> spatial_scales) {
  using value_t = std::remove_const_t<element_t>;
  LevelTable<element_t> table{};
  table.num_levels = static_cast<int>(maps.size());
  for (size_t l = 0; l < maps.size(); ++l) {
    if constexpr (std::is_const_v<element_t>) {
      table.data[l] = maps[l].const_data_ptr<value_t>();
    } else {
      table.data[l] = maps[l].mutable_data_ptr<value_t>();
    }
    table.height[l] = maps[l].size(2);
    table.width[l] = maps[l].size(3);
    table.scale[l] = spatial_scales[l];
  }
  return table;
}

}  // namespace roi_align_detail
}  // namespace d2_maskext
