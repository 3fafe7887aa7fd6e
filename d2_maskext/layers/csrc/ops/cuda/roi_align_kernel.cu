// CUDA kernels of d2_maskext::roi_align: one thread per output element, samples taken with the shared
// per-sample math (ops/roi_align_common.h), so CPU and CUDA agree.
//
// Maps are read in their own layout: NCHW, or NHWC when every level is channels-last (then neighbouring
// threads take neighbouring channels, so their reads and atomics are coalesced and no NCHW copy is made).
// Thread indices are decoded with 32-bit arithmetic whenever the output fits.
//
// The forward first validates the rois on the device and raises, like the CPU kernel, for a non-finite
// value or a batch index outside the batch (one small kernel and one 8-byte copy to the host). The backward
// trusts the rois its forward validated. It scatters with atomics (accumulating in float/double) and is
// nondeterministic, so it refuses to run under torch.use_deterministic_algorithms(True).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
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

// Output element handled by thread `t`: in output order for NCHW maps, channel-fastest for NHWC maps.
// Three divisions (each paired with its remainder) in `index_t`, 32-bit when the output allows it.
template <typename index_t, bool kChannelsLast>
__device__ inline OutputElement output_element(int64_t t, const Pooling& p) {
  const index_t i = static_cast<index_t>(t);
  const index_t channels = static_cast<index_t>(p.channels);
  const index_t pooled_height = static_cast<index_t>(p.pooled_height);
  const index_t pooled_width = static_cast<index_t>(p.pooled_width);
  if constexpr (kChannelsLast) {
    const index_t pixel = i / channels;  // (k, ph, pw)
    const index_t row = pixel / pooled_width;  // (k, ph)
    const index_t k = row / pooled_height;
    return {k, i - pixel * channels, row - k * pooled_height, pixel - row * pooled_width};
  } else {
    const index_t row = i / pooled_width;  // (k, c, ph)
    const index_t plane = row / pooled_height;  // (k, c)
    const index_t k = plane / channels;
    return {k, plane - k * channels, row - plane * pooled_height, i - row * pooled_width};
  }
}

__device__ inline int64_t output_offset(const OutputElement& e, const Pooling& p) {
  return ((e.k * p.channels + e.c) * p.pooled_height + e.ph) * p.pooled_width + e.pw;
}

// Where pixel (y, x) of one channel of one image of a level lies: data + offset + y * row + x * pixel.
struct PlaneView {
  int64_t offset, row, pixel;
};

template <bool kChannelsLast>
__device__ inline PlaneView plane_view(int64_t image, int64_t c, int64_t channels, int64_t height, int64_t width) {
  if constexpr (kChannelsLast) {
    return {image * height * width * channels + c, width * channels, channels};
  } else {
    return {(image * channels + c) * height * width, width, 1};
  }
}

// Where output element `e` samples from: its map and the sample ranges of its bin.
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

template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void roi_align_forward_kernel(
    int64_t total, LevelTable<const scalar_t> table, const at::opmath_type<scalar_t>* rois,
    const int64_t* levels, Pooling p, scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  using namespace roi_align_detail;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(blockDim.x) * gridDim.x) {
    const OutputElement e = output_element<index_t, kChannelsLast>(t, p);
    acc_t sum = 0;
    BinSamples<acc_t> s;
    if (locate_bin(table, rois, levels, e, p, &s)) {
      const PlaneView v = plane_view<kChannelsLast>(s.image, e.c, p.channels, s.height, s.width);
      const scalar_t* map = table.data[s.level] + v.offset;
      for (int64_t iy = s.y_first; iy < s.y_last; ++iy) {
        const auto ys = axis_sample(sample_position(s.origin_h, s.bin_h, iy, s.grid_h), s.height);
        if (!ys.valid) {
          continue;
        }
        const scalar_t* row_low = map + ys.low * v.row;
        const scalar_t* row_high = map + ys.high * v.row;
        for (int64_t ix = s.x_first; ix < s.x_last; ++ix) {
          const auto xs = axis_sample(sample_position(s.origin_w, s.bin_w, ix, s.grid_w), s.width);
          if (!xs.valid) {
            continue;
          }
          const int64_t x_low = xs.low * v.pixel;
          const int64_t x_high = xs.high * v.pixel;
          sum += ys.w_low * (xs.w_low * static_cast<acc_t>(row_low[x_low]) +
                             xs.w_high * static_cast<acc_t>(row_low[x_high])) +
              ys.w_high * (xs.w_low * static_cast<acc_t>(row_high[x_low]) +
                           xs.w_high * static_cast<acc_t>(row_high[x_high]));
        }
      }
      sum /= static_cast<acc_t>(s.grid_h) * static_cast<acc_t>(s.grid_w);
    }
    out[output_offset(e, p)] = static_cast<scalar_t>(sum);
  }
}

template <typename scalar_t, typename index_t, bool kChannelsLast>
__global__ void roi_align_backward_kernel(
    int64_t total, LevelTable<at::opmath_type<scalar_t>> grad_maps, const at::opmath_type<scalar_t>* rois,
    const int64_t* levels, Pooling p, const scalar_t* grad) {
  using acc_t = at::opmath_type<scalar_t>;
  using namespace roi_align_detail;
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < total; t += int64_t(blockDim.x) * gridDim.x) {
    const OutputElement e = output_element<index_t, kChannelsLast>(t, p);
    BinSamples<acc_t> s;
    if (!locate_bin(grad_maps, rois, levels, e, p, &s)) {
      continue;
    }
    const acc_t g = static_cast<acc_t>(grad[output_offset(e, p)]) /
        (static_cast<acc_t>(s.grid_h) * static_cast<acc_t>(s.grid_w));
    const PlaneView v = plane_view<kChannelsLast>(s.image, e.c, p.channels, s.height, s.width);
    acc_t* map = grad_maps.data[s.level] + v.offset;
    for (int64_t iy = s.y_first; iy < s.y_last; ++iy) {
      const auto ys = axis_sample(sample_position(s.origin_h, s.bin_h, iy, s.grid_h), s.height);
      if (!ys.valid) {
        continue;
      }
      acc_t* row_low = map + ys.low * v.row;
      acc_t* row_high = map + ys.high * v.row;
      for (int64_t ix = s.x_first; ix < s.x_last; ++ix) {
        const auto xs = axis_sample(sample_position(s.origin_w, s.bin_w, ix, s.grid_w), s.width);
        if (!xs.valid) {
          continue;
        }
        const int64_t x_low = xs.low * v.pixel;
        const int64_t x_high = xs.high * v.pixel;
        gpuAtomicAdd(row_low + x_low, g * ys.w_low * xs.w_low);
        gpuAtomicAdd(row_low + x_high, g * ys.w_low * xs.w_high);
        gpuAtomicAdd(row_high + x_low, g * ys.w_high * xs.w_low);
        gpuAtomicAdd(row_high + x_high, g * ys.w_high * xs.w_high);
      }
    }
  }
}

// Lowers `*first` to the index of every roi that fails `roi_values_valid`, so it ends as the first one.
template <typename acc_t>
__global__ void first_invalid_roi_kernel(int64_t num_rois, const acc_t* rois, int64_t batch_size, int64_t* first) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < num_rois;
       k += int64_t(blockDim.x) * gridDim.x) {
    if (!roi_align_detail::roi_values_valid(rois + k * 5, batch_size)) {
      atomicMin(reinterpret_cast<unsigned long long*>(first), static_cast<unsigned long long>(k));
    }
  }
}

// Raises like the CPU kernel for the first roi with a non-finite value or a batch index outside the batch.
// The host waits for the check (the one sync of the op); while a CUDA graph is being captured it cannot,
// so there the check is skipped and such rois pool to zeros.
void check_rois(const at::Tensor& rois_acc, int64_t batch_size) {
  const int64_t num_rois = rois_acc.size(0);
  if (num_rois == 0 || c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) {
    return;
  }
  at::Tensor first = at::full({1}, num_rois, rois_acc.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(rois_acc.scalar_type(), "roi_align_check_rois_cuda", [&] {
    first_invalid_roi_kernel<scalar_t><<<blocks_for(num_rois), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        num_rois, rois_acc.const_data_ptr<scalar_t>(), batch_size, first.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const int64_t k = first.item<int64_t>();
  if (k < num_rois) {
    const at::Tensor roi = rois_acc[k].cpu();
    AT_DISPATCH_FLOATING_TYPES(roi.scalar_type(), "roi_align_report_roi_cuda", [&] {
      roi_align_detail::check_roi_values(roi.const_data_ptr<scalar_t>(), k, batch_size);
    });
  }
}

// Calls launch(index_t{}, std::bool_constant<channels_last>{}) with the narrowest index type for `total`.
template <typename Launch>
void with_kernel_variant(int64_t total, bool channels_last, const Launch& launch) {
  const bool narrow = total <= std::numeric_limits<int32_t>::max();
  if (channels_last) {
    narrow ? launch(int32_t{}, std::true_type{}) : launch(int64_t{}, std::true_type{});
  } else {
    narrow ? launch(int32_t{}, std::false_type{}) : launch(int64_t{}, std::false_type{});
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
  const bool channels_last = roi_align_detail::use_channels_last(features);
  std::vector<at::Tensor> maps;
  for (const auto& f : features) {
    maps.push_back(channels_last ? f : f.contiguous());
  }
  const at::Tensor& first = maps[0];
  const Pooling p{pooled_height, pooled_width, sampling_ratio, first.size(0), first.size(1), aligned};
  const at::Tensor rois_acc = rois.to(roi_align_detail::accumulate_type(first.scalar_type())).contiguous();
  check_rois(rois_acc, p.batch_size);
  const at::Tensor levels_long = roi_align_detail::levels_as_long(levels);
  at::Tensor output = at::empty({rois.size(0), p.channels, pooled_height, pooled_width}, first.options());
  const int64_t total = output.numel();
  if (total == 0) {
    return output;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "roi_align_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto table = roi_align_detail::level_table<const scalar_t>(maps, spatial_scales);
    with_kernel_variant(total, channels_last, [&](auto index, auto layout) {
      roi_align_forward_kernel<scalar_t, decltype(index), decltype(layout)::value>
          <<<blocks_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
              total, table, rois_acc.const_data_ptr<acc_t>(),
              levels_long.defined() ? levels_long.const_data_ptr<int64_t>() : nullptr, p,
              output.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
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
  // Accumulated in the layout the gradients are returned in; only float16/bfloat16 need a second buffer.
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  std::vector<at::Tensor> grad_maps;
  for (size_t l = 0; l < heights.size(); ++l) {
    // at::zeros would drop a memory format given in its options.
    grad_maps.push_back(
        at::empty({batch_size, channels, heights[l], widths[l]}, grad.options().dtype(acc_type), format).zero_());
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
      with_kernel_variant(total, channels_last, [&](auto index, auto layout) {
        roi_align_backward_kernel<scalar_t, decltype(index), decltype(layout)::value>
            <<<blocks_for(total), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
                total, table, rois_acc.const_data_ptr<acc_t>(),
                levels_long.defined() ? levels_long.const_data_ptr<int64_t>() : nullptr, p,
                grad_c.const_data_ptr<scalar_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  if (acc_type != grad.scalar_type()) {
    for (auto& g : grad_maps) {
      g = g.to(grad.scalar_type());  // keeps the memory format
    }
  }
  return grad_maps;
}

}  // namespace
}  // namespace d2_maskext

TORCH_LIBRARY_IMPL(d2_maskext, CUDA, m) {
  m.impl("roi_align", &d2_maskext::roi_align_forward_cuda);
  m.impl("_roi_align_backward", &d2_maskext::roi_align_backward_cuda);
}
