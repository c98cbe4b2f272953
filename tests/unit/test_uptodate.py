"""The saved up-to-date state: what it keeps, and when its signatures alone settle a whole
request."""

from __future__ import annotations

import os
from pathlib import Path

from posbuild.core.action import Action, facts_of
from posbuild.core.digest import hash_bytes
from posbuild.core.records import signature
from posbuild.store.upstate import (EMPTY, BuildState, load_state, read_state, save_state,
                                    state_from_bytes)
from posbuild.engine.uptodate import changed_files

GRAPH = b"\x01" * 32
ENV = b"\x02" * 32


def _files(root: Path) -> dict[str, tuple[int, int, int, int]]:
    (root / "src").mkdir(parents=True)
    (root / "src/a.txt").write_text("a\n")
    (root / "posbuild-out/src").mkdir(parents=True)
    (root / "posbuild-out/src/a.out").write_text("A\n")
    return {rel: signature(os.stat(root / rel)) for rel in ("src/a.txt", "posbuild-out/src/a.out")}


def _state(signatures: dict[str, tuple[int, int, int, int]], complete: bool = True) -> BuildState:
    digests = {path: bytes([i]) * 32 for i, path in enumerate(signatures)}
    return BuildState(ENV, {"//src:a": (b"\x03" * 32, b"\x04" * 32)}, signatures, digests,
                      graph=GRAPH, complete=complete)


def test_a_saved_state_reads_back_the_same(tmp_path: Path) -> None:
    signatures = _files(tmp_path)
    save_state(tmp_path / "s.state", _state(signatures))
    loaded = load_state(tmp_path / "s.state", ENV)
    assert loaded.signatures == signatures
    assert loaded.actions == {"//src:a": (b"\x03" * 32, b"\x04" * 32)}
    assert loaded.digests == {"src/a.txt": b"\x00" * 32, "posbuild-out/src/a.out": b"\x01" * 32}
    assert (loaded.graph, loaded.complete, loaded.env_key) == (GRAPH, True, ENV)
    assert load_state(tmp_path / "s.state", b"\x09" * 32) is EMPTY  # another environment
    (tmp_path / "bad.state").write_bytes(b"\x93\x01\x02")
    assert load_state(tmp_path / "bad.state", ENV) is EMPTY


def test_a_state_file_is_decoded_once_per_version_and_read_anew_once_replaced(
        tmp_path: Path) -> None:
    """A build server settles no-op after no-op from one state file: it is decoded once, and
    the file a later build saves (replaced whole, a new inode) is read anew."""
    signatures = _files(tmp_path)
    save_state(tmp_path / "s.state", _state(signatures))
    first = load_state(tmp_path / "s.state", ENV)
    assert load_state(tmp_path / "s.state", ENV) is first
    assert first.raw_digest == hash_bytes(first.raw)
    save_state(tmp_path / "s.state", _state(signatures, complete=False))
    again = load_state(tmp_path / "s.state", ENV)
    assert again is not first and again.complete is False and first.complete is True
    os.unlink(tmp_path / "s.state")
    assert load_state(tmp_path / "s.state", ENV) is EMPTY


def test_the_state_a_process_saved_reads_back_as_the_file_decodes(tmp_path: Path) -> None:
    """The state just saved is what this process reads back without decoding the file (the next
    build a server runs): it must be exactly what the file holds, the epoch written included."""
    signatures = _files(tmp_path)
    state = _state(signatures)
    raw = save_state(tmp_path / "s.state", state, b"epoch-3")
    read = read_state(tmp_path / "s.state")
    decoded = state_from_bytes((tmp_path / "s.state").read_bytes())
    assert read.raw == raw == decoded.raw
    assert read.raw_digest == decoded.raw_digest == hash_bytes(raw)
    for field in ("env_key", "graph", "complete", "epoch", "paths", "packed_signatures",
                  "signatures", "actions", "digests", "trees"):
        assert getattr(read, field) == getattr(decoded, field), field
    assert read.epoch == b"epoch-3" and state.epoch == b""  # the state given is left as it was
    # the same path written by another process: a new version, decoded from its bytes
    other = tmp_path / "other.state"
    other.write_bytes(state_from_bytes(raw).raw.replace(b"epoch-3", b"epoch-4"))
    os.replace(other, tmp_path / "s.state")
    assert read_state(tmp_path / "s.state").epoch == b"epoch-4"


def test_a_no_op_needs_every_signature_unchanged(tmp_path: Path) -> None:
    signatures = _files(tmp_path)
    state = _state(signatures)
    assert changed_files(state, GRAPH, tmp_path) == frozenset()
    assert changed_files(state, b"\x07" * 32, tmp_path) != frozenset()  # saved for another graph
    assert changed_files(_state(signatures, complete=False), GRAPH, tmp_path) != frozenset()

    out = tmp_path / "posbuild-out/src/a.out"
    st = os.stat(out)
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes
    assert changed_files(state, GRAPH, tmp_path) == {"posbuild-out/src/a.out"}
    (tmp_path / "src/a.txt").unlink()
    gone = _state({"src/a.txt": signatures["src/a.txt"]})
    assert changed_files(gone, GRAPH, tmp_path) == {"src/a.txt"}


def test_graph_facts_summarise_what_the_checks_before_a_build_need() -> None:
    def action(label: str, resources: tuple[int, int, int], tags: tuple[str, ...] = (),
               secrets: tuple[str, ...] = ()) -> Action:
        return Action(label, "genrule", "true", (), (), (), (), (), 0, tags, b"", (), (), resources,
                      secrets=secrets)

    plain = [action("//p:a", (1, 0, 0)), action("//p:b", (2, 512, 0)),
             action("//p:c", (1, 0, 0), ("manual",))]
    facts = facts_of(plain)
    assert facts.count == 3 and facts.resources == ((1, 0, 0), (2, 512, 0))
    assert not facts.pinned and not facts.secrets
    assert facts_of([*plain, action("//p:d", (1, 0, 0), ("pin:p/x=" + "0" * 64,))]).pinned
    assert facts_of([*plain, action("//p:e", (1, 0, 0), secrets=("TOKEN",))]).secrets


def test_a_state_names_the_store_epoch_and_states_saved_before_epochs_still_load(
    tmp_path: Path) -> None:
    import msgpack

    signatures = _files(tmp_path)
    save_state(tmp_path / "s.state", _state(signatures), b"epoch-7")
    assert load_state(tmp_path / "s.state", ENV).epoch == b"epoch-7"
    old = msgpack.unpackb((tmp_path / "s.state").read_bytes())
    (tmp_path / "old.state").write_bytes(msgpack.packb([3, *old[1:8]], use_bin_type=True))
    loaded = load_state(tmp_path / "old.state", ENV)
    assert (loaded.epoch, loaded.actions, loaded.signatures) == (b"", _state(signatures).actions,
                                                                 signatures)


def test_revalidate_forgets_exactly_the_actions_whose_result_or_blobs_are_gone(
    tmp_path: Path) -> None:
    from posbuild.core.digest import hash_bytes
    from posbuild.store.epoch import read_epoch
    from posbuild.core.records import ActionResult, OutputFile
    from posbuild.store.lmdbstore import Store
    from posbuild.store.upstate import revalidate

    store_dir = tmp_path / "store"
    store = Store(store_dir)
    rows = {}
    for name in ("kept", "evicted", "blobless"):
        data = name.encode()
        result = ActionResult((OutputFile(f"posbuild-out/{name}", hash_bytes(data), len(data),
                                          False),), 0,
                              hash_bytes(b""), hash_bytes(b""))
        key = hash_bytes(b"key " + data)
        store.commit((key, result), ((hash_bytes(data), data), (hash_bytes(b""), b"")))
        rows[f"//p:{name}"] = (b"\x03" * 32, key)
    created = read_epoch(store_dir)
    assert created  # a new store has an epoch of its own
    store.remove(results=[rows["//p:evicted"][1]])
    store.remove(blobs=[hash_bytes(b"blobless")])
    store.close()
    epoch = read_epoch(store_dir)
    assert epoch and epoch != created  # every removal gives the store a new epoch

    state = BuildState(ENV, rows, {}, {}, graph=GRAPH, complete=True)
    checked = revalidate(tmp_path / "s.state", state, store_dir, epoch)
    assert checked.actions == {"//p:kept": rows["//p:kept"]}
    assert (checked.epoch, checked.complete) == (epoch, False)
    # saved: the next build checks nothing
    assert load_state(tmp_path / "s.state", ENV).raw == checked.raw


def test_the_tree_marker_lists_withdrawn_outputs_only_while_dirty(tmp_path: Path) -> None:
    from posbuild.workspace.config import load_config
    from posbuild.store.upstate import mark_tree, tree_is_clean, withdrawn_outputs

    (tmp_path / "posbuild.toml").write_text("")
    config = load_config(tmp_path)
    assert withdrawn_outputs(config) == frozenset() and not tree_is_clean(config)
    mark_tree(config, clean=False, withdrawn=["posbuild-out/p/b", "posbuild-out/p/a"])
    assert withdrawn_outputs(config) == {"posbuild-out/p/a", "posbuild-out/p/b"} \
            and not tree_is_clean(config)
    mark_tree(config, clean=False)  # None keeps the list (fsck marks the tree dirty this way)
    assert withdrawn_outputs(config) == {"posbuild-out/p/a", "posbuild-out/p/b"}
    mark_tree(config, clean=True)
    assert tree_is_clean(config) and withdrawn_outputs(config) == frozenset()
    (config.state_dir / "tree").write_bytes(b"dirty\n\xc1garbage")
    assert withdrawn_outputs(config) == frozenset()  # unreadable: nothing kept, never a crash


def test_a_folder_output_is_clean_only_while_every_recorded_member_is(tmp_path: Path) -> None:
    from posbuild.engine.uptodate import clean_actions

    folder = tmp_path / "posbuild-out/p/d"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub/f").write_text("f")
    paths = ("posbuild-out/p/d", "posbuild-out/p/d/sub", "posbuild-out/p/d/sub/f")
    signatures = {p: signature(os.stat(tmp_path / p)) for p in paths}
    action = Action("//p:t", "genrule", "", (), (), ("posbuild-out/p/d",), (), (), 0, (),
                    b"\x03" * 32, (), (), out_dirs=("posbuild-out/p/d",))
    state = BuildState(ENV, {"//p:t": (b"\x03" * 32, b"\x04" * 32)}, signatures,
                       {p: b"" for p in paths}, graph=GRAPH, complete=True,
                       trees={"posbuild-out/p/d": paths[1:]})
    save_state(tmp_path / "s.state", state)
    loaded = load_state(tmp_path / "s.state", ENV)
    assert loaded.trees == {"posbuild-out/p/d": paths[1:]}
    assert clean_actions([action], loaded, tmp_path) == [True]
    (folder / "sub/g").write_text("added below the folder's own listing")
    assert clean_actions([action], loaded, tmp_path) == [False]
    assert changed_files(loaded, GRAPH, tmp_path) != frozenset()
    # a state saved before folders were recorded makes such an action not clean
    (folder / "sub/g").unlink()
    now = {p: signature(os.stat(tmp_path / p)) for p in paths}
    older = BuildState(ENV, state.actions, now, state.digests, graph=GRAPH)
    assert clean_actions([action], older, tmp_path) == [False]
    fresh = BuildState(ENV, state.actions, now, state.digests, graph=GRAPH,
                       trees={"posbuild-out/p/d": paths[1:]})
    assert clean_actions([action], fresh, tmp_path) == [True]


def test_only_the_touched_files_are_looked_at_when_the_watch_names_them(tmp_path: Path) -> None:
    """With the build server's list of changed files, a file it does not name is taken as
    recorded (no stat), and one it names is compared as always."""
    from posbuild.engine.uptodate import clean_actions

    signatures = _files(tmp_path)
    action = Action("//src:a", "genrule", "", ("src/a.txt",), (), ("posbuild-out/src/a.out",),
                    (), (), 0, (), b"\x03" * 32, (), ("src/a.txt",))
    state = _state(signatures)
    (tmp_path / "src/a.txt").write_text("edited\n")
    assert clean_actions([action], state, tmp_path) == [False]
    assert clean_actions([action], state, tmp_path, frozenset({"src/a.txt"})) == [False]
    assert clean_actions([action], state, tmp_path, frozenset({"elsewhere.txt"})) == [True]
    assert clean_actions([action], state, tmp_path, frozenset()) == [True]


def test_the_stat_pass_names_exactly_the_files_that_changed_or_went(tmp_path: Path) -> None:
    """An edit found by the one stat pass hands the per-action check only the changed files."""
    from posbuild.engine.uptodate import changed_files

    signatures = _files(tmp_path)
    state = _state(signatures)
    assert changed_files(state, GRAPH, tmp_path) == frozenset()
    assert changed_files(state, b"\x07" * 32, tmp_path) is None  # saved for another graph
    assert changed_files(_state(signatures, complete=False), GRAPH, tmp_path) is None
    (tmp_path / "src/a.txt").write_text("edited, one byte longer\n")
    assert changed_files(state, GRAPH, tmp_path) == {"src/a.txt"}
    (tmp_path / "posbuild-out/src/a.out").unlink()
    assert changed_files(state, GRAPH, tmp_path) == {"src/a.txt", "posbuild-out/src/a.out"}


class _Stable:
    """The build's file states as state_for asks them: each source as hashed (None: not looked
    at)."""

    def __init__(self, rows: dict[str, object]) -> None:
        self.rows = rows

    def recorded(self, path: str) -> object:
        return self.rows[path]


def test_a_state_revised_for_the_same_graph_equals_one_written_whole(tmp_path: Path) -> None:
    """Revising the last state (the rows of the actions looked at) saves what writing every
    action's rows would; a source not looked at and a folder's vanished member lose their rows,
    and a racy one is recorded to be looked at again."""
    from posbuild.core.records import FileState, OutputFile
    from posbuild.engine.products import BuildProducts

    def action(name: str, src: str, outs: tuple[str, ...], dirs: tuple[str, ...] = ()) -> Action:
        return Action(f"//p:{name}", "genrule", "", (src,), (), outs, (), (), 0, (),
                      name.encode() * 32, (), (src,), out_dirs=dirs)

    actions = [action("a", "p/a", ("o/a",)), action("b", "p/b", ("o/b",)),
               action("d", "p/a", ("o/d",), ("o/d",))]
    old = {p: (i, i, i, i) for i, p in enumerate(("p/a", "p/b", "o/a", "o/b", "o/d", "o/d/x",
                                                   "o/d/y"))}
    previous = BuildState(ENV, {a.label: (a.def_hash, b"k" * 32) for a in actions}, old,
                          {p: p.encode().ljust(32, b".") for p in old}, graph=GRAPH,
                          complete=True, trees={"o/d": ("o/d/x", "o/d/y")})

    def rerun(files: _Stable) -> tuple[BuildState, BuildState]:
        states = []
        for graph in (GRAPH, b"\x09" * 32):  # revised; written whole (another graph's state)
            products = BuildProducts(previous)
            for a in actions[1:]:
                out = FileState((7, 7, 7, 7), b"n" * 32)
                products.produced.update({path: out for path in a.outputs})
                products.settled(a, b"K" * 32, [OutputFile(a.outputs[0], out.digest, 7, False)])
            products.members["o/d"] = [("o/d/x", FileState((8, 8, 8, 8), b"x" * 32))]
            states.append(products.state_for(actions, [True, False, False], ENV, GRAPH, files))
        return states[0], states[1]

    fresh = FileState((9, 9, 9, 9), b"b" * 32)
    revised, whole = rerun(_Stable({"p/b": fresh, "p/a": FileState(old["p/a"], b"a" * 32)}))
    assert (revised.actions, revised.signatures, revised.digests, revised.trees,
            revised.complete) == (whole.actions, whole.signatures, whole.digests, whole.trees,
                                  whole.complete)
    assert revised.signatures["p/b"] == (9, 9, 9, 9) and "o/d/y" not in revised.signatures
    assert revised.complete

    revised, _ = rerun(_Stable({"p/b": None, "p/a": FileState(old["p/a"], b"a" * 32)}))
    assert "p/b" not in revised.signatures and not revised.complete
    from posbuild.core.records import UNSETTLED

    racy = FileState(UNSETTLED, b"b" * 32)
    revised, _ = rerun(_Stable({"p/b": racy, "p/a": FileState(old["p/a"], b"a" * 32)}))
    assert revised.signatures["p/b"] == UNSETTLED and revised.complete
