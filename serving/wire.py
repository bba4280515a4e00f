"""The wire format: param trees and updates as msgpack, validated against a template.

Param trees travel as ``flax.serialization`` msgpack (``to_state_dict`` then
``msgpack_serialize``; no pickle anywhere). Whatever comes in is checked
against the receiver's own template tree before it is used: the same nested
keys, every leaf an array of the template's shape and dtype, every value
finite, and the whole body no larger than ``max_bytes``. Anything else is a
:class:`WireError` whose message names the problem and whose ``status`` is
the HTTP code to answer with (400 malformed, 413 too large, 422 wrong content).

Two messages:

- the model, ``GET /model``: ``{"round": int, "params": state dict}``;
- an update, ``POST /update``: :class:`Update` as a msgpack map, ``delta``
  being the trained params minus the global params, as a state dict.

Example:
  >>> import numpy as np
  >>> template = {"w": np.zeros((2, 3), np.float32)}
  >>> data = encode_model({"w": np.ones((2, 3), np.float32)}, round=4)
  >>> params, r = decode_model(data, template)
  >>> r, params["w"].sum()
  (4, np.float32(6.0))
  >>> bad = encode_model({"w": np.ones(3, np.float32)}, round=4)
  >>> decode_model(bad, template)  # doctest: +IGNORE_EXCEPTION_DETAIL
  Traceback (most recent call last):
  ...
  fsjax.serving.wire.WireError: model params/w: shape (3,), expected (2, 3)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import serialization

# Headroom over the raw size of the arrays: msgpack framing, keys and scalars.
_OVERHEAD = 64 * 1024


class WireError(ValueError):
    """A body that cannot be used; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


class Update(NamedTuple):
    """One client's answer to a training request (the body of ``POST /update``)."""

    client_id: int
    round: int
    num_examples: int   # the client's training examples (checked against registration)
    loss: float         # mean local mini-batch loss
    loss0: float        # F_k: global params' loss on the client's rows (q-FFL, AFL), else first batch
    steps: int          # local steps done
    delta: Any          # params tree: trained minus global


UPDATE_FIELDS = Update._fields


def tree_nbytes(template: Any) -> int:
    """Bytes of all array leaves of ``template``."""
    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(template)))


def params_template(model: Any, image_shape: tuple[int, ...]) -> Any:
    """Zeros shaped like ``model``'s params: the tree incoming messages are checked against.

    Shapes come from ``jax.eval_shape`` (no initialisation is computed).

    Args:
      model: a Flax module (:func:`fsjax.models.build`).
      image_shape: ``(H, W, C)`` of one input image.

    Returns:
      The params tree with numpy zeros leaves.
    """
    from fsjax import models

    shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.PRNGKey(0),
                                                       image_shape))
    return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def default_max_bytes(template: Any) -> int:
    """The body size limit for messages carrying a tree like ``template``."""
    return 2 * tree_nbytes(template) + _OVERHEAD


def encode_tree(tree: Any) -> dict:
    """``tree`` as a msgpack-ready state dict of numpy arrays."""
    return serialization.to_state_dict(jax.tree.map(np.asarray, jax.device_get(tree)))


def encode_model(params: Any, round: int) -> bytes:
    """The body of ``GET /model``."""
    return serialization.msgpack_serialize({"round": int(round), "params": encode_tree(params)})


def encode_update(update: Update) -> bytes:
    """The body of ``POST /update``."""
    body = update._asdict()
    body["delta"] = encode_tree(update.delta)
    for k in ("client_id", "round", "num_examples", "steps"):
        body[k] = int(body[k])
    for k in ("loss", "loss0"):
        body[k] = float(body[k])
    return serialization.msgpack_serialize(body)


def _restore(data: bytes, what: str, max_bytes: int | None) -> dict:
    if not isinstance(data, (bytes, bytearray)):
        raise WireError(f"{what}: expected bytes, got {type(data).__name__}", 400)
    if max_bytes is not None and len(data) > max_bytes:
        raise WireError(f"{what}: body of {len(data)} bytes is over the limit of "
                        f"{max_bytes} bytes", 413)
    if not data:
        raise WireError(f"{what}: empty body, expected msgpack", 400)
    try:
        raw = serialization.msgpack_restore(bytes(data))
    except Exception as err:  # noqa: BLE001 - msgpack raises many types on garbage
        raise WireError(f"{what}: malformed msgpack ({type(err).__name__}: {err})"[:500],
                        400) from None
    if not isinstance(raw, dict):
        raise WireError(f"{what}: expected a msgpack map, got {type(raw).__name__}", 400)
    return raw


def _check_keys(got: dict, expected, where: str, status: int = 400) -> None:
    keys = set(got)
    missing = [k for k in expected if k not in keys]
    extra = sorted(map(str, keys - set(expected)))
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + \
                ([f"unexpected {extra}"] if extra else [])
        raise WireError(f"{where}: {', '.join(parts)}; expected keys {sorted(expected)}",
                        status)


def check_tree(got: Any, template_state: Any, where: str) -> None:
    """Raises :class:`WireError` unless ``got`` matches ``template_state`` exactly.

    Args:
      got: a restored state dict (nested dicts of numpy arrays).
      template_state: ``to_state_dict`` of the template (numpy or jax leaves).
      where: the path named in messages.
    """
    if isinstance(template_state, dict):
        if not isinstance(got, dict):
            raise WireError(f"{where}: expected a map with keys {sorted(template_state)}, "
                            f"got {type(got).__name__}")
        _check_keys(got, list(template_state), where, 422)
        for k, sub in template_state.items():
            check_tree(got[k], sub, f"{where}/{k}")
        return
    want = np.asarray(template_state)
    if not isinstance(got, np.ndarray):
        raise WireError(f"{where}: expected a {want.dtype} array of shape {want.shape}, "
                        f"got {type(got).__name__}")
    if got.shape != want.shape:
        raise WireError(f"{where}: shape {got.shape}, expected {want.shape}")
    if got.dtype != want.dtype:
        raise WireError(f"{where}: dtype {got.dtype}, expected {want.dtype}")
    if got.dtype.kind in "fc" and not np.isfinite(got).all():
        bad = int(got.size - np.isfinite(got).sum())
        raise WireError(f"{where}: {bad} non-finite value(s) (NaN or Inf)")


def decode_tree(raw: Any, template: Any, where: str) -> Any:
    """A validated tree with ``template``'s structure from a restored state dict."""
    state = serialization.to_state_dict(template)
    check_tree(raw, state, where)
    # The check above makes every leaf a numpy array; copy so the tree owns its memory.
    return serialization.from_state_dict(template, jax.tree.map(np.array, raw))


def _int(raw: dict, key: str, where: str, lo: int = 0) -> int:
    v = raw[key]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise WireError(f"{where}: {key}={v!r:.80}: expected an integer", 400)
    if v < lo:
        raise WireError(f"{where}: {key}={v}: expected an integer >= {lo}", 400)
    return int(v)


def _float(raw: dict, key: str, where: str) -> float:
    v = raw[key]
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise WireError(f"{where}: {key}={v!r:.80}: expected a number", 400)
    if not math.isfinite(float(v)):
        raise WireError(f"{where}: {key}={v}: expected a finite number")
    return float(v)


def decode_model(data: bytes, template: Any, max_bytes: int | None = None
                 ) -> tuple[Any, int]:
    """``(params, round)`` from a ``GET /model`` body, validated against ``template``."""
    raw = _restore(data, "model", max_bytes)
    _check_keys(raw, ("round", "params"), "model")
    r = _int(raw, "round", "model")
    return decode_tree(raw["params"], template, "model params"), r


def decode_update(data: bytes, template: Any, max_bytes: int | None = None) -> Update:
    """An :class:`Update` from a ``POST /update`` body, validated against ``template``.

    Raises:
      WireError: too large (413), not a msgpack map of the update fields (400),
        or a delta that does not match ``template`` or holds NaN/Inf (422).
    """
    raw = _restore(data, "update", max_bytes)
    _check_keys(raw, UPDATE_FIELDS, "update")
    return Update(
        client_id=_int(raw, "client_id", "update"),
        round=_int(raw, "round", "update"),
        num_examples=_int(raw, "num_examples", "update"),
        loss=_float(raw, "loss", "update"),
        loss0=_float(raw, "loss0", "update"),
        steps=_int(raw, "steps", "update"),
        delta=decode_tree(raw["delta"], template, "update delta"))
