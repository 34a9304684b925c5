"""Typed configs: unknown keys fail with a suggestion; values are checked; YAML round-trips."""

from __future__ import annotations

import pytest

from cardiomegaly import ConfigError, DataConfig, PreprocessConfig, SplitConfig
from cardiomegaly.config import from_dict, load_yaml, save_yaml


def test_unknown_key_suggests_the_nearest_one():
    with pytest.raises(ConfigError, match="uncertian: unknown key; did you mean 'uncertain'"):
        from_dict(DataConfig, {"uncertian": "ones"})


def test_nested_unknown_key_names_its_path():
    with pytest.raises(ConfigError, match="columns.pateint: unknown key; did you mean 'patient'"):
        from_dict(DataConfig, {"columns": {"pateint": "id"}})


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"format": "nhi"}, "did you mean 'nih'"),
        ({"uncertain": "maybe"}, "uncertain: unknown value 'maybe'"),
        ({"views": ["LL"]}, "views"),
    ],
)
def test_bad_values_are_refused(data, match):
    with pytest.raises(ConfigError, match=match):
        from_dict(DataConfig, data)


def test_preprocess_refuses_images_smaller_than_inception_accepts():
    with pytest.raises(ConfigError, match="under 75"):
        PreprocessConfig(image_size=64)


def test_yaml_round_trip(tmp_path):
    config = from_dict(
        DataConfig, {"format": "csv", "views": "pa", "columns": {"box": ["a", "b", "c", "d"]}}
    )
    save_yaml(config, tmp_path / "c.yaml")
    assert from_dict(DataConfig, load_yaml(tmp_path / "c.yaml")) == config
    assert config.views == ["PA"]
    assert from_dict(SplitConfig, {"seed": 4}).seed == 4
