"""Thread counts: the container's CPU quota, HTGRPO_THREADS, and tasks that share one machine."""

from __future__ import annotations

import pytest

from htgrpo.cpus import SHARED_ENV, THREADS_ENV, _cgroup_limit, available_cpus, thread_count
from htgrpo.errors import ConfigError


def test_cgroup_v2_quota_rounds_up(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert _cgroup_limit(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_limit(tmp_path) is None


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_limit(tmp_path) == 3
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cgroup_limit(tmp_path) is None


def test_available_cpus_is_capped_by_the_quota(tmp_path):
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert available_cpus(tmp_path) == 1
    assert available_cpus(tmp_path / "missing") >= 1


def test_threads_are_shared_only_on_a_shared_machine():
    assert thread_count(2, {THREADS_ENV: "4"}) == 4  # pods of their own: every thread
    assert thread_count(2, {THREADS_ENV: "4", SHARED_ENV: "1"}) == 2
    assert thread_count(3, {THREADS_ENV: "2", SHARED_ENV: "1"}) == 1  # never below one
    assert thread_count(1, {}) == available_cpus()


@pytest.mark.parametrize("bad", ["two", "0", "-1"])
def test_bad_thread_setting_names_the_variable(bad):
    with pytest.raises(ConfigError, match=THREADS_ENV):
        thread_count(1, {THREADS_ENV: bad})
