"""The PyTorch baseline of ``bench/round.py``: a sequential FL simulator.

This is how a careful PyTorch user writes a cross-device FedAvg simulation on
one machine: one model object, the selected clients trained one after another
(a ``DataLoader`` over each client's in-memory tensors, plain SGD), and the
example-weighted mean of the client deltas added to the global weights. No
per-step synchronisation, logging or copies that such a user would not have.

The CNN is the same as ``fsjax.models.CNN``: raw ``uint8`` NHWC images in,
normalised inside the model with the same constants; :func:`load_flax_params`
copies Flax parameters in (``HWIO`` -> ``OIHW`` kernels, and the first dense
layer's input rows reordered from Flax's NHWC flatten to torch's NCHW flatten)
so both frameworks start from the same weights.

Example:
  >>> import jax
  >>> from fsjax import models
  >>> flax_params = models.init_params(models.build("cnn", 10), jax.random.key(0), (32, 32, 3))
  >>> net = TorchCNN(num_classes=10)
  >>> load_flax_params(net, flax_params)
  >>> sim = SequentialFedAvg(net, x, y, n, lr=0.1, batch_size=10, steps=5)  # doctest: +SKIP
  >>> sim.round([3, 17, 42])                                                # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fsjax.models import CIFAR10_MEAN, CIFAR10_STD


def set_threads(num_threads: int | None = None) -> int:
    """Uses every core for torch's intra-op parallelism (returns the count)."""
    num_threads = num_threads or os.cpu_count() or 1
    torch.set_num_threads(num_threads)
    return num_threads


class TorchCNN(nn.Module):
    """conv5x5(32) -> relu -> pool -> conv5x5(64) -> relu -> pool -> dense(512)
    -> relu -> dense(num_classes), like ``fsjax.models.CNN``.

    Takes ``uint8[B, H, W, C]`` images (fsjax's layout) and normalises inside.
    """

    def __init__(self, num_classes: int = 10, features: Sequence[int] = (32, 64),
                 hidden: int = 512, image_shape: Sequence[int] = (32, 32, 3)):
        super().__init__()
        h, w, c = image_shape
        convs, ch = [], c
        for f in features:
            convs.append(nn.Conv2d(ch, f, 5, padding=2))
            ch = f
            h, w = h // 2, w // 2
        self.convs = nn.ModuleList(convs)
        self.fc1 = nn.Linear(ch * h * w, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)
        if c == len(CIFAR10_MEAN):
            mean, std = torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD)
        else:  # fsjax's rule for other channel counts: centre only
            mean, std = torch.full((c,), 0.5), torch.full((c,), 0.25)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The same arithmetic as fsjax.models._normalise: x / 255, then (x - m) / s.
        x = x.permute(0, 3, 1, 2).float() / 255.0
        x = (x - self.mean) / self.std
        for conv in self.convs:
            x = nn.functional.max_pool2d(torch.relu(conv(x)), 2)
        x = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)


def load_flax_params(net: TorchCNN, flax_params) -> None:
    """Copies ``fsjax.models.CNN`` parameters into ``net`` (in place).

    Args:
      net: a :class:`TorchCNN` with the same sizes.
      flax_params: the Flax variables ``{"params": {"Conv_0": ..., "Dense_0": ...}}``.
    """
    p = flax_params["params"] if "params" in flax_params else flax_params
    t = lambda a: torch.from_numpy(np.array(a, np.float32))
    with torch.no_grad():
        for i, conv in enumerate(net.convs):
            k = np.asarray(p[f"Conv_{i}"]["kernel"])           # HWIO
            conv.weight.copy_(t(k.transpose(3, 2, 0, 1)))      # OIHW
            conv.bias.copy_(t(p[f"Conv_{i}"]["bias"]))
        k = np.asarray(p["Dense_0"]["kernel"])                  # [h*w*c (NHWC order), hidden]
        c = net.convs[-1].out_channels
        hw = k.shape[0] // c
        side = int(round(hw ** 0.5))
        if side * side != hw:
            raise ValueError(f"Dense_0 kernel rows={k.shape[0]}: expected a square map "
                             f"of {c} channels")
        k = k.reshape(side, side, c, -1).transpose(2, 0, 1, 3).reshape(k.shape[0], -1)
        net.fc1.weight.copy_(t(k.T))
        net.fc1.bias.copy_(t(p["Dense_0"]["bias"]))
        net.fc2.weight.copy_(t(np.asarray(p["Dense_1"]["kernel"]).T))
        net.fc2.bias.copy_(t(p["Dense_1"]["bias"]))


def to_flax_layout(net: TorchCNN) -> dict:
    """The inverse of :func:`load_flax_params`: ``net``'s weights as Flax arrays (numpy)."""
    g = lambda a: a.detach().cpu().numpy()
    out = {}
    for i, conv in enumerate(net.convs):
        out[f"Conv_{i}"] = {"kernel": g(conv.weight).transpose(2, 3, 1, 0), "bias": g(conv.bias)}
    c = net.convs[-1].out_channels
    w = g(net.fc1.weight).T                                  # [c*h*w (NCHW order), hidden]
    side = int(round((w.shape[0] // c) ** 0.5))
    w = w.reshape(c, side, side, -1).transpose(1, 2, 0, 3).reshape(w.shape[0], -1)
    out["Dense_0"] = {"kernel": w, "bias": g(net.fc1.bias)}
    out["Dense_1"] = {"kernel": g(net.fc2.weight).T, "bias": g(net.fc2.bias)}
    return {"params": out}


class SequentialFedAvg:
    """FedAvg with the selected clients trained one after another.

    Args:
      net: the global model (trained in place each round).
      x: uint8[C, N_max, H, W, ch] client images (numpy or torch; on the CPU
        they are shared, not copied).
      y: int[C, N_max] labels.
      n: int[C] valid rows per client.
      lr: client SGD learning rate.
      batch_size: examples per local step.
      steps: local steps per client (``steps * batch_size <= n`` is one epoch or less).
      seed: seed of the client shuffles.
      device: where the model and the client data live (``"cpu"``, ``"cuda"``).
    """

    def __init__(self, net: TorchCNN, x, y, n, *, lr: float = 0.1, batch_size: int = 10,
                 steps: int = 5, seed: int = 0, device: str = "cpu"):
        self.net = net.to(device)
        self.x = torch.as_tensor(x).to(device)
        self.y = torch.as_tensor(y).long().to(device)
        self.n = np.asarray(n)
        self.lr, self.batch_size, self.steps = lr, batch_size, steps
        self.generator = torch.Generator().manual_seed(seed)   # the sampler's, on the CPU
        self.params = [p for p in net.parameters()]
        self.loss_fn = nn.CrossEntropyLoss()

    def train_client(self, c: int) -> float:
        """Local SGD of client ``c`` starting from the current ``net`` weights.

        Returns the mean loss of the steps done (``net`` holds the trained weights).
        """
        n = int(self.n[c])
        data = TensorDataset(self.x[c, :n], self.y[c, :n])
        loader = DataLoader(data, batch_size=self.batch_size, shuffle=True,
                            generator=self.generator, drop_last=False)
        opt = torch.optim.SGD(self.net.parameters(), lr=self.lr)
        loss_sum = torch.zeros((), device=self.x.device)
        done = 0
        while done < self.steps:   # epochs until `steps` mini-batches are done
            for xb, yb in loader:
                opt.zero_grad(set_to_none=True)
                loss = self.loss_fn(self.net(xb), yb)
                loss.backward()
                opt.step()
                loss_sum += loss.detach()
                done += 1
                if done == self.steps:
                    break
        return float(loss_sum) / max(done, 1)

    @torch.no_grad()
    def round(self, clients: Sequence[int]) -> float:
        """One FedAvg round over ``clients``; returns the mean client loss."""
        global_w = [p.detach().clone() for p in self.params]
        total = [torch.zeros_like(p) for p in self.params]
        weight_sum, losses = 0.0, []
        for c in clients:
            with torch.enable_grad():
                losses.append(self.train_client(int(c)))
            w = float(self.n[int(c)])
            for acc, p, g in zip(total, self.params, global_w):
                acc.add_(p.sub_(g), alpha=w)    # weighted delta, no temporary
                p.copy_(g)                      # reset for the next client
            weight_sum += w
        if weight_sum > 0:
            for p, acc in zip(self.params, total):
                p.add_(acc, alpha=1.0 / weight_sum)
        return float(np.mean(losses)) if losses else float("nan")
