import json

import numpy as np
import pytest

from powerattn import equal_budget
from powerattn.training import Stage, TrainConfig, load_config
from powerattn.training.data import batch_for_step, stage_at


def test_round_trip_yaml_and_json(tmp_path):
    cfg = TrainConfig(stages=[Stage(512, 3), Stage(1024, 2)], batch_size=4)
    cfg.model.layers = 3
    cfg.pattern.name = "stride_slash"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert load_config(tmp_path / "c.json") == cfg
    (tmp_path / "c.yaml").write_text(
        "batch_size: 4\nmodel: {layers: 3}\npattern: {name: stride_slash}\n"
        "stages: [{seq_len: 512, steps: 3}, {seq_len: 1024, steps: 2}]\n"
    )
    assert load_config(tmp_path / "c.yaml") == cfg


def test_pattern_is_the_equal_budget_one_at_the_final_length():
    cfg = TrainConfig(stages=[Stage(512, 1), Stage(4096, 1)])
    for name in ("power", "sliding_window", "stride_slash", "dilated", "longnet"):
        cfg.pattern.name = name
        assert cfg.build_pattern() == equal_budget(4096, 32)[name]
    cfg.pattern.name = "power"
    cfg.pattern.params = {"window": 3}
    assert cfg.build_pattern().window == 3


def test_curriculum_stages_and_seeded_batches():
    cfg = TrainConfig(stages=[Stage(512, 3), Stage(1024, 2)], batch_size=2)
    assert [stage_at(cfg.stages, s)[0] for s in range(5)] == [0, 0, 0, 1, 1]
    assert batch_for_step(cfg, 4).seq_len == 1024
    assert batch_for_step(cfg, 1).keys == batch_for_step(cfg, 1).keys
    assert batch_for_step(cfg, 1).keys != batch_for_step(cfg, 2).keys
    cfg.replay = 0.5
    cfg.stages = [Stage(512, 1), Stage(1024, 1), Stage(2048, 400)]
    lens = [batch_for_step(cfg, s).seq_len for s in range(2, 402)]
    assert set(lens) == {512, 1024, 2048} and 150 < lens.count(2048) < 250
    assert lens == [batch_for_step(cfg, s).seq_len for s in range(2, 402)]
    with pytest.raises(ValueError, match="past the last stage"):
        stage_at(cfg.stages, 402)
    with pytest.raises(ValueError, match="step"):
        stage_at(cfg.stages, -1)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"stages": []}, "stages"),
        ({"stages": [{"seq_len": 100, "steps": 1}]}, r"stages\[0\].seq_len"),
        ({"stages": [{"seq_len": 512, "steps": 0}]}, r"stages\[0\].steps"),
        ({"loss_on": "some"}, "loss_on"),
        ({"pattern": {"name": "nope"}}, "pattern.name"),
        ({"model": {"hidden": 100, "heads": 3}}, "model.hidden"),
        ({"model": {"heads": 0}}, "model.heads"),
        ({"model": {"kv_heads": 0}}, "model.kv_heads"),
        ({"model": {"layers": 0}}, "model.layers"),
        ({"task": {"digits": 0}}, "task.digits"),
        ({"pattern": {"full_layers": [9]}}, "full_layers"),
        ({"batch_size": 0}, "batch_size"),
        ({"replay": 1.0}, "replay"),
    ],
)
def test_validate_names_the_bad_field(change, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict(change).validate()


def test_unknown_keys_and_suffix(tmp_path):
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.from_dict({"modle": {}})
    with pytest.raises(ValueError, match=r"config.model has unknown keys"):
        TrainConfig.from_dict({"model": {"depth": 3}})
    with pytest.raises(ValueError, match=r"config.stages\[0\] is missing \['steps'\]"):
        TrainConfig.from_dict({"stages": [{"seq_len": 512}]})
    (tmp_path / "c.toml").write_text("")
    with pytest.raises(ValueError, match="config path"):
        load_config(tmp_path / "c.toml")
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_mixed_stage_draws_every_length_per_step_and_is_seeded():
    cfg = TrainConfig(stages=[Stage(320, 2), Stage(1024, 600, mix=[512, 1024])], batch_size=1)
    assert cfg.stages[1].lengths == [1024, 512, 1024]
    lens = [batch_for_step(cfg, s).seq_len for s in range(2, 602)]
    assert set(lens) == {512, 1024} and 150 < lens.count(512) < 250  # 1/3 of 600
    assert lens == [batch_for_step(cfg, s).seq_len for s in range(2, 602)]
    assert {batch_for_step(cfg, s).seq_len for s in range(2)} == {320}
    # With replay too: the earlier stage's length is drawn first, the mix otherwise.
    cfg.replay = 0.5
    lens = {batch_for_step(cfg, s).seq_len for s in range(2, 602)}
    assert lens == {320, 512, 1024}


def test_training_never_draws_a_heldout_key():
    from powerattn.tasks.passkey import is_heldout_key

    cfg = TrainConfig(stages=[Stage(320, 40)], batch_size=16)
    keys = np.array([int(k) for s in range(40) for k in batch_for_step(cfg, s).keys])
    assert is_heldout_key(keys).any()  # by default any key
    cfg.task.heldout_keys = True
    keys = np.array([int(k) for s in range(40) for k in batch_for_step(cfg, s).keys])
    assert not is_heldout_key(keys).any()


def test_recipe_fields_round_trip_and_are_validated(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "lm_weight: 0.5\ntask: {heldout_keys: true}\noptim: {schedule: constant}\n"
        "stages: [{seq_len: 512, steps: 3}, {seq_len: 1024, steps: 2, mix: [512]}]\n"
    )
    cfg = load_config(tmp_path / "c.yaml")
    cfg.validate()
    assert cfg.stages[1].mix == [512] and cfg.lm_weight == 0.5 and cfg.task.heldout_keys
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    for change, match in [
        ({"stages": [{"seq_len": 512, "steps": 1, "mix": [1024]}]}, r"stages\[0\].mix"),
        ({"stages": [{"seq_len": 512, "steps": 1, "mix": [100]}]}, r"stages\[0\].mix"),
        ({"lm_weight": -1.0}, "lm_weight"),
        ({"lm_weight": 1.0, "loss_on": "all"}, "lm_weight"),
        ({"optim": {"schedule": "linear"}}, r"optim.schedule must be one of .*'wsd'"),
        ({"optim": {"decay_frac": 0.0}}, "optim.decay_frac"),
        ({"optim": {"decay_frac": 1.5}}, "optim.decay_frac"),
        ({"optim": {"min_lr_ratio": -0.1}}, "optim.min_lr_ratio"),
        # 300 default steps, the last 60 decaying: a 250-step warm-up runs into them
        ({"optim": {"schedule": "wsd", "warmup_steps": 250}}, "optim.warmup_steps"),
    ]:
        with pytest.raises(ValueError, match=match):
            TrainConfig.from_dict(change).validate()
