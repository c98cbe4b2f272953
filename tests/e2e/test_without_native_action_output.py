"""test_action_output.py again, each sandbox staged, removed and started by Python code alone."""

import pytest
from conftest import without_native

from test_action_output import *  # noqa: F401,F403

ws = pytest.fixture(without_native)
