"""Where is Waldo? The source text's motivating example, as conv_ext's main job.

Synthetic 64x64 RGB scenes hide a small red-and-white striped 'Waldo' among distractors: solid
red and white blocks, blocks with vertical, thick or red-blue stripes, random blocks and noise. A
fully convolutional network built only from conv_ext.Conv2d layers and ReLUs turns a scene into a
heat map of 'waldoness'; translation invariance and locality, the two principles the layer is
derived from, are exactly what the task needs. The peak of the map is the answer.

    python -m conv_ext.demo                 # train on CPU (about 20 s on 2 cores), report, save waldo.png
    python -m conv_ext.demo --compare       # also train with nn.Conv2d; loss curves side by side
"""
import argparse
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import conv_ext

SIZE = 64
WALDO_H, WALDO_W = 8, 6
RED, WHITE, BLUE = (0.85, 0.1, 0.1), (0.95, 0.95, 0.95), (0.1, 0.2, 0.8)


def _stripes(first, second, height, width, horizontal=True, thickness=1):
    """A (3, height, width) patch of stripes alternating between two colours."""
    index = torch.arange(height if horizontal else width) // thickness % 2
    colours = torch.tensor([first, second])[index].T  # (3, stripes)
    return colours[:, :, None].expand(3, height, width) if horizontal else colours[:, None, :].expand(3, height, width)


WALDO = _stripes(RED, WHITE, WALDO_H, WALDO_W)


def _distractor(gen):
    """A random patch that shares something with Waldo but is not him."""
    h, w = (int(v) for v in torch.randint(3, 11, (2,), generator=gen))
    kind = int(torch.randint(0, 6, (), generator=gen))
    if kind == 0:  # vertical red/white stripes
        return _stripes(RED, WHITE, h, w, horizontal=False)
    if kind == 1:  # horizontal red/blue stripes
        return _stripes(RED, BLUE, h, w)
    if kind == 2:  # red/white stripes twice as thick
        return _stripes(RED, WHITE, h, w, thickness=2)
    if kind in (3, 4):  # solid red or white
        return torch.tensor(RED if kind == 3 else WHITE)[:, None, None].expand(3, h, w)
    return torch.rand(3, 1, 1, generator=gen).expand(3, h, w)  # a block of random colour


def make_scenes(count, gen, distractors=14):
    """count scenes (count, 3, SIZE, SIZE) in [0, 1] and Waldo's centre in each, (count, 2)."""
    scenes = torch.rand(count, 3, 1, 1, generator=gen) * 0.6 + 0.2
    scenes = (scenes + 0.08 * torch.randn(count, 3, SIZE, SIZE, generator=gen)).clone()
    centres = torch.empty(count, 2, dtype=torch.long)
    for i in range(count):
        for _ in range(distractors):
            patch = _distractor(gen)
            y, x = (int(torch.randint(0, SIZE - s + 1, (), generator=gen)) for s in patch.shape[1:])
            scenes[i, :, y : y + patch.shape[1], x : x + patch.shape[2]] = patch
        y = int(torch.randint(0, SIZE - WALDO_H + 1, (), generator=gen))
        x = int(torch.randint(0, SIZE - WALDO_W + 1, (), generator=gen))
        scenes[i, :, y : y + WALDO_H, x : x + WALDO_W] = WALDO
        centres[i] = torch.tensor([y + WALDO_H // 2, x + WALDO_W // 2])
    noise = 0.03 * torch.randn(scenes.shape, generator=gen)
    return (scenes + noise).clamp(0, 1), centres


def make_detector(conv=conv_ext.Conv2d, width=16):
    """A fully convolutional heat-map network; dilations grow the receptive field to 17 pixels."""
    return nn.Sequential(
        conv(3, width, 3, padding=1), nn.ReLU(),
        conv(width, width, 3, padding=1), nn.ReLU(),
        conv(width, width, 3, padding=2, dilation=2), nn.ReLU(),
        conv(width, width, 3, padding=4, dilation=4), nn.ReLU(),
        conv(width, 1, 1),
    )


def localisation_loss(heat, centres, floor=50.0):
    """Cross-entropy of a softmax over all positions against Waldo's centre.

    Logits more than `floor` below a map's peak are raised to it. Their softmax terms (under
    e^-50) are lost in float32's rounding of the loss anyway, but their gradients were not: as
    the maps sharpened they reached denormal floats, which x86 CPUs handle in microcode, and the
    default training took 150 s instead of 18 s (measured, after other work in the process). The
    floor keeps every gradient a normal float. (torch.set_flush_denormal would only reach the
    threads it is called on, not a thread pool that already exists.)
    """
    logits = heat.flatten(1)
    logits = torch.maximum(logits, logits.amax(1, keepdim=True).detach() - floor)
    return F.cross_entropy(logits, centres[:, 0] * SIZE + centres[:, 1])


def find(heat):
    """The (row, column) of each heat map's peak."""
    index = heat.flatten(1).argmax(1)
    return torch.stack([index // SIZE, index % SIZE], 1)


def accuracy(found, centres, tolerance=3):
    """Share of scenes where the peak lies within tolerance pixels of Waldo's centre (each axis)."""
    return ((found - centres).abs().max(1).values <= tolerance).float().mean().item()


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total, label):
        self.total, self.label, self.start = total, label, time.time()

    def update(self, step, loss):
        done = int(30 * step / self.total)
        sys.stderr.write(f"\r{self.label} [{'#' * done}{'.' * (30 - done)}] {step}/{self.total} "
                         f"loss {loss:.3f} {time.time() - self.start:.0f}s")
        if step == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def train(model, steps, batch, seed, label):
    """Adam on fresh scenes every step; returns the loss curve."""
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    progress, losses = Progress(steps, label), []
    for step in range(1, steps + 1):
        scenes, centres = make_scenes(batch, gen)
        loss = localisation_loss(model(scenes), centres)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        progress.update(step, losses[-1])
    return losses


@torch.no_grad()
def evaluate(model, count=500, seed=12345):
    """Localisation accuracy on held-out scenes (a generator seed training never uses)."""
    scenes, centres = make_scenes(count, torch.Generator().manual_seed(seed))
    heat = torch.cat([model(chunk) for chunk in scenes.split(100)])
    return accuracy(find(heat), centres), scenes, centres, heat


def save_picture(path, scenes, centres, heat, count=4):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'conv_ext[demo]'): no picture saved")
        return
    found = find(heat)
    fig, axes = plt.subplots(2, count, figsize=(3 * count, 6.2))
    for i in range(count):
        axes[0, i].imshow(scenes[i].permute(1, 2, 0).numpy())
        axes[0, i].add_patch(plt.Rectangle(
            (centres[i, 1] - WALDO_W // 2 - 0.5, centres[i, 0] - WALDO_H // 2 - 0.5), WALDO_W, WALDO_H,
            fill=False, edgecolor="lime", linewidth=1.5))
        axes[0, i].plot(found[i, 1], found[i, 0], "x", color="black", markersize=10, markeredgewidth=2.5)
        axes[1, i].imshow(heat[i, 0].numpy(), cmap="magma")
        axes[1, i].plot(found[i, 1], found[i, 0], "x", color="cyan", markersize=10, markeredgewidth=2)
        for ax in axes[:, i]:
            ax.set_xticks([]), ax.set_yticks([])
    axes[0, 0].set_ylabel("scene (green: Waldo, x: found)")
    axes[1, 0].set_ylabel("heat map (logits)")
    fig.suptitle("Where is Waldo? A conv_ext.Conv2d network's answers on held-out scenes")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"saved {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare", action="store_true", help="also train with nn.Conv2d and compare")
    parser.add_argument("--out", default="waldo.png", help="picture of scenes and heat maps ('' for none)")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model = make_detector()
    twin = make_detector(nn.Conv2d)
    twin.load_state_dict(model.state_dict())  # same start, to compare training paths

    losses = train(model, args.steps, args.batch, args.seed, "conv_ext.Conv2d")
    acc, scenes, centres, heat = evaluate(model)
    print(f"conv_ext.Conv2d: final loss {losses[-1]:.3f}, held-out accuracy {acc:.1%} "
          f"(Waldo found within 3 pixels in {acc * 500:.0f} of 500 scenes)")
    if args.compare:
        twin_losses = train(twin, args.steps, args.batch, args.seed, "nn.Conv2d      ")
        twin_acc = evaluate(twin)[0]
        print(f"nn.Conv2d:       final loss {twin_losses[-1]:.3f}, held-out accuracy {twin_acc:.1%}")
        print("\n  step   conv_ext.Conv2d   nn.Conv2d")
        for step in sorted({*range(0, args.steps, max(1, args.steps // 12)), args.steps - 1}):
            print(f"  {step + 1:4d}   {losses[step]:15.4f}   {twin_losses[step]:9.4f}")
    if args.out:
        save_picture(args.out, scenes, centres, heat)
    return acc


if __name__ == "__main__":
    main()
