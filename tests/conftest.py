"""Test-session settings shared by every test module."""

import torch

# The tests run small tensors whose ops are dominated by per-call overhead; one intra-op thread is
# faster there than two, and keeps timings stable on a shared 2-core machine.
torch.set_num_threads(1)
