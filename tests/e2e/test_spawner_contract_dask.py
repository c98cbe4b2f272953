"""The Spawner contract (tests/spawner_contract.py) against DaskSpawner on a real cluster: a `dask
scheduler` and two `dask worker` processes on 127.0.0.1 (the cluster of test_dask_executor.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from posbuild.workspace.config import load_config
from spawner_contract import Rig, SpawnerContract, make_workspace
from test_dask_executor import Cluster, cluster, needs_distributed  # noqa: F401 - cluster: a fixture

# The workers run commands in the folder sandbox: a worker chooses its own isolation with no
# writable folder of the test's (the namespace sandbox is the local rigs' to check), so a command
# there could not leave the flag that says it has started.
CONFIG = '[build]\nsandbox_base = "../sandboxes"\n[sandbox]\nmode = "folder"\n'


@needs_distributed
class TestDaskSpawner(SpawnerContract):
    @pytest.fixture
    def rig(self, cluster: Cluster, tmp_path: Path) -> Iterator[Rig]:  # noqa: F811
        from posbuild.exec.dask_executor import DaskSpawner

        root = make_workspace(tmp_path / "ws")
        (root / "posbuild.toml").write_text(CONFIG)
        config = load_config(root)
        probe = tmp_path / "probe"
        probe.mkdir()
        spawner = DaskSpawner(cluster.address, config, (), check_env=True)
        yield Rig(spawner, root, probe, config.sandbox_dir)
        spawner.close()
