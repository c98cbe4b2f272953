"""The rebuilder's decision on its own: a real LMDB store in a temporary folder, no command run.

Hit, miss, trace reuse, early cutoff, `--verify`, no-cache, the remote-cache hint, and a missing
source, each decided by `Rebuilder.check` exactly as a build's scheduler would call it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine_rig import ENV, ENVIRONMENT, A, B, make_action, root, store  # noqa: F401 (fixtures)

from posbuild.core.action import Action
from posbuild.core.digest import hash_bytes
from posbuild.core.layout import NO_CACHE_TAG, STATE_DIR, TMP
from posbuild.core.records import ActionResult, FileState, Outcome, OutputFile
from posbuild.engine import keys
from posbuild.engine.filestate import FileStates
from posbuild.engine.outcome import ActionOutcome
from posbuild.engine.products import BuildProducts
from posbuild.engine.rebuilder import Miss, Rebuilder
from posbuild.engine.sources import LocalResults
from posbuild.core.records import Commit
from posbuild.store.lmdbstore import Store
from posbuild.store.materialize import Materializer
from posbuild.store.upstate import BuildState


class Decide:
    """One build's decision: the collaborators `check` needs, over `store`."""

    def __init__(self, root: Path, store: Store, previous: BuildState | None = None,
                 **flags: Any) -> None:
        self.products = BuildProducts(previous)
        self.files = FileStates(root, store)
        local = LocalResults(store, Materializer(root, store, root / STATE_DIR / TMP),
                             self.products)
        self.rebuilder = Rebuilder(self.files, self.products, local, ENVIRONMENT, **flags)

    def check(self, action: Action) -> ActionOutcome | Miss:
        return self.rebuilder.check(action)


def _keep(store: Store, action: Action, key: bytes, data: bytes) -> ActionResult:
    """Put a result for `key` into the store, as a commit of `action` would."""
    digest = hash_bytes(data)
    result = ActionResult((OutputFile(action.outputs[0], digest, len(data), False),), 0,
                          hash_bytes(b""), hash_bytes(b""))
    store.log([Commit((key, result), ((digest, data), (hash_bytes(b""), b"")))])
    return result


def test_an_empty_store_is_a_miss_keyed_on_the_input_contents(root: Path, store: Store) -> None:
    decided = Decide(root, store).check(A)
    assert isinstance(decided, Miss)
    assert decided.key == keys.action_key(A, [hash_bytes(b"source\n")], ENV, ())
    assert decided.inputs == (("pkg/src.txt", hash_bytes(b"source\n")),)
    assert [path for path, _ in decided.sources] == ["pkg/src.txt"]
    assert not decided.ask_remote and decided.cached is None


def test_a_result_in_the_store_is_a_hit_that_restores_the_output(root: Path,
                                                                  store: Store) -> None:
    miss = Decide(root, store).check(A)
    assert isinstance(miss, Miss)
    _keep(store, A, miss.key, b"made from source\n")
    decide = Decide(root, store)
    hit = decide.check(A)
    assert hit == ActionOutcome(Outcome.CACHED, miss.key)
    assert (root / "posbuild-out/pkg/a.txt").read_bytes() == b"made from source\n"
    assert decide.products.output_digest("posbuild-out/pkg/a.txt") \
        == hash_bytes(b"made from source\n")
    assert decide.products.used == [miss.key]


def test_a_changed_source_is_a_miss_with_another_key(root: Path, store: Store) -> None:
    first = Decide(root, store).check(A)
    assert isinstance(first, Miss)
    _keep(store, A, first.key, b"old\n")
    (root / "pkg/src.txt").write_text("edited\n")
    second = Decide(root, store).check(A)
    assert isinstance(second, Miss) and second.key != first.key


def test_early_cutoff_identical_upstream_bytes_keep_the_dependent_a_hit(root: Path,
                                                                         store: Store) -> None:
    """B's key depends on the bytes of A's output, not on A's key: A re-run with identical
    output leaves B a hit."""
    decide = Decide(root, store)
    decide.products.produced["posbuild-out/pkg/a.txt"] = FileState((1, 1, 1, 1),
                                                                   hash_bytes(b"same\n"))
    miss = decide.check(B)
    assert isinstance(miss, Miss)
    _keep(store, B, miss.key, b"b\n")
    (root / "pkg/src.txt").write_text("edited, but A's output comes out the same\n")
    again = Decide(root, store)
    again.products.produced["posbuild-out/pkg/a.txt"] = FileState((2, 2, 2, 2),
                                                                  hash_bytes(b"same\n"))
    assert again.check(B) == ActionOutcome(Outcome.CACHED, miss.key)


def test_a_recorded_trace_settles_without_computing_a_key(root: Path, store: Store,
                                                          monkeypatch) -> None:
    miss = Decide(root, store).check(A)
    assert isinstance(miss, Miss)
    out = root / "posbuild-out/pkg/a.txt"
    out.parent.mkdir(parents=True)
    out.write_text("a\n")
    files = FileStates(root, store)
    source, output = files.state("pkg/src.txt"), files.state("posbuild-out/pkg/a.txt")
    previous = BuildState(ENV, {A.label: (A.def_hash, miss.key)},
                          {"pkg/src.txt": source.signature, out.relative_to(root).as_posix():
                           output.signature},
                          {"pkg/src.txt": source.digest, "posbuild-out/pkg/a.txt": output.digest})

    def no_key(*args: object) -> bytes:
        raise AssertionError("the trace should have settled it")

    monkeypatch.setattr("posbuild.engine.rebuilder.action_key", no_key)
    decide = Decide(root, store, previous)
    assert decide.check(A) == ActionOutcome(Outcome.CACHED, miss.key)
    assert decide.products.traces[A.label].key == miss.key


def test_verify_runs_a_hit_again_and_carries_the_result_to_reproduce(root: Path,
                                                                      store: Store) -> None:
    miss = Decide(root, store).check(A)
    assert isinstance(miss, Miss)
    kept = _keep(store, A, miss.key, b"a\n")
    verifying = Decide(root, store, verify=True, asks_remote=lambda action: True).check(A)
    assert isinstance(verifying, Miss)
    assert verifying.cached == kept and not verifying.ask_remote


def test_no_cache_actions_never_hit(root: Path, store: Store) -> None:
    uncached = make_action("//pkg:n", ("pkg/src.txt",), "posbuild-out/pkg/n.txt", (NO_CACHE_TAG,))
    miss = Decide(root, store).check(uncached)
    assert isinstance(miss, Miss)
    _keep(store, uncached, miss.key, b"n\n")
    again = Decide(root, store, asks_remote=lambda action: True).check(uncached)
    assert isinstance(again, Miss) and not again.ask_remote


def test_a_local_miss_asks_the_remote_only_where_it_may(root: Path, store: Store) -> None:
    asked = Decide(root, store, asks_remote=lambda action: True).check(A)
    assert isinstance(asked, Miss) and asked.ask_remote
    secret = Decide(root, store, asks_remote=lambda action: action.label != A.label).check(A)
    assert isinstance(secret, Miss) and not secret.ask_remote


def test_a_missing_source_fails_themake_action(root: Path, store: Store) -> None:
    (root / "pkg/src.txt").unlink()
    decided = Decide(root, store).check(A)
    assert isinstance(decided, ActionOutcome) and decided.status is Outcome.FAILED
    assert "source file 'pkg/src.txt' is missing" in decided.error


def test_a_result_naming_other_paths_is_a_miss(root: Path, store: Store) -> None:
    """A forged or foreign result must never write outside the action's declared outputs."""
    miss = Decide(root, store).check(A)
    assert isinstance(miss, Miss)
    forged = make_action("//pkg:a", ("pkg/src.txt",), "posbuild-out/elsewhere.txt")
    _keep(store, forged, miss.key, b"x\n")
    assert isinstance(Decide(root, store).check(A), Miss)
    assert not (root / "posbuild-out/elsewhere.txt").exists()
