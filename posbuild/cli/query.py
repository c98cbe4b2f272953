"""`posbuild query EXPR`: evaluate a query on the target graph and print the result."""

from __future__ import annotations

import click

from posbuild.cli import define_option, fail, workspace_and_package
from posbuild.errors import PosbuildError

OUTPUTS = ("label", "json", "graph", "build")


@click.command()
@click.argument("expr")
@click.option("--output", "output", type=click.Choice(OUTPUTS), default="label", show_default=True,
              help="label: sorted labels, one per line; json: labels, kinds and edges; graph: "
              "Graphviz dot; build: the rules as BUILD text.")
@define_option
def query(expr: str, output: str, defines: tuple[str, ...]) -> None:
    """Print the targets selected by the query EXPR.

    \b
    Functions: deps(X [, depth]), rdeps(UNIVERSE, X [, depth]), allpaths(FROM, TO),
               somepath(FROM, TO), kind(REGEX, X), attr(NAME, REGEX, X),
               filter(REGEX, X), tests(X), buildfiles(X)
    Sets:      X + Y (union), X - Y (except), X ^ Y (intersect); equal precedence, left to right
    Patterns:  //pkg:name, :name, //pkg:all, //pkg/..., //...
    Nodes are rule targets, the source files they list and the modules a py_task imports;
    edges point to dependencies.

    \b
    Examples:
      posbuild query 'deps(//app:report)'
      posbuild query 'rdeps(//..., //data:raw.csv)'
      posbuild query 'allpaths(//app:report, //lib:schema)' --output graph | dot -Tsvg > g.svg
      posbuild query 'kind("genrule", deps(//app:report)) - //lib/...'
      posbuild query 'attr(tags, no-cache, //...)'
      posbuild query 'rdeps(//..., //ml:helper.py)'    what re-runs if helper.py changes
      posbuild query 'somepath(//app:report, //data:raw.csv)'
      posbuild query //app:report --output build

    Exit codes: 0 ok, 2 a syntax error in EXPR, 3 an unknown target, pattern or a bad BUILD file.
    """
    from posbuild.load.query import run_query
    from posbuild.workspace.config import load_config, with_defines

    try:
        root, package = workspace_and_package()
        result = run_query(root, expr, package, with_defines(load_config(root), defines))
        click.echo(result.render(output), nl=False)
    except PosbuildError as error:
        fail(error)
