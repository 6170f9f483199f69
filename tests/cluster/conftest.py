"""The SLURM cluster the tests in this folder share: started once per session (about a second),
torn down at the end whatever happened; every test cancels its jobs when it ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.slurm import SlurmCluster, missing_reason

REASON = missing_reason()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip this folder's SLURM tests, with the reason, where the cluster cannot run."""
    if REASON is None:
        return
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.skip(reason=REASON))


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster.start(tmp_path_factory.mktemp("slurm"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def slurm(slurm_cluster: SlurmCluster) -> Iterator[SlurmCluster]:
    """The shared cluster, with no job left over from this test when it ends."""
    try:
        yield slurm_cluster
    finally:
        slurm_cluster.cancel_all()
