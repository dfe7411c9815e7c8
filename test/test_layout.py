"""The code's floor plan: no import cycle, no module or function beyond its stage, process.py
finds weights without torch, the inference package's Predictor runs one fused pass,
settings settled once at the edge."""

from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_synthetic import make_case
from room_graph import cycles, import_graph, room_cycle_edges, room_graph
from tiny_models import TINY

from petseg.config import (
    InferenceConfig,
    NetworkConfig,
    from_dict,
    resolve_inference_config,
)
from petseg.errors import PetsegError
from petseg.inference import engine, predictor
from petseg.inference.engine import run_ensemble, sliding_window_probability
from petseg.inference.postprocessing import threshold_mask
from petseg.inference.predictor import Predictor
from petseg.model import build_network, size_divisor

REPOSITORY = Path(__file__).resolve().parents[1]
PACKAGE = REPOSITORY / "petseg"


def test_every_module_imports_and_none_imports_in_a_circle() -> None:
    graph = import_graph()
    assert "petseg.inference.engine" in graph and "petseg.engine" not in graph
    for name in sorted(graph):
        if not name.endswith("__main__"):  # that one runs the command line
            importlib.import_module(name)
    assert cycles(graph) == []
    # the check itself sees a cycle
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


FLOORS: tuple[tuple[str, ...], ...] = (
    ("commands",), ("serve", "runs"), ("interactive",), ("inference",),
    ("preprocessing", "config"), ("io",), ("errors",))
"""The rooms that run cases, highest first (docs/architecture.md): imports run down only."""


def test_rooms_import_in_no_circle_and_only_down_the_floors() -> None:
    graph = import_graph()
    assert room_cycle_edges(graph) == []
    rooms = room_graph(graph)
    floor = {room: level for level, names in enumerate(FLOORS) for room in names}
    upward = sorted(f"{room} -> {target}" for room, targets in rooms.items()
                    for target in targets
                    if room in floor and target in floor and floor[target] < floor[room])
    assert upward == []
    assert "interactive" not in rooms["inference"]  # the Predictor knows channels, not clicks
    # the checks see a circle of rooms and an import up the floors
    tangled = {"petseg.a.x": {"petseg.b.y"}, "petseg.b.y": {"petseg.c"},
               "petseg.c": {"petseg.a.z"}, "petseg.a.z": set()}
    assert room_cycle_edges(tangled) == ["petseg.a.x -> petseg.b.y", "petseg.b.y -> petseg.c",
                                         "petseg.c -> petseg.a.z"]


def test_process_finds_weights_without_torch_or_monai(tmp_path: Path) -> None:
    (tmp_path / "model" / "inner").mkdir(parents=True)
    (tmp_path / "model" / "inner" / "manifest.json").write_text("{}")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import process; "
            "from petseg.checkpoint import find_weights_dir; "
            "print(find_weights_dir([sys.argv[2]]), process.arguments([])[6], "
            "'torch' in sys.modules, 'monai' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(REPOSITORY), str(tmp_path / "model")],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(tmp_path / "model" / "inner"), str(REPOSITORY / "weights"), "False",
                   "False"]


class Counting(torch.nn.Module):
    """A small random convolution to 2-channel logits that counts its forwards and, when
    given a shared `log`, appends its seed to it on each forward (the order of the calls)."""

    def __init__(self, seed: int, log: list[int] | None = None) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = torch.nn.Conv3d(2, 2, 3, padding=1)
        self.calls = 0
        self.seed, self.log = seed, log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.log is not None:
            self.log.append(self.seed)
        return self.net(x)


def test_fold_maps_come_from_the_same_fused_pass() -> None:
    order: list[int] = []
    networks = [Counting(seed, order) for seed in (1, 2, 3)]
    image = torch.rand(2, 20, 24, 28)
    config = InferenceConfig(roi_size=(16, 16, 16), overlap=0.5)
    plain = run_ensemble(networks, image, config, weights=[0.5, 0.3, 0.2], device="cpu",
                         bytes_per_voxel=100)
    calls = [n.calls for n in networks]
    order.clear()
    fused = run_ensemble(networks, image, config, weights=[0.5, 0.3, 0.2], device="cpu",
                         bytes_per_voxel=100, per_network=True)
    assert [n.calls - c for n, c in zip(networks, calls, strict=True)] == calls  # one pass
    assert calls[0] > 1 and order == [1, 2, 3] * calls[0]  # every fold on each window batch
    assert plain.fold_probabilities is None and fused.fold_probabilities is not None
    assert torch.equal(fused.probability, plain.probability)
    alone = [run_ensemble([n], image, config, device="cpu", bytes_per_voxel=100).probability
             for n in networks]
    for fold, expected in zip(fused.fold_probabilities, alone, strict=True):
        assert torch.allclose(fold, expected, atol=1e-6, rtol=0)
    mean = sum(w * f for w, f in zip([0.5, 0.3, 0.2], fused.fold_probabilities, strict=True))
    assert torch.allclose(fused.probability, mean, atol=1e-6, rtol=0)


def test_a_case_with_fold_maps_runs_the_engine_once(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = []
    monkeypatch.setattr(predictor, "run_ensemble",
                        lambda *a, **k: runs.append(k["per_network"]) or run_ensemble(*a, **k))
    pet, ct, _, _ = make_case(size=(30, 30, 24), spacing=(4.0, 4.0, 6.0))
    networks = [Counting(seed) for seed in (1, 2)]
    config = resolve_inference_config(InferenceConfig(roi_size=(32, 32, 32)))
    result = Predictor(networks, TINY, config, device="cpu").predict(
        pet, ct, fold_probabilities=True)
    assert runs == [True]
    assert result.fold_probabilities is not None and len(result.fold_probabilities) == 2


def test_predictor_segments_a_prepared_volume_as_validation_needs() -> None:
    network = Counting(4)
    image = torch.rand(2, 20, 24, 28)
    config = resolve_inference_config(InferenceConfig(roi_size=(16, 16, 16), threshold=0.47))
    mask, probability = Predictor([network], TINY, config, device="cpu").segment_volume(image)
    expected = sliding_window_probability([network], image, config, None, "cpu")
    assert torch.allclose(probability, expected, atol=1e-6, rtol=0)
    assert mask.dtype == np.uint8 and mask.shape == (20, 24, 28)
    np.testing.assert_array_equal(mask, threshold_mask(probability.numpy(), 0.47))
    np.testing.assert_array_equal(mask, (probability > 0.47).numpy())
    # against the other path too, but a voxel within its 1e-6 of the threshold may go
    # either way on another CPU
    clear = ((expected - 0.47).abs() > 1e-6).numpy()
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(mask[clear], (expected > 0.47).numpy()[clear])


def test_the_predictor_takes_only_a_settled_threshold() -> None:
    with pytest.raises(ValueError, match=r"config\.threshold is None"):
        Predictor([Counting(1)], TINY, InferenceConfig(roi_size=(16, 16, 16)), device="cpu")
    assert resolve_inference_config(InferenceConfig()).threshold == 0.5
    assert resolve_inference_config(InferenceConfig(), 0.7).threshold == 0.7
    assert resolve_inference_config(InferenceConfig(threshold=0.3), 0.7).threshold == 0.3


@pytest.mark.parametrize(("changes", "message"), [
    ({"windows_per_batch": 0}, "windows_per_batch 0: must be a positive integer or \"auto\"; "
                               "fix the inference config"),
    ({"tta": 9}, "tta 9: must be 1 to 8 flip passes"),
    ({"overlap": 1.0}, "overlap 1.0: must be >= 0 and < 1"),
    ({"time_budget_s": -1.0}, "time budget -1.0 s: must be positive"),
])
def test_inference_settings_check_themselves_when_built(changes, message) -> None:
    with pytest.raises(PetsegError, match=f"^{message}$".replace("(", r"\(")):
        InferenceConfig(**changes)
    with pytest.raises(PetsegError, match=f"^{message}$".replace("(", r"\(")):
        from_dict(InferenceConfig, changes)


def _predict_args(*extra: str) -> argparse.Namespace:
    from petseg.commands.predict import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--input", "in", "--output", "out", *extra])


def test_predict_overrides_settings_like_train(tmp_path: Path) -> None:
    from petseg.commands.predict import settings

    file = tmp_path / "inference.json"
    file.write_text('{"roi_size": [64, 64, 64], "overlap": 0.25}')
    config = settings(_predict_args("--config", str(file), "--set", "roi_size=[32,48,64]",
                                    "--set", "tta=2", "--set", "mode=reference",
                                    "--mode", "fast", "--threshold", "0.4"))
    assert config == InferenceConfig(roi_size=(32, 48, 64), overlap=0.25, tta=2, mode="fast",
                                     threshold=0.4)
    with pytest.raises(PetsegError, match=r"^--set roi=1: unknown field 'roi'; see "
                                          r"resources/inference.json$"):
        settings(_predict_args("--set", "roi=1"))
    with pytest.raises(PetsegError, match=r"^--set tta: use FIELD=VALUE, e.g. tta=2$"):
        settings(_predict_args("--set", "tta"))
    with pytest.raises(PetsegError, match=r"^tta 0: must be 1 to 8 flip passes$"):
        settings(_predict_args("--set", "tta=0"))


def test_one_size_divisor_for_configs_and_networks() -> None:
    assert size_divisor(TINY.network) == size_divisor(build_network(TINY.network)) == 4
    assert size_divisor(NetworkConfig()) == 16
    assert size_divisor(lambda x: x) == 1
    assert engine.network_size_divisor is size_divisor


MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
"""Outside `petseg/phantom/` (the anatomy tables of a generator, not a pipeline stage), a
module longer than this, or a function, is a stage that wants splitting."""


def oversized(root: Path = PACKAGE) -> list[str]:
    """'path: N lines' for each module, 'path:function: N lines' for each function, of
    `root` over the limits, `phantom/` left out."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if "phantom" in path.relative_to(root).parts:
            continue
        text = path.read_text()
        relative = path.relative_to(root.parent)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            found.append(f"{relative}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{relative}:{node.name}: {length} lines")
    return found


def test_no_module_or_function_outgrows_its_stage(tmp_path: Path) -> None:
    assert oversized() == []
    assert oversized(REPOSITORY / "benchmarks") == []
    # the check itself sees both kinds
    package = tmp_path / "petseg"
    (package / "phantom").mkdir(parents=True)
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    (package / "long.py").write_text(f"def stage():\n{body}")
    (package / "phantom" / "anatomy.py").write_text(f"def table():\n{body}")
    (package / "big.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    assert oversized(package) == ["petseg/big.py: 501 lines",
                                  f"petseg/long.py:stage: {MAX_FUNCTION_LINES + 1} lines"]


MAX_TOP_LEVEL_MODULES = 15
"""The modules beside the stage packages (`io/`, `inference/`, `evaluation/`, ...): the
entry points and what every stage shares. A module past these belongs in a package."""


def loose_modules(root: Path = PACKAGE) -> list[str]:
    """The .py files directly under `root`."""
    return sorted(path.name for path in root.glob("*.py"))


def test_the_package_reads_like_the_pipeline(tmp_path: Path) -> None:
    assert len(loose_modules()) <= MAX_TOP_LEVEL_MODULES, loose_modules()
    for stage in ("io", "inference", "interactive", "serve", "runs", "evaluation", "clinical",
                  "training", "phantom", "commands"):
        init = PACKAGE / stage / "__init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} says what it holds"
    assert "images.py" in {p.name for p in (PACKAGE / "io").glob("*.py")}
    # the check itself counts only the top level
    (tmp_path / "a.py").touch()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").touch()
    assert loose_modules(tmp_path) == ["a.py"]
