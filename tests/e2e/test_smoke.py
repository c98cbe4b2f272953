"""A first end-to-end check: a two-step pipeline builds, and a rebuild executes nothing."""

from conftest import counts


def test_pipeline_builds_and_rebuild_is_noop(ws):
    ws.write({
        "data/raw.txt": "b\na\n",
        "data/BUILD": """
            genrule(name = "sorted", srcs = ["raw.txt"], outs = ["sorted.txt"], cmd = "sort $< > $@")
            genrule(name = "count", srcs = [":sorted"], outs = ["count.txt"], cmd = "wc -l < $< > $@")
        """,  # noqa: E501
    })
    first = ws.ok("//...")
    assert counts(first) == {"executed": 2, "cached": 0, "failed": 0}
    assert ws.out("data/sorted.txt") == "a\nb\n"
    assert ws.out("data/count.txt").strip() == "2"
    second = ws.ok("//...")
    assert counts(second) == {"executed": 0, "cached": 2, "failed": 0}
