// Autograd kernel: gradient with respect to every feature level (rois and levels get none, as in
// torchvision). The backward is itself an op, so compiled graphs and traces see it too.
#include <torch/autograd.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "ops/roi_align.h"

namespace d2_maskext {
namespace {

class RoiAlignFunction : public torch::autograd::Function<RoiAlignFunction> {
 public:
  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx,
      at::TensorList features,
      const at::Tensor& rois,
      const std::optional<at::Tensor>& levels,
      at::ArrayRef<double> spatial_scales,
      c10::SymInt pooled_height,
      c10::SymInt pooled_width,
      int64_t sampling_ratio,
      bool aligned) {
    // Validate before reading level shapes below; the backend kernel checks again (cheap).
    roi_align_detail::check_forward_inputs(features, rois, levels, spatial_scales, pooled_height, pooled_width);
    std::vector<c10::SymInt> heights, widths;
    for (const auto& f : features) {
      heights.push_back(f.sym_size(2));
      widths.push_back(f.sym_size(3));
    }
    ctx->saved_data["spatial_scales"] = spatial_scales.vec();
    ctx->saved_data["pooled_height"] = pooled_height;
    ctx->saved_data["pooled_width"] = pooled_width;
    ctx->saved_data["batch_size"] = features[0].sym_size(0);
    ctx->saved_data["channels"] = features[0].sym_size(1);
    ctx->saved_data["heights"] = c10::SymIntArrayRef(heights);
    ctx->saved_data["widths"] = c10::SymIntArrayRef(widths);
    ctx->saved_data["sampling_ratio"] = sampling_ratio;
    ctx->saved_data["aligned"] = aligned;
    ctx->saved_data["channels_last"] = roi_align_detail::use_channels_last(features);
    ctx->saved_data["has_levels"] = levels.has_value() && levels->defined();
    ctx->save_for_backward({rois, levels.value_or(at::Tensor())});
    at::AutoDispatchBelowADInplaceOrView guard;
    return {d2_maskext::roi_align(
        features, rois, levels, spatial_scales, std::move(pooled_height), std::move(pooled_width), sampling_ratio,
        aligned)};
  }

  static torch::autograd::variable_list backward(
      torch::autograd::AutogradContext* ctx,
      const torch::autograd::variable_list& grad_output) {
    const auto saved = ctx->get_saved_variables();
    const std::optional<at::Tensor> levels =
        ctx->saved_data["has_levels"].toBool() ? std::optional<at::Tensor>(saved[1]) : std::nullopt;
    const auto sym_list = [&](const char* key) {
      std::vector<c10::SymInt> values;
      for (const auto& v : ctx->saved_data[key].toList()) {
        values.push_back(v.get().toSymInt());
      }
      return values;
    };
    const std::vector<c10::SymInt> heights = sym_list("heights");
    const std::vector<c10::SymInt> widths = sym_list("widths");
    const std::vector<double> spatial_scales = ctx->saved_data["spatial_scales"].toDoubleVector();
    auto grads = d2_maskext::roi_align_backward(
        grad_output[0], saved[0], levels, spatial_scales, ctx->saved_data["pooled_height"].toSymInt(),
        ctx->saved_data["pooled_width"].toSymInt(), ctx->saved_data["batch_size"].toSymInt(),
        ctx->saved_data["channels"].toSymInt(), heights, widths, ctx->saved_data["sampling_ratio"].toInt(),
        ctx->saved_data["aligned"].toBool(), ctx->saved_data["channels_last"].toBool());
    torch::autograd::variable_list result(grads.begin(), grads.end());
    // No gradient for rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned.
    result.resize(grads.size() + 7);
    return result;
  }
};

at::Tensor roi_align_autograd(
    at::TensorList features,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& levels,
    at::ArrayRef<double> spatial_scales,
    c10::SymInt pooled_height,
    c10::SymInt pooled_width,
    int64_t sampling_ratio,
    bool aligned) {
  return RoiAlignFunction::apply(
      features, rois, levels, spatial_scales, std::move(pooled_height), std::move(pooled_width), sampling_ratio,
      aligned)[0];
}

}  // namespace
}  // namespace d2_maskext

TORCH_LIBRARY_IMPL(d2_maskext, Autograd, m) {
  m.impl("roi_align", TORCH_FN(d2_maskext::roi_align_autograd));
  m.impl("_roi_align_backward", torch::autograd::autogradNotImplementedFallback());
}
