import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fsjax import models


def test_im2col_conv_equals_xla_conv():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 9, 7, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(5, 5, 3, 4)), jnp.float32)
    ref = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(models.im2col_conv(x, w), ref, rtol=1e-5, atol=1e-5)


def test_cnn_lowerings_share_params_and_agree():
    x = jnp.asarray(np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3)), jnp.uint8)
    a, b = models.build("cnn", 10, conv="im2col"), models.build("cnn", 10, conv="xla")
    params = models.init_params(a, jax.random.key(0), (32, 32, 3))
    n_params = sum(p.size for p in jax.tree.leaves(params))
    assert 1_000_000 < n_params < 2_500_000
    np.testing.assert_allclose(a.apply(params, x), b.apply(params, x), rtol=1e-4, atol=1e-4)
    assert models.resolve_conv("auto") == ("im2col" if jax.default_backend() == "cpu" else "xla")


def test_max_pool_equals_reduce_window():
    import flax.linen as nn
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 6, 3)), jnp.float32)
    np.testing.assert_array_equal(models.max_pool_2x2(x), nn.max_pool(x, (2, 2), (2, 2)))


def test_registry_and_bad_names():
    m = models.build("mlp", 4, hidden=(8, 8))
    out = m.apply(models.init_params(m, jax.random.key(0), (4, 4, 1)), jnp.zeros((5, 4, 4, 1)))
    assert out.shape == (5, 4)
    with pytest.raises(ValueError, match="model name"):
        models.build("resnet", 10)
    with pytest.raises(ValueError, match="hidden_units"):
        models.build("mlp", 10, hidden_units=3)
    with pytest.raises(ValueError, match="conv"):
        models.resolve_conv("fft")


@pytest.mark.parametrize("name, image_shape", [("cnn", (8, 8, 3)), ("mlp", (4, 4, 1))])
def test_param_shapes_match_init_params_without_computing_them(name, image_shape):
    model = models.build(name, 10)
    shapes = models.param_shapes(model, image_shape)
    params = models.init_params(model, jax.random.key(3), image_shape)
    assert jax.tree.structure(shapes) == jax.tree.structure(params)
    for s, p in zip(jax.tree.leaves(shapes), jax.tree.leaves(params)):
        assert isinstance(s, jax.ShapeDtypeStruct)
        assert (s.shape, s.dtype) == (p.shape, p.dtype)
