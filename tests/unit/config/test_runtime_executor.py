"""`runtime.executor`: one section per kind, the bare kind as shorthand, the old flat keys refused by name."""

from __future__ import annotations

import pytest

from foldstack.config import config_from_dict
from foldstack.errors import ConfigError

BASE = {"base_models": {"tfidf_lr": {"kind": "tfidf_lr"}}}


def _executor(executor):
    return config_from_dict({**BASE, "runtime": {"executor": executor}}).runtime.executor


def test_the_bare_kind_is_that_kind_at_its_defaults():
    assert _executor("local").kind == "local"
    pool = _executor("workpool")
    assert (pool.kind, pool.work_pool, pool.shared_storage) == ("workpool", "gpu", None)
    assert (_executor("ray").kind, _executor("ray").address) == ("ray", None)
    assert config_from_dict(BASE).runtime.executor.kind == "local"


def test_each_kind_takes_its_own_keys_and_round_trips():
    cfg = config_from_dict({**BASE, "runtime": {"executor": {"kind": "workpool", "work_pool": "big",
                                                             "shared_storage": "file:///mnt/shared"}}})
    assert cfg.runtime.executor.shared_storage == "file:///mnt/shared"
    again = config_from_dict(cfg.model_dump(mode="json"))
    assert again.runtime.executor == cfg.runtime.executor


@pytest.mark.parametrize(("executor", "message"), [
    ({"kind": "ray", "work_pool": "gpu"}, "runtime.executor.work_pool: unknown key"),
    ({"kind": "workpool", "work_pool": "no spaces"}, "runtime.executor.work_pool: String should match pattern"),
    ("spark", "runtime.executor.kind: must be one of 'local', 'workpool', 'ray'"),
    ({"address": "ray://head:10001"}, "runtime.executor: needs a kind, one of local, workpool, ray"),
])
def test_errors_name_the_key_inside_the_executor(executor, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        _executor(executor)


@pytest.mark.parametrize(("key", "new_key"), [("work_pool", "runtime.executor.work_pool"),
                                              ("shared_storage", "runtime.executor.shared_storage"),
                                              ("ray_address", "runtime.executor.address")])
def test_the_old_flat_keys_say_where_they_went(key, new_key):
    with pytest.raises(ConfigError, match=f"runtime: {key} moved to {new_key} "):
        config_from_dict({**BASE, "runtime": {"executor": "workpool", key: "x"}})
