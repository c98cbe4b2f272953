"""The host programs a command runs (core/commandwords.py): what an action's environment holds."""

from __future__ import annotations

import re

import pytest

from posbuild.core.commandwords import programs_of


@pytest.mark.parametrize("command, programs", [
    ("cat $< > $@", ("cat",)),
    ("bwa mem -t 2 ref.fa r.fq | samtools sort -o out.bam -", ("bwa", "samtools")),
    ("set -e; if grep -q x f; then python3 tools/a.py > out; fi  # bwa", ("grep", "python3")),
    ("for s in a b; do\n  echo $s >> $@\ndone\nLC_ALL=C sort -u x | xargs -n1 gzip",
     ("sort", "xargs", "gzip")),
    ("timeout 10 Rscript plot.R", ("timeout", "Rscript")),
    ("/usr/bin/env python3 x.py", ("/usr/bin/env", "python3")),
    ("samtools index $(ls *.bam)", ("samtools", "ls")),
    ("cat x >$@ 2>&1 && wc -l < x", ("cat", "wc")),
    ("awk '{print $1}' f | tr a b", ("awk", "tr")),
    ("exec bwa x; time -p sort y", ("bwa", "sort")),
    ("tools/run.sh a b; ./local c", ()),  # workspace files: inputs, not host programs
    ("$CC -c x.c", ()),  # known only when it runs: host_tools names it
    ("echo 'unbalanced", ()),
])
def test_command_words(command: str, programs: tuple[str, ...]) -> None:
    assert programs_of(command) == programs


@pytest.mark.parametrize("command", [
    "cat x >$@ 2>&1 && wc -l < x", "a|b||c&&d;e &f", "x=1 y=2 env -i z=3 nice -n 5 sort f >> o",
    "for s in a b; do gzip -c $s > $s.gz; done", "timeout 10 bwa mem r.fa q.fq &> log | tee o",
    "$(which samtools) view x | head -n 5", "cmd 2>&1 | tr a b >| out",
])
def test_the_quick_tokenizer_reads_what_shlex_reads(command: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A line without quotes takes a regular expression, not shlex: both find the same words."""
    from posbuild.core import commandwords

    quick = programs_of(command)
    monkeypatch.setattr(commandwords, "_NEEDS_SHLEX", re.compile("."))  # every line by shlex
    assert programs_of(command) == quick
