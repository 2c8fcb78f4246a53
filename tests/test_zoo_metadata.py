"""Reloading keeps state-dict version metadata (tdexport.zoo.weights.load_weights_into), CPU only, no network.

Files never carry ``state_dict._metadata``; torchvision's MNASNet reads ``local_metadata['version']`` in
``_load_from_state_dict`` and raises ValueError when it is absent, so its checkpoints could not be reloaded.
mnasnet0_5 is the smallest torchvision classifier that does this; 32x32 inputs keep the tests quick
(MNASNet averages over H and W, so any resolution works).
"""

from __future__ import annotations

import safetensors.torch
import torch

import tdexport
from tdexport import zoo

SHAPE = (3, 32, 32)


def _inputs() -> torch.Tensor:
    return torch.linspace(-2, 2, 2 * 3 * 32 * 32).reshape(2, *SHAPE)


def _trained_like(name: str) -> torch.nn.Module:
    """Random weights with BN statistics moved away from their initial values, so loading them is observable."""
    torch.manual_seed(0)
    model = zoo.create_model(name, weights="random")
    model.train()
    with torch.no_grad():
        model(torch.randn(4, *SHAPE))
    return model.eval()


def test_compressed_mnasnet_reloads_with_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    compressed = tdexport.compress("mnasnet0_5", format="tucker", rank="ratio:0.5", weights="random",
                                   input_shape=SHAPE)
    assert any(layer.decision == "decomposed" for layer in compressed.plan.layers)
    tdexport.save(tmp_path / "ckpt", compressed)
    torch.manual_seed(1)  # the rebuilt model starts from other random weights: all must come from the file
    loaded = tdexport.load(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(loaded(_inputs()), compressed.model.eval()(_inputs()))
    assert loaded.state_dict().keys() == compressed.model.state_dict().keys()


def test_dense_mnasnet_checkpoint_loads(tmp_path):
    saved = _trained_like("mnasnet0_5")
    path = tmp_path / "mnasnet.safetensors"
    safetensors.torch.save_file(saved.state_dict(), str(path))
    loaded = zoo.create_model("mnasnet0_5", weights=str(path))
    with torch.no_grad():
        assert torch.equal(loaded(_inputs()), saved(_inputs()))


def test_missing_batchnorm_counters_keep_the_models_own_and_input_is_untouched():
    saved = _trained_like("mnasnet0_5")
    state = {k: v for k, v in saved.state_dict().items() if not k.endswith("num_batches_tracked")}
    keys = list(state)
    torch.manual_seed(1)
    target = zoo.create_model("mnasnet0_5", weights="random")
    own = {k: v.clone() for k, v in target.state_dict().items() if k.endswith("num_batches_tracked")}
    zoo.load_weights_into(target, state, source="test")
    assert list(state) == keys  # the caller's mapping gained no counters
    assert all(torch.equal(target.state_dict()[k], v) for k, v in own.items())
    with torch.no_grad():
        assert torch.equal(target(_inputs()), saved(_inputs()))
