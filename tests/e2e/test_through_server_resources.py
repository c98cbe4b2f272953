"""test_resources.py again, every build through the workspace's build server (whose memory,
which holds the graph, is larger than a one-shot build's)."""

import pytest
from conftest import through_server

from test_resources import *  # noqa: F401,F403

ws = pytest.fixture(through_server)
