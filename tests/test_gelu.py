"""model.layers.TanhGELUOnCPU, the CPU path of GPT-2's tanh GELU, against torch's own kernel."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from model import layers
from model.layers import TanhGELUOnCPU, gelu


def test_values_match_torchs_tanh_gelu_over_a_wide_range_and_across_block_edges():
    seed = 1234
    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    # numel not a multiple of the block, so the last block is a partial one
    x = torch.randn(3, layers.GELU_BLOCK // 64 + 7, 64, generator=g) * 4
    x.view(-1)[:5] = torch.tensor([-30.0, -8.0, 0.0, 8.0, 30.0])
    ref = F.gelu(x, approximate="tanh")
    ours = gelu(x, "tanh")
    assert ours.shape == x.shape and ours.is_contiguous()
    assert torch.allclose(ours, ref, rtol=1e-6, atol=1e-6)
    assert ours.view(-1)[2] == 0 and ours.view(-1)[4] == 30.0  # GELU(0) = 0, GELU(30) = 30
    # float64 agrees more tightly still (the same formula, rounding only)
    assert torch.allclose(gelu(x.double(), "tanh"), F.gelu(x.double(), approximate="tanh"), rtol=1e-12, atol=1e-12)


def test_non_contiguous_input_and_the_exact_form_go_where_they_should():
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(0)).t()  # a transposed view
    assert torch.allclose(gelu(x, "tanh"), F.gelu(x, approximate="tanh"), atol=1e-6)
    assert torch.equal(gelu(x, "none"), F.gelu(x))  # the erf GELU is torch's kernel, untouched


def test_gradient_is_torchs_and_passes_gradcheck():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 33, dtype=torch.float32, requires_grad=True, generator=g)
    y = torch.randn(4, 33, generator=g)
    (gelu(x, "tanh") * y).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    (F.gelu(x, approximate="tanh") * y).sum().backward()
    assert torch.equal(ours, x.grad)  # torch's gelu_backward on the same input
    x64 = torch.randn(5, 7, dtype=torch.float64, requires_grad=True, generator=g)
    assert torch.autograd.gradcheck(TanhGELUOnCPU.apply, (x64,))
