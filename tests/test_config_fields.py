"""--show_config: every field of every shipped config has a description, and no description is stale."""

import fnmatch
import importlib

import ml_collections
import pytest

from configs import glue, recipe
from ufbert_jax import config_fields

TRAIN_CONFIGS = [
    "tiny",
    "ultrafastbert_1x11",
    "crammedbert_3072",
    "h200_ultrafastbert_1x11",
    "h200_crammedbert_3072",
]


@pytest.mark.parametrize("name", [*TRAIN_CONFIGS, "glue", "glue_h200"])
def test_every_field_of_the_shipped_configs_is_described(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    fields = glue.FIELDS if name.startswith("glue") else recipe.FIELDS
    assert config_fields.undescribed(config, fields) == []


@pytest.mark.parametrize(
    "config, fields", [(recipe.base_config(), recipe.FIELDS), (glue.get_config(), glue.FIELDS)]
)
def test_every_description_names_a_field(config, fields):
    names = [name for name, _ in config_fields.leaves(config)]
    groups = {name.rsplit(".", 1)[0] for name in names if "." in name}
    for key in fields:
        assert key in names or key in groups or fnmatch.filter(names, key), f"stale description {key!r}"


def test_listing_one_line_per_field_in_the_descriptions_order():
    config = ml_collections.ConfigDict(
        dict(b=2, a=dict(x="s", y=(1, 2)), over=dict(t1=dict(p=None, q=None), t2=dict(p=3, q=None)))
    )
    fields = {"b": "bee", "a.x": "ex", "a.y": "why", "over.*": "per task"}
    assert config_fields.listing(config, fields).splitlines() == [
        "b = 2             # bee",
        "a.x = 's'         # ex",
        "a.y = (1, 2)      # why",
        "over.t1.* = None  # unset: per task",
        "over.t2.p = 3     # per task",
        "over.t2.* = None  # unset: per task",
    ]
    assert config_fields.undescribed(config, {"b": "bee"}) == ["a.x", "a.y", "over.t1.p", "over.t1.q",
                                                                "over.t2.p", "over.t2.q"]  # fmt: skip
