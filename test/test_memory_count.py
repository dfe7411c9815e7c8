"""The CPU activation count of `petseg.inference.memory` (public `TorchFunctionMode`) against
the same count taken at the operator level (torch's private dispatch mode, which only a test
may use): the same peak bytes on the networks `build_network` makes."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from petseg.config import NetworkConfig
from petseg.inference import memory
from petseg.model import build_network


class OperatorCount(memory._LiveTensorBytes):
    """The live-tensor count fed by every ATen operator's outputs instead."""

    def __init__(self) -> None:
        super().__init__()
        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                out = func(*args, **(kwargs or {}))
                for leaf in tree_leaves(out):
                    if isinstance(leaf, torch.Tensor):
                        counter.add(leaf)
                return out

        self.mode = Mode()


NETWORKS = {
    "paper": NetworkConfig(),
    "instance-norm": NetworkConfig(channels=(8, 16, 32), strides=(2, 2), norm="INSTANCE"),
    "no-norm-clicks": NetworkConfig(in_channels=4, channels=(8, 16, 32), strides=(2, 2),
                                    num_res_units=0, norm=None),
}


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("name", NETWORKS)
def test_the_public_count_equals_the_operator_count(monkeypatch, name, channels_last) -> None:
    config = NETWORKS[name]
    network = build_network(config).eval()
    cpu = torch.device("cpu")
    for size in (32, 48):  # the two windows `activation_bytes_per_voxel` probes on the CPU
        public = memory._probe_peak_bytes(network, size, config.in_channels, cpu, "fp32",
                                          channels_last)
        with monkeypatch.context() as patch:
            patch.setattr(memory, "_LiveTensorBytes", OperatorCount)
            operators = memory._probe_peak_bytes(network, size, config.in_channels, cpu,
                                                 "fp32", channels_last)
        assert public == operators
        assert public > size**3 * config.in_channels * 4  # more than the input alone


def test_the_tensors_of_a_result_are_found_in_nested_tuples_and_lists() -> None:
    a, b, c = torch.zeros(1), torch.zeros(2), torch.zeros(3)
    found = memory._tensors((a, [b, None, (c, 2.0)], "x"))
    assert sorted(t.numel() for t in found) == [1, 2, 3]
    assert memory._tensors(torch.Size([1, 2])) == [] and memory._tensors(a)[0] is a
