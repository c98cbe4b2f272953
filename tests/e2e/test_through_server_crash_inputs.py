"""test_crash_inputs.py again, every build through the workspace's build server."""

import pytest
from conftest import through_server

from test_crash_inputs import *  # noqa: F401,F403

ws = pytest.fixture(through_server)
