// Python module entry point for d2_maskext._C; the ops themselves register through TORCH_LIBRARY.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "d2_maskext compiled ops (see torch.ops.d2_maskext)";
}
