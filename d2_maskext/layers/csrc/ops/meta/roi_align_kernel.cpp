// Meta (shape-only) kernels: let torch.compile, torch.export and torch.jit.trace reason about the op
// without running it, with symbolic sizes.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "ops/roi_align.h"

namespace d2_maskext {
namespace {

at::Tensor roi_align_forward_meta(
    at::TensorList features,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& levels,
    at::ArrayRef<double> spatial_scales,
    c10::SymInt pooled_height,
    c10::SymInt pooled_width,
    int64_t /*sampling_ratio*/,
    bool /*aligned*/) {
  roi_align_detail::check_forward_inputs(features, rois, levels, spatial_scales, pooled_height, pooled_width);
  return at::empty_symint(
      {rois.sym_size(0), features[0].sym_size(1), std::move(pooled_height), std::move(pooled_width)},
      features[0].options());
}

std::vector<at::Tensor> roi_align_backward_meta(
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
    int64_t /*sampling_ratio*/,
    bool /*aligned*/,
    bool channels_last) {
  roi_align_detail::check_backward_inputs(
      grad, rois, levels, spatial_scales, pooled_height, pooled_width, channels, heights, widths);
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  std::vector<at::Tensor> grads;
  for (size_t l = 0; l < heights.size(); ++l) {
    grads.push_back(at::empty_symint({batch_size, channels, heights[l], widths[l]}, grad.options(), format));
  }
  return grads;
}

}  // namespace
}  // namespace d2_maskext

TORCH_LIBRARY_IMPL(d2_maskext, Meta, m) {
  m.impl("roi_align", TORCH_FN(d2_maskext::roi_align_forward_meta));
  m.impl("_roi_align_backward", TORCH_FN(d2_maskext::roi_align_backward_meta));
}
