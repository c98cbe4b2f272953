"""Layer 0: the command of a test action — run the test, keep its log and its JUnit XML.

A test is an action like any other (same sandbox, same key), whose outputs are its log and its
result, `<name>.test.log` and `<name>.test.xml`. The command is a small Python program (RUNNER,
given to the interpreter with `-c`, since nothing of posbuild is inside the sandbox) that runs the
test under its timeout, writes both files and exits 0 whatever the test did: a failing test is a
result, not a broken build, so its log is kept like any output. Whether a cached result may stand
for a run is for `posbuild test` to say (it re-runs failures, as Bazel does).
"""

from __future__ import annotations

import json
import shlex

# The outcome is the XML's: no <failure>, PASSED; <failure type="FAILED"|"TIMEOUT">.
RUNNER = r'''
import json, os, re, signal, subprocess, sys, time
import xml.etree.ElementTree as ET
spec = json.loads(sys.argv[1])
argv = spec["argv"]
if spec["shell"] and not os.access(argv[0], os.X_OK):
    argv = ["sh", *argv]
env = {**os.environ, "TEST_TMPDIR": os.environ.get("TMPDIR", "/tmp")}
started = time.monotonic()
with open(spec["log"], "wb") as log:
    try:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, env=env,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as error:
        log.write(f"cannot run {argv[0]}: {error.strerror}\n".encode())
        code = 127
    else:
        try:
            code = child.wait(spec["timeout"])
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            code = None
elapsed = f"{time.monotonic() - started:.3f}"
with open(spec["log"], "rb") as log:
    text = log.read().decode("utf-8", "replace")
text = re.sub("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]", "?", text)
failed = "0" if code == 0 else "1"
suites = ET.Element("testsuites", tests="1", failures=failed, errors="0", time=elapsed)
suite = ET.SubElement(suites, "testsuite", name=spec["label"], tests="1", failures=failed,
                      errors="0", time=elapsed)
case = ET.SubElement(suite, "testcase", name=spec["label"], classname=spec["label"],
                     time=elapsed)
if code is None:
    ET.SubElement(case, "failure", type="TIMEOUT",
                  message=f"timed out after {spec['timeout']} s")
elif code != 0:
    ET.SubElement(case, "failure", type="FAILED", message=f"exit code {code}")
ET.SubElement(case, "system-out").text = text
ET.ElementTree(suites).write(spec["xml"], encoding="utf-8", xml_declaration=True)
'''.strip()

LOG_SUFFIX, XML_SUFFIX = ".test.log", ".test.xml"
# the test's own limit is the runner's; the action's, a little later, is for a runner that hangs
GRACE_SECONDS = 30


def test_command(interpreter: str, label: str, argv: list[str], log: str, xml: str,
                 timeout: int, shell: bool) -> str:
    """The action's command: RUNNER running `argv` (an sh_test's script run directly when it is
    executable, else by `sh`), with the log and XML at the given sandbox paths."""
    spec = {"label": label, "argv": argv, "log": log, "xml": xml, "timeout": timeout,
            "shell": shell}
    return shlex.join([interpreter, "-c", RUNNER, json.dumps(spec, sort_keys=True)])
