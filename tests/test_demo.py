"""The Waldo demo, the README's main job: its scenes, its scoring, and a full run."""
import pytest
import torch

from conv_ext import demo


def test_scenes_hide_waldo_where_they_say():
    scenes, centres = demo.make_scenes(16, torch.Generator().manual_seed(7))
    assert scenes.shape == (16, 3, demo.SIZE, demo.SIZE)
    assert 0 <= scenes.min() and scenes.max() <= 1
    for scene, (y, x) in zip(scenes, centres.tolist()):
        top, left = y - demo.WALDO_H // 2, x - demo.WALDO_W // 2
        patch = scene[:, top : top + demo.WALDO_H, left : left + demo.WALDO_W]
        assert (patch - demo.WALDO).abs().max() < 0.2  # only the pixel noise differs


def test_accuracy_counts_peaks_within_tolerance():
    centres = torch.tensor([[10, 10], [20, 30], [40, 5]])
    found = torch.tensor([[13, 7], [20, 34], [40, 5]])
    assert demo.accuracy(found, centres, tolerance=3) == pytest.approx(2 / 3)
    heat = torch.zeros(1, 1, demo.SIZE, demo.SIZE)
    heat[0, 0, 17, 42] = 1
    assert demo.find(heat).tolist() == [[17, 42]]


def test_main_job_finds_waldo(tmp_path):
    """The default run, as the README starts it: at least 95% of held-out scenes localised."""
    picture = tmp_path / "waldo.png"
    accuracy = demo.main(["--out", str(picture)])
    assert accuracy >= 0.95
    assert picture.stat().st_size > 10_000


def test_loss_gradients_stay_normal_floats_on_sharp_maps():
    """A trained map's far-below-peak logits must not give denormal gradients (microcode-slow on
    x86; they made the demo's steps 8x slower once a thread pool existed before training)."""
    heat = torch.linspace(-120, 0, demo.SIZE * demo.SIZE).reshape(1, 1, demo.SIZE, demo.SIZE)
    heat = heat.repeat(2, 1, 1, 1).requires_grad_()
    centres = torch.tensor([[demo.SIZE - 1, demo.SIZE - 1], [demo.SIZE - 1, demo.SIZE - 2]])
    loss = demo.localisation_loss(heat, centres)
    loss.backward()
    grad = heat.grad.flatten()
    assert not ((grad != 0) & (grad.abs() < torch.finfo(grad.dtype).tiny)).any()
    unfloored = torch.nn.functional.cross_entropy(heat.detach().flatten(1), centres[:, 0] * demo.SIZE + centres[:, 1])
    assert loss.item() == pytest.approx(unfloored.item(), rel=1e-6)
