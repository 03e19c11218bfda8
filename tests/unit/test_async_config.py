"""Issue 23's settings: defaults, and bad values named (workers/config)."""

from __future__ import annotations

import pytest

from launch.config import load_config
from workers.config import ConfigError


def test_async_is_off_by_default_with_staleness_one_and_no_correction() -> None:
    cfg = load_config([])
    assert cfg.trainer.async_rollout is False and cfg.trainer.max_staleness == 1
    assert cfg.learner.off_policy_correction == "none" and cfg.learner.is_cap == 2.0


def test_async_settings_compose() -> None:
    cfg = load_config(["trainer.async_rollout=true", "trainer.max_staleness=2",
                       "learner.off_policy_correction=decoupled", "learner.is_cap=3"])
    assert cfg.trainer.async_rollout and cfg.trainer.max_staleness == 2
    assert cfg.learner.off_policy_correction == "decoupled" and cfg.learner.is_cap == 3.0


@pytest.mark.parametrize(("override", "field"), [
    (["trainer.max_staleness=0"], "trainer.max_staleness"),
    (["learner.off_policy_correction=ips"], "learner.off_policy_correction"),
    (["learner.is_cap=0.5"], "learner.is_cap"),
])
def test_bad_async_values_fail_fast_naming_the_field(override: list[str], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(override)
    assert info.value.field_name == field and str(info.value).startswith(field + ":")
