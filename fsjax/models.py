"""Flax models and their registry.

Models take raw ``uint8`` images (or any numeric array) and normalise inside,
so client data stays compact on the device.

The convolution has two lowerings with the same parameters (``HWIO`` kernel,
bias), chosen by ``conv``:

- ``"xla"``: ``lax.conv_general_dilated``, XLA's own convolution: best on GPU.
- ``"im2col"``: patches by slicing, then one matrix product. On XLA:CPU a
  convolution inside a loop (``lax.scan``/``lax.map``) or under ``vmap`` ran
  about 10x slower than outside one (see PERF-NOTES.md); a matrix product
  does not, so local training can be a rolled ``lax.scan`` and clients can be
  mapped without unrolling.
- ``"auto"``: ``im2col`` on CPU, ``xla`` elsewhere.

Max pooling of stride 2 by 2 is a reshape and a max (no ``reduce_window``,
whose gradient is slow on CPU).

Example:
  >>> import jax, jax.numpy as jnp
  >>> model = build("cnn", num_classes=10)
  >>> params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.uint8))
  >>> model.apply(params, jnp.zeros((2, 32, 32, 3), jnp.uint8)).shape
  (2, 10)
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# CIFAR-10 channel statistics of [0, 1] pixels.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def resolve_conv(conv: str) -> str:
    """Maps ``"auto"`` to the lowering that is fastest on the default backend."""
    if conv == "auto":
        return "im2col" if jax.default_backend() == "cpu" else "xla"
    if conv not in ("xla", "im2col"):
        raise ValueError(f"conv={conv!r}: expected 'auto', 'xla' or 'im2col'")
    return conv


def _normalise(x: jax.Array, mean, std) -> jax.Array:
    x = x.astype(jnp.float32) / 255.0
    if x.shape[-1] == len(mean):
        x = (x - jnp.asarray(mean)) / jnp.asarray(std)
    else:  # generated data with another channel count: centre only
        x = (x - 0.5) / 0.25
    return x


# Below this many features per kernel row (kw * Ci), one product over whole
# patches is faster; from it on, one product per kernel row (see im2col_conv).
_ROW_PATCH_MIN_FEATURES = 64


def im2col_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """SAME, stride-1 convolution as patches @ kernel.

    Narrow inputs (``kw * Ci < 64``, e.g. RGB images) use whole patches: one
    product ``[B*H*W, kh*kw*Ci] @ [kh*kw*Ci, Co]``. Wider inputs use patches of
    one kernel row (``kw * Ci`` features) and sum ``kh`` products over the row
    offsets: a ``kh`` times smaller patch array to build, and to fold back in
    the backward pass (about 4% less time per client for the CIFAR-10 CNN on
    XLA:CPU; bench/README.md).

    Args:
      x: f32[B, H, W, Ci].
      kernel: f32[kh, kw, Ci, Co] (odd kh, kw).

    Returns:
      f32[B, H, W, Co], equal to ``lax.conv_general_dilated(..., "SAME")``.
    """
    kh, kw, ci, co = kernel.shape
    b, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    if kw * ci < _ROW_PATCH_MIN_FEATURES:
        # Patch feature order (i, j, c) matches kernel.reshape(kh*kw*ci, co).
        patches = jnp.concatenate(
            [xp[:, i:i + h, j:j + w, :] for i in range(kh) for j in range(kw)], axis=-1)
        out = patches.reshape(b * h * w, kh * kw * ci) @ kernel.reshape(kh * kw * ci, co)
        return out.reshape(b, h, w, co)
    # Row patches [B, H+kh-1, W, kw*ci]; feature order (j, c) matches kernel[i].reshape.
    rows = jnp.concatenate([xp[:, :, j:j + w, :] for j in range(kw)], axis=-1)
    out = sum(rows[:, i:i + h].reshape(b * h * w, kw * ci) @ kernel[i].reshape(kw * ci, co)
              for i in range(kh))
    return out.reshape(b, h, w, co)


class Conv(nn.Module):
    """SAME, stride-1 2-D convolution with a selectable lowering (see module doc)."""

    features: int
    kernel_size: tuple[int, int] = (5, 5)
    conv: str = "auto"

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (kh, kw, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if resolve_conv(self.conv) == "im2col":
            y = im2col_conv(x, kernel)
        else:
            y = jax.lax.conv_general_dilated(
                x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 (floor on odd sizes)."""
    b, h, w, c = x.shape
    x = x[:, : h - h % 2, : w - w % 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class CNN(nn.Module):
    """The small CIFAR-10 CNN of FL benchmarks (McMahan et al. 2017; pfl-research).

    conv5x5(32) -> relu -> pool -> conv5x5(64) -> relu -> pool -> dense(512)
    -> relu -> dense(num_classes); 2.16 M parameters on 32x32x3 inputs.
    """

    num_classes: int = 10
    features: Sequence[int] = (32, 64)
    hidden: int = 512
    conv: str = "auto"

    @nn.compact
    def __call__(self, x):
        x = _normalise(x, CIFAR10_MEAN, CIFAR10_STD)
        for f in self.features:
            x = max_pool_2x2(nn.relu(Conv(f, conv=self.conv)(x)))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden)(x))
        return nn.Dense(self.num_classes)(x)


class MLP(nn.Module):
    """A small multi-layer perceptron for tests and quick experiments."""

    num_classes: int = 10
    hidden: Sequence[int] = (64,)

    @nn.compact
    def __call__(self, x):
        x = _normalise(x, CIFAR10_MEAN, CIFAR10_STD).reshape(x.shape[0], -1)
        for h in self.hidden:
            x = nn.relu(nn.Dense(h)(x))
        return nn.Dense(self.num_classes)(x)


REGISTRY = {"cnn": CNN, "mlp": MLP}


def build(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Makes a registered model.

    Args:
      name: a key of :data:`REGISTRY`.
      num_classes: output classes.
      **kwargs: module fields (e.g. ``hidden=(128,)``, ``conv="xla"``).
    """
    if name not in REGISTRY:
        raise ValueError(f"model name={name!r}: expected one of {sorted(REGISTRY)}")
    fields = set(REGISTRY[name].__dataclass_fields__) - {"parent", "name"}
    unknown = set(kwargs) - fields
    if unknown:
        raise ValueError(f"model {name!r}: unknown option(s) {sorted(unknown)}; "
                         f"expected some of {sorted(fields - {'num_classes'})}")
    for field, value in kwargs.items():
        want = REGISTRY[name].__dataclass_fields__[field].type
        if "Sequence[int]" in str(want):
            ok = (isinstance(value, (list, tuple)) and len(value) > 0
                  and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                          for v in value))
            what = "a non-empty list of positive integers, e.g. [256]"
        elif str(want) == "int" or want is int:
            ok, what = isinstance(value, int) and not isinstance(value, bool) and value > 0, \
                "a positive integer, e.g. 512"
        else:
            continue
        if not ok:
            raise ValueError(f"model.{field}={value!r} for model {name!r}: expected {what}")
    return REGISTRY[name](num_classes=num_classes, **kwargs)


def init_params(model: nn.Module, key: jax.Array, image_shape: Sequence[int]):
    """Initial parameters for images of ``image_shape`` (H, W, C).

    Args:
      model: a module from :func:`build`.
      key: the PRNG key of the initialisation.
      image_shape: ``(H, W, C)`` of one image.

    Returns:
      The parameter pytree (``{"params": {...}}``).

    Example:
      >>> model = build("mlp", num_classes=3, hidden=(4,))
      >>> params = init_params(model, jax.random.key(0), (2, 2, 1))
      >>> jax.tree.map(jnp.shape, params)["params"]["Dense_0"]
      {'bias': (4,), 'kernel': (4, 4)}
    """
    return model.init(key, jnp.zeros((1, *image_shape), jnp.uint8))


def param_shapes(model: nn.Module, image_shape: Sequence[int]):
    """The shapes and dtypes of :func:`init_params`' result, without computing it.

    Traces the initialisation with :func:`jax.eval_shape`: no random numbers are
    drawn and nothing is compiled, so it is the cheap way to get a template
    (e.g. zero buffers for parameters arriving over the wire).

    Args:
      model: a module from :func:`build`.
      image_shape: ``(H, W, C)`` of one image.

    Returns:
      A pytree like :func:`init_params`' with ``jax.ShapeDtypeStruct`` leaves.

    Example:
      >>> shapes = param_shapes(build("mlp", num_classes=3, hidden=(4,)), (2, 2, 1))
      >>> shapes["params"]["Dense_1"]["kernel"]
      ShapeDtypeStruct(shape=(4, 3), dtype=float32)
    """
    return jax.eval_shape(lambda key: init_params(model, key, image_shape), jax.random.key(0))
