"""A build trusts the outputs it recorded only against the store that holds their results.

The up-to-date state settles actions by `stat()` alone. When the workspace is pointed at another
store (`[cache] dir`), or its store was deleted, nothing of what the state recorded is in the
store any more: the build must execute (or restore) again, not call the actions cached, and
`posbuild fsck` must pass afterwards.
"""

from __future__ import annotations

import shutil

from conftest import counts

BUILD = {"p/BUILD": 'genrule(name = "a", outs = ["a.txt"], cmd = "echo hi > $@")\n'}


def test_a_build_against_another_store_does_not_call_its_actions_cached(ws, tmp_path):
    ws.write(BUILD)
    assert counts(ws.ok("//p:a"))["executed"] == 1
    ws.write({"posbuild.toml": f'[cache]\ndir = "{tmp_path / "other-store"}"\n'})
    assert counts(ws.ok("//p:a")) == {"executed": 1, "cached": 0, "failed": 0}
    assert counts(ws.ok("//p:a")) == {"executed": 0, "cached": 1, "failed": 0}
    assert ws.run("fsck").returncode == 0
    assert ws.out("p/a.txt") == "hi\n"


def test_a_build_after_its_store_was_deleted_does_not_call_its_actions_cached(ws):
    ws.write(BUILD)
    ws.ok("//p:a")
    shutil.rmtree(ws.root / ".posbuild" / "store")
    assert counts(ws.ok("//p:a")) == {"executed": 1, "cached": 0, "failed": 0}
    fsck = ws.run("fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_the_state_a_first_build_saves_names_the_epoch_of_the_store_it_created(ws):
    """A new store gets its epoch as it is opened; the state saved by the build that created it
    must name that epoch, or the next build would check every recorded result again (a cost, at
    10,000 actions ~0.2 s, paid by the no-op after every cold build)."""
    from posbuild.workspace.config import load_config
    from posbuild.store.epoch import read_epoch
    from posbuild.store.upstate import state_from_bytes

    ws.write(BUILD)
    ws.ok("//p:a")
    config = load_config(ws.root)
    [state_path] = (ws.root / ".posbuild" / "graphs").glob("*.state")
    saved = state_from_bytes(state_path.read_bytes())
    assert saved.epoch == read_epoch(config.store_dir) != b""
