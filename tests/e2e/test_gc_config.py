"""`[cache] max_size` in posbuild.toml is the default bound of `posbuild gc`."""

from posbuild.store.lmdbstore import Store

BUILD = {
    "pkg/BUILD": 'genrule(name = "v", srcs = ["in.txt"], outs = ["v.txt"], cmd = "cat $< $< > '
                 '$@")\n'}


def _results(root) -> int:
    store = Store(root / ".posbuild/store")
    try:
        return sum(1 for _ in store.iter_results())
    finally:
        store.close()


def test_configured_max_size_evicts_what_the_kept_generations_do_not_need(ws):
    ws.write({**BUILD, "posbuild.toml": '[cache]\nmax_size = "1"\n'})
    for version in range(3):
        ws.write({"pkg/in.txt": f"version {version}\n"})
        ws.ok("//...")
    assert _results(ws.root) == 3
    result = ws.run("gc", "--keep-generations", "1")
    assert result.returncode == 0, result.stderr
    assert _results(ws.root) == 1  # only the result the latest generation needs


def test_a_bad_configured_max_size_is_a_config_error(ws):
    ws.write({**BUILD, "pkg/in.txt": "x\n", "posbuild.toml": '[cache]\nmax_size = "lots"\n'})
    ws.ok("//...")
    result = ws.run("gc")
    assert result.returncode == 3
    assert result.stderr.startswith("posbuild: ")
    assert "posbuild.toml: [cache] max_size: 'lots' is not a size" in result.stderr
