// CUDA kernels of d2_maskext::roi_align: one thread per output element, samples taken with the shared
// per-sample math (ops/roi_align_common.h), so CPU and CUDA agree. The backward scatters with atomics
// (accumulating in float/double); it is nondeterministic, so it refuses to run under
// torch.use_deterministic_algorithms(True). Rois with a batch index outside the batch, a level outside the
// table or non-finite coordinates pool to zeros here (checking them would need a device sync).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/roi_align.h"
#include "ops/roi_align_common.h"

namespace d2_maskext {
namespace {

using roi_align_detail::LevelTable;

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) {
  return std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t(1) << 20);
}

struct Pooling {
  int64_t pooled_height, pooled_width, sampling_ratio, batch_size, channels;
  bool aligned;
};

// Position (roi, channel, bin row, bin column) of one element of the (K, C, PH, PW) output.
struct OutputElement {
  int64_t k, c, ph, pw;
};

__device__ inline OutputElement output_element(int64_t index, const Pooling& p) {
  const int64_t bins = p.pooled_height * p.pooled_width;
  return {index / (bins * p.channels), (index / bins) % p.channels, (index / p.pooled_width) % p.pooled_height,
          index % p.pooled_width};
}

// Where output element `e` samples from: its map plane and the sample ranges of its bin.
template <typename acc_t>
struct BinSamples {
  int64_t image, height, width, grid_h, grid_w, y_first, y_last, x_first, x_last;
  int level;
  acc_t origin_h, origin_w, bin_h, bin_w;
};

template <typename acc_t, typename element_t>
__device__ bool locate_bin(
    const LevelTable<element_t>& table, const acc_t* rois, const int64_t* levels, const OutputElement& e,
    const Pooling& p, BinSamples<acc_t>* s) {
  using namespace roi_align_detail;
  const acc_t* roi = rois + e.k * 5;
  RoiGeometry<acc_t> g;
  if (!roi_target(roi, levels, e.k, table.num_levels, p.batch_size, &s->image, &s->level) ||
      !roi_geometry(
          roi, static_cast<acc_t>(table.scale[s->level]), p.pooled_height, p.pooled_width, p.sampling_ratio,
          p.aligned, &g) ||
      g.grid_h <= 0 || g.grid_w <= 0) {
    return false;
  }
  s->height = table.height[s->level];
  s->width = table.width[s->level];
  s->grid_h = g.grid_h;
  s->grid_w = g.grid_w;
  s->bin_h = g.bin_h;
  s->bin_w = g.bin_w;
  s->origin_h = bin_start(g.start_h, g.bin_h, e.ph);
  s->origin_w = bin_start(g.start_w, g.bin_w, e.pw);
  sample_range(s->origin_h, g.bin_h, g.grid_h, s->height, &s->y_first, &s->y_last);
  sample_range(s->origin_w, g.bin_w, g.grid_w, s->width, &s->x_first, &s->x_last);
  return true;
}

template <typename scalar_t>
__global__ void roi_align_forward_kernel(
    int64_t total, LevelTable<const scalar_t> table, const at::opmath_type<scalar_t>* rois,
    const int64_t* levels, Pooling p, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  using namespace roi_align_detail;
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
       index += int64_t(blockDim.x) * gridDim.x) {
    const OutputElement e = output_element(index, p);
    acc_t sum = 0;
    BinSamples<acc_t> s;
    if (locate_bin(table, rois, levels, e, p, &s)) {
      const scalar_t* map = table.data[s.level] + (s.image * p.channels + e.c) * s.height * s.width;
      for (int64_t iy = s.y_first; iy < s.y_last; ++iy) {
        const auto ys = axis_sample(sample_position(s.origin_h, s.bin_h, iy, s.grid_h), s.height);
        if (!ys.valid) {
          continue;
        }
        const scalar_t* row_low = map + ys.low * s.width;
        const scalar_t* row_high = map + ys.high * s.width;
        for (int64_t ix = s.x_first; ix < s.x_last; ++ix) {
          const auto xs = axis_sample(sample_position(s.origin_w, s.bin_w, ix, s.grid_w), s.width);
          if (!xs.valid) {
            continue;
          }
          sum += ys.w_low * (xs.w_low * static_cast<acc_t>(row_low[xs.low]) +
                             xs.w_high * static_cast<acc_t>(row_low[xs.high])) +
              ys.w_high * (xs.w_low * static_cast<acc_t>(row_high[xs.low]) +
                           xs.w_high * static_cast<acc_t>(row_high[xs.high]));
        }
      }
      sum /= static_cast<acc_t>(s.grid_h) * static_cast<acc_t>(s.grid_w);
    }
    out[index] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t>
__global__ void roi_align_backward_kernel(
    int64_t total, LevelTable<at::opmath_type<scalar_t>> grad_maps, const at::opmath_type<scalar_t>* rois,
    const int64_t* levels, Pooling p, const scalar_t* grad) {
  using acc_t = at::opmath_type<scalar_t>;
  using namespace roi_align_detail;
  for (int64_t index = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; index < total;
       index += int64_t(blockDim.x) * gridDim.x) {
    const OutputElement e = output_element(index, p);
    BinSamples<acc_t> s;
    if (!locate_bin(grad_maps, rois, levels, e, p, &s)) {
      continue;
    }
    const acc_t g = static_cast<acc_t>(grad[index]) /
        (static_cast<acc_t>(s.grid_h) * static_cast<acc_t>(s.grid_w));
    acc_t* map = grad_maps.data[s.level] + (s.image * p.channels + e.c) * s.height * s.width;
    for (int64_t iy = s.y_first; iy < s.y_last; ++iy) {
      const auto ys = axis_sample(sample_position(s.origin_h, s.bin_h, iy, s.grid_h), s.height);
      if (!ys.valid) {
        continue;
      }
      for (int64_t ix = s.x_first; ix < s.x_last; ++ix) {
        const auto xs = axis_sample(sample_position(s.origin_w, s.bin_w, ix, s.grid_w), s.width);
        if (!xs.valid) {
          continue;
        }
        gpuAtomicAdd(map + ys.low * s.width + xs.low, g * ys.w_low * xs.w_low);
        gpuAtomicAdd(map + ys.low * s.width + xs.high, g * ys.w_low * xs.w_high);
        gpuAtomicAdd(map + ys.high * s.width + xs.low, g * ys.w_high * xs.w_low);
        gpuAtomicAdd(map + ys.high * s.width + xs.high, g * ys.w_high * xs.w_high);
      }
    }
  }
}

at::Tensor roi_align_forward_cuda(
    at::TensorList features,
    const at::Tensor& rois,
    const std::optional<at::Tensor>& levels,
    at::ArrayRef<double> spatial_scales,
    int64_t pooled_height,
    int64_t pooled_width,
    int64_t sampling_ratio,
    bool aligned) {
  roi_align_detail::check_forward_inputs(features, rois, levels, spatial_scales, pooled_height, pooled_width);
  const c10::cuda::CUDAGuard guard(features[0].device());
  std::vector<at::Tensor> maps;
  for (const auto& f : features) {
    maps.push_back(f.contiguous());
  }
  const at::Tensor& first = maps[0];
  const Pooling p{pooled_height, pooled_width, sampling_ratio, first.size(0), first.size(1), aligned};
  const at::Tensor rois_acc = rois.to(roi_align_detail::accumulate_type(first.scalar_type())).contiguous();
  const at::Tensor levels_long = roi_align_detail::levels_as_long(levels);
  at::Tensor output = at::empty({rois.size(0), p.channels, pooled_height, pooled_width}, first.options());
  const int64_t total = output.numel();
  if (total == 0) {
    return output;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "roi_align_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto table = roi_align_detail::level_table<const scalar_t>(maps, spatial_scales);
    roi_align_forward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        total, table, rois_acc.const_data_ptr<acc_t>(),
        levels_long.defined() ? levels_long.const_data_ptr<int64_t>() : nullptr, p,
        output.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

std::vector<at::Tensor> roi_align_backward_cuda(
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
  at::globalContext().alertNotDeterministic("d2_maskext::_roi_align_backward (CUDA, atomics)");
  const c10::cuda::CUDAGuard guard(grad.device());
  const at::ScalarType acc_type = roi_align_detail::accumulate_type(grad.scalar_type());
  std::vector<at::Tensor> grad_maps;
  for (size_t l = 0; l < heights.size(); ++l) {
    grad_maps.push_back(at::zeros({batch_size, channels, heights[l], widths[l]}, grad.options().dtype(acc_type)));
  }
  const Pooling p{pooled_height, pooled_width, sampling_ratio, batch_size, channels, aligned};
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor rois_acc = rois.to(acc_type).contiguous();
  const at::Tensor levels_long = roi_align_detail::levels_as_long(levels);
  const int64_t total = grad_c.numel();
  if (total > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto table = roi_align_detail::level_table<acc_t>(grad_maps, spatial_scales);
      roi_align_backward_kernel<scalar_t><<<blocks_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          total, table, rois_acc.const_data_ptr<acc_t>(),
          levels_long.defined() ? levels_long.const_data_ptr<int64_t>() : nullptr, p,
          grad_c.const_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  for (auto& g : grad_maps) {
    g = g.to(grad.scalar_type()).contiguous(format);
  }
  return grad_maps;
}

}  // namespace
}  // namespace d2_maskext

TORCH_LIBRARY_IMPL(d2_maskext, CUDA, m) {
  m.impl("roi_align", &d2_maskext::roi_align_forward_cuda);
  m.impl("_roi_align_backward", &d2_maskext::roi_align_backward_cuda);
}
