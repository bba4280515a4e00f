import pytest

from fsjax import config


def test_yaml_and_overrides_apply_and_the_dump_loads_back(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rounds: 4\nselection:\n  name: fair_select\n  lam: 0.3\n"
                    "model:\n  name: mlp\n  hidden: [16]\n")
    cfg = config.load(path, overrides=("rounds=3", "engine.mode=loop", "selection.lam=0.7",
                                       "data.image_shape=[4, 4, 1]"))
    assert cfg.rounds == 3 and cfg.engine.mode == "loop"
    assert cfg.selection.params == {"lam": 0.7, "mu": 1.0, "coverage": True}  # + factory defaults
    assert cfg.data.image_shape == (4, 4, 1)
    assert cfg.model.params == {"hidden": [16]}
    flat = config.flatten(cfg)
    assert flat["selection.lam"] == 0.7 and flat["local.lr"] == 0.1
    # The dump loads back to an equal config.
    again = tmp_path / "again.yaml"
    again.write_text(config.dump(cfg))
    assert config.load(again) == cfg


@pytest.mark.parametrize("override, key", [
    ("roundz=3", "roundz"),
    ("local.lrr=0.1", "local.lrr"),
    ("rounds=three", "rounds"),
    ("rounds=0", "rounds"),
    ("local.lr=-1", "local.lr"),
    ("engine.mode=gpu", "engine.mode"),
    ("selection.name=best", "selection.name"),
    ("selection.lam=0.5", "selection.lam"),           # random() takes no lam
    ("selection.clients_per_round=500", "selection.clients_per_round"),
    ("availability.name=markov", None),               # valid
    ("availability.p_dropp=0.1", "availability.p_dropp"),
    ("model.name=cnn", None),
    ("model.widht=3", "model.widht"),
    ("model.hidden=512", "model.hidden"),         # the MLP's hidden is a list of widths
    ("aggregation.name=qffl", None),
    ("aggregation.qq=1", "aggregation.qq"),
    ("partition.alpha=0", "partition.alpha"),
    ("local.steps=true", "local.steps"),
    ("local.clip_norm=-1", "local.clip_norm"),
    ("partition.split_test=0", "partition.split_test"),   # held_out needs held-out rows
    ("eval.client_accuracy=per_client", "eval.client_accuracy"),
    ("utility.name=accuracy", "utility.name"),
    ("utility.kappa=-0.1", "utility.kappa"),
    ("aggregation.name=horvitz_thompson", "aggregation.name"),  # needs selection cup
    ("aggregation.num_clients=3", "aggregation.num_clients"),   # the simulation passes it
    ("failure.name=study", "failure.name"),                     # renamed latency_loss
])
def test_bad_keys_and_values_name_the_key(override, key):
    if key is None:
        config.load(None, overrides=(override,))
        return
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        config.load(None, overrides=(override,))


def test_a_cnn_with_the_mlps_hidden_list_names_model_hidden():
    with pytest.raises(ValueError, match=r"model\.hidden=\[256\] for model 'cnn'"):
        config.load(None, overrides=("model.name=cnn", "model.hidden=[256]"))


@pytest.mark.parametrize("bad", ["rounds", "=3", "a..b=1", "a b=1"])
def test_bad_override_syntax(bad):
    with pytest.raises(ValueError, match="override"):
        config.load(None, overrides=(bad,))


def test_missing_malformed_or_non_mapping_files_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        config.load(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("rounds: [1,\n")
    with pytest.raises(ValueError, match="YAML"):
        config.load(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        config.load(tmp_path / "list.yaml")
    (tmp_path / "sec.yaml").write_text("local: 3\n")
    with pytest.raises(ValueError, match="local"):
        config.load(tmp_path / "sec.yaml")


def test_cup_study_keys_load():
    cfg = config.load(None, overrides=(
        "selection.name=cup", "aggregation.name=horvitz_thompson", "aggregation.normalise=true",
        "eval.client_accuracy=label_set", "partition.split_test=0", "utility.surrogate=true",
        "utility.name=loss_reduction", "local.clip_norm=5", "failure.name=latency_loss"))
    assert cfg.aggregation.params == {"normalise": True, "clip": 100.0, "floor": 1e-12}
    assert cfg.selection.params["scheduler"] == "reactive" and cfg.utility.surrogate
    with pytest.raises(ValueError, match=r"eval\.clients"):
        config.load(None, overrides=("eval.client_accuracy=labels", "eval.clients=3"))
