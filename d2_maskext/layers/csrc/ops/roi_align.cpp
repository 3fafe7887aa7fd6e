// Schema of d2_maskext::roi_align and its backward, the dispatcher entry points, and the input checks
// every backend shares. Kernels: ops/cpu, ops/cuda, ops/meta (shapes for torch.compile/export/trace),
// ops/autograd.
#include "ops/roi_align.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace d2_maskext {

at::Tensor roi_align(
    at::TensorList features,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& levels,
    at::ArrayRef<double> spatial_scales,
    c10::SymInt pooled_height,
    c10::SymInt pooled_width,
    int64_t sampling_ratio,
    bool aligned) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("d2_maskext::roi_align", "")
                       .typed<decltype(roi_align)>();
  return op.call(
      features, rois, levels, spatial_scales, std::move(pooled_height), std::move(pooled_width),
      sampling_ratio, aligned);
}

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
    bool channels_last) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("d2_maskext::_roi_align_backward", "")
                       .typed<decltype(roi_align_backward)>();
  return op.call(
      grad, rois, levels, spatial_scales, std::move(pooled_height), std::move(pooled_width),
      std::move(batch_size), std::move(channels), heights, widths, sampling_ratio, aligned, channels_last);
}

namespace roi_align_detail {
namespace {

void check_rois_and_levels(
    const at::Tensor& rois,
    const std::optional<at::Tensor>& levels,
    size_t num_levels,
    const at::Device& device) {
  TORCH_CHECK(
      rois.dim() == 2 && rois.sym_size(1) == 5,
      "roi_align: rois must have shape (K, 5) = (batch index, x1, y1, x2, y2), got shape ", rois.sym_sizes());
  TORCH_CHECK(rois.is_floating_point(), "roi_align: rois must be floating point, got ", rois.scalar_type());
  TORCH_CHECK(
      rois.device() == device, "roi_align: rois are on ", rois.device(), " but the feature maps are on ",
      device);
  const bool has_levels = levels.has_value() && levels->defined();
  TORCH_CHECK(
      has_levels || num_levels == 1, "roi_align: ", num_levels,
      " feature levels need a `levels` tensor assigning each roi to a level");
  if (has_levels) {
    const at::Tensor& lv = *levels;
    TORCH_CHECK(
        lv.dim() == 1 && lv.sym_size(0) == rois.sym_size(0), "roi_align: levels must have shape (K,) = (",
        rois.sym_size(0), ",), got shape ", lv.sym_sizes());
    TORCH_CHECK(
        lv.scalar_type() == at::kLong || lv.scalar_type() == at::kInt,
        "roi_align: levels must be int64 or int32, got ", lv.scalar_type());
    TORCH_CHECK(
        lv.device() == device, "roi_align: levels are on ", lv.device(), " but the feature maps are on ",
        device);
  }
}

void check_scales_and_output_size(
    at::ArrayRef<double> spatial_scales,
    size_t num_levels,
    const c10::SymInt& pooled_height,
    const c10::SymInt& pooled_width) {
  TORCH_CHECK(
      num_levels >= 1 && num_levels <= static_cast<size_t>(kMaxLevels), "roi_align: expected 1 to ",
      kMaxLevels, " feature levels, got ", num_levels);
  TORCH_CHECK(
      spatial_scales.size() == num_levels, "roi_align: got ", num_levels, " feature levels but ",
      spatial_scales.size(), " spatial scales");
  for (size_t i = 0; i < spatial_scales.size(); ++i) {
    TORCH_CHECK(
        std::isfinite(spatial_scales[i]), "roi_align: spatial scale ", i, " is not finite: ",
        spatial_scales[i]);
  }
  TORCH_CHECK(
      pooled_height > 0 && pooled_width > 0, "roi_align: output size must be positive, got (", pooled_height,
      ", ", pooled_width, ")");
}

bool supported_feature_type(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

}  // namespace

void check_forward_inputs(
    at::TensorList features,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& levels,
    at::ArrayRef<double> spatial_scales,
    const c10::SymInt& pooled_height,
    const c10::SymInt& pooled_width) {
  check_scales_and_output_size(spatial_scales, features.size(), pooled_height, pooled_width);
  const at::Tensor& first = features[0];
  for (size_t i = 0; i < features.size(); ++i) {
    const at::Tensor& f = features[i];
    TORCH_CHECK(
        f.dim() == 4, "roi_align: feature level ", i, " must be 4-D (N, C, H, W), got shape ", f.sym_sizes());
    TORCH_CHECK(
        supported_feature_type(f.scalar_type()), "roi_align: feature level ", i,
        " must be float32, float64, float16 or bfloat16, got ", f.scalar_type());
    TORCH_CHECK(
        f.scalar_type() == first.scalar_type(), "roi_align: feature level ", i, " is ", f.scalar_type(),
        " but level 0 is ", first.scalar_type());
    TORCH_CHECK(
        f.device() == first.device(), "roi_align: feature level ", i, " is on ", f.device(),
        " but level 0 is on ", first.device());
    TORCH_CHECK(
        f.sym_size(0) == first.sym_size(0) && f.sym_size(1) == first.sym_size(1), "roi_align: feature level ",
        i, " has shape ", f.sym_sizes(), " but all levels need level 0's batch and channels ",
        first.sym_sizes());
  }
  check_rois_and_levels(rois, levels, features.size(), first.device());
}

void check_backward_inputs(
    const at::Tensor& grad,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& levels,
    at::ArrayRef<double> spatial_scales,
    const c10::SymInt& pooled_height,
    const c10::SymInt& pooled_width,
    const c10::SymInt& channels,
    c10::SymIntArrayRef heights,
    c10::SymIntArrayRef widths) {
  check_scales_and_output_size(spatial_scales, heights.size(), pooled_height, pooled_width);
  TORCH_CHECK(
      widths.size() == heights.size(), "roi_align backward: ", heights.size(), " heights but ", widths.size(),
      " widths");
  TORCH_CHECK(
      grad.dim() == 4 && grad.sym_size(0) == rois.sym_size(0) && grad.sym_size(2) == pooled_height &&
          grad.sym_size(3) == pooled_width,
      "roi_align backward: grad must have shape (K, C, ", pooled_height, ", ", pooled_width, ") with K = ",
      rois.sym_size(0), ", got ", grad.sym_sizes());
  TORCH_CHECK(
      grad.sym_size(1) == channels, "roi_align backward: grad has ", grad.sym_size(1), " channels, expected ",
      channels);
  TORCH_CHECK(
      supported_feature_type(grad.scalar_type()),
      "roi_align backward: grad must be float32, float64, float16 or bfloat16, got ", grad.scalar_type());
  check_rois_and_levels(rois, levels, heights.size(), grad.device());
}

bool use_channels_last(at::TensorList features) {
  bool any_strictly_channels_last = false;
  for (const at::Tensor& f : features) {
    if (!f.is_contiguous(at::MemoryFormat::ChannelsLast)) {
      return false;
    }
    // A map contiguous in both layouts (C = 1, or H = W = 1) has one memory order that both indexings
    // read alike: it follows the other levels instead of forcing them all to NCHW copies.
    any_strictly_channels_last = any_strictly_channels_last || !f.is_contiguous();
  }
  return any_strictly_channels_last;
}

at::ScalarType accumulate_type(at::ScalarType feature_type) {
  return feature_type == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor levels_as_long(const std::optional<at::Tensor>& levels) {
  if (!levels.has_value() || !levels->defined()) {
    return at::Tensor();
  }
  return levels->to(at::kLong).contiguous();
}

}  // namespace roi_align_detail
}  // namespace d2_maskext

TORCH_LIBRARY(d2_maskext, m) {
  m.def(
      "roi_align(Tensor[] features, Tensor rois, Tensor? levels, float[] spatial_scales, SymInt pooled_height, "
      "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
      {at::Tag::pt2_compliant_tag});
  m.def(
      "_roi_align_backward(Tensor grad, Tensor rois, Tensor? levels, float[] spatial_scales, "
      "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt[] heights, "
      "SymInt[] widths, int sampling_ratio, bool aligned, bool channels_last) -> Tensor[]",
      {at::Tag::pt2_compliant_tag});
}
