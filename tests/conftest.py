"""Shared fixtures: one Ray cluster for the session, and access to the real data beside the repo."""

import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster shared by all in-process `segdist prepare` calls (saves ~3 s each)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def prepare(ray_cluster):
    """Run `segdist prepare ...` in-process."""
    from helpers import run_cli

    return lambda *argv: run_cli("prepare", *argv)
