"""On Dask with a remote cache, the inputs the workers read from the remote's CAS never include a
file that may hold a secret: such an input travels inside the task, as without a remote."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import POSBUILD
from nginx_server import Nginx, nginx  # noqa: F401 - the fixture
from test_dask_executor import Cluster, cluster, workspace  # noqa: F401 - cluster: a fixture

KEY = {"POSBUILD_CACHE_KEY": "correct horse battery staple"}
TOKEN = "dask-Token-31337"

FILES = {
    "p/BUILD": """
        genrule(name = "token", srcs = [], outs = ["token.txt"], secrets = ["API_TOKEN"],
                allow_secret_in_output = True, cmd = "printf '%s' \\"$API_TOKEN\\" > $@")
        genrule(name = "derived", srcs = [":token"], outs = ["derived.txt"], cmd = "tr a-z A-Z < $< > $@")
        genrule(name = "public", srcs = [], outs = ["public.txt"], cmd = "echo public > $@")
        genrule(name = "uses", srcs = [":public"], outs = ["uses.txt"], cmd = "cat $< $< > $@")
    """,  # noqa: E501
}


def test_an_input_that_may_hold_a_secret_never_goes_to_the_remote(cluster: Cluster, tmp_path: Path,
                                                                     nginx: Nginx) -> None:  # noqa: F811
    ws = workspace(tmp_path, "ws",
                   {**FILES, "posbuild.toml": f'[cache]\nremote = "{nginx.url}"\ntimeout = 2\n'})
    proc = subprocess.run([*POSBUILD, "build", "--executor", cluster.url, "--remote-upload",
                           "//..."],
                          cwd=ws.root, env={**os.environ, **KEY, "API_TOKEN": TOKEN}, text=True,
                          capture_output=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert (ws.root / "posbuild-out/p/derived.txt").read_text() == TOKEN.upper()
    assert "read by Dask workers" in proc.stderr  # public.txt went through the remote
    for blob in nginx.files("cas"):
        data = blob.read_bytes()
        assert TOKEN.encode() not in data and TOKEN.upper().encode() not in data, blob
    assert len(nginx.files("ac")) == 2  # public and uses
