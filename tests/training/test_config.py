import json

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
