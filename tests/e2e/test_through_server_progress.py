"""test_progress.py again, every build through the workspace's build server."""

import pytest
from conftest import through_server

from test_progress import *  # noqa: F401,F403

ws = pytest.fixture(through_server)
