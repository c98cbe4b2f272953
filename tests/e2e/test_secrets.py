"""Secrets (§16) end to end: a value reaches its action's environment and nothing that is kept.

Each test greps everything posbuild keeps or prints (the whole `.posbuild/` folder including the
raw LMDB file, `posbuild-out/`, the build's output, `posbuild log --json`) for the secret's bytes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from conftest import counts

VALUE = "s3cr3t-Value-8f2c91"
VALUE_SHA256 = hashlib.sha256(VALUE.encode()).hexdigest()  # BUILD files may hold this, never VALUE


@pytest.fixture
def secret_env(tmp_path: Path) -> dict[str, str]:
    """An environment with the secret set, and a secrets file path that holds nothing."""
    return {"API_TOKEN": VALUE, "POSBUILD_SECRETS_FILE": str(tmp_path / "no-secrets-file")}


def kept_anywhere(root: Path, value: str, *texts: str) -> list[str]:
    """Every file under the workspace, and every given text, that contains `value`."""
    needle = value.encode()
    found = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
             and needle in p.read_bytes()]
    found += [f"text #{i}" for i, text in enumerate(texts) if value in text]
    return found


USES_SECRET = """
    genrule(
        name = "call", srcs = ["q.txt"], outs = ["answer.txt"], secrets = ["API_TOKEN"],
        cmd = "test $$(printf %s \\"$$API_TOKEN\\" | sha256sum | cut -c1-64) = """ + VALUE_SHA256 + """ && "
              + "echo token is $$API_TOKEN >&2 && cat $< > $@",
    )
"""  # noqa: E501


def test_secret_reaches_the_action_and_nothing_kept(ws, secret_env):
    ws.write({"p/q.txt": "question\n", "p/BUILD": USES_SECRET})
    result = ws.build("//p:call", env=secret_env)
    assert result.returncode == 0, result.stderr
    assert ws.out("p/answer.txt") == "question\n"
    log = ws.run("log", "--json", env=secret_env)
    assert log.returncode == 0, log.stderr
    assert kept_anywhere(ws.root, VALUE, result.stdout, result.stderr, log.stdout) == []


def test_secret_value_is_not_part_of_the_key(ws, secret_env):
    ws.write({"p/q.txt": "question\n", "p/BUILD": USES_SECRET})
    assert ws.build("//p:call", env=secret_env).returncode == 0
    ws.run("clean")
    rotated = ws.build("//p:call", env={**secret_env, "API_TOKEN": "another-value"})
    assert rotated.returncode == 0, rotated.stderr
    assert counts(rotated)["executed"] == 0


def test_cache_hit_needs_no_secret(ws, secret_env):
    ws.write({"p/q.txt": "question\n", "p/BUILD": USES_SECRET})
    assert ws.build("//p:call", env=secret_env).returncode == 0
    ws.run("clean")
    env = {k: v for k, v in os.environ.items() if k != "API_TOKEN"}
    env["POSBUILD_SECRETS_FILE"] = secret_env["POSBUILD_SECRETS_FILE"]
    result = ws.build("//p:call", env=env)
    assert result.returncode == 0, result.stderr
    assert ws.out("p/answer.txt") == "question\n"


def test_missing_secret_fails_the_action_with_its_name(ws, tmp_path):
    ws.write({"p/q.txt": "question\n", "p/BUILD": USES_SECRET})
    result = ws.build("//p:call", env={"POSBUILD_SECRETS_FILE": str(tmp_path / "none")})
    assert result.returncode == 1
    assert "secret 'API_TOKEN' is not in posbuild's environment" in result.stdout + result.stderr


def test_stderr_of_a_failing_action_is_redacted(ws, secret_env):
    ws.write({"p/BUILD": """
        genrule(name = "bad", outs = ["x"], secrets = ["API_TOKEN"],
                cmd = "echo the token is $$API_TOKEN >&2; echo out $$API_TOKEN; exit 3")
    """})
    result = ws.build("//p:bad", env=secret_env)
    assert result.returncode == 1
    assert "the token is ***" in result.stdout + result.stderr
    assert kept_anywhere(ws.root, VALUE, result.stdout, result.stderr) == []


def test_secret_in_output_fails_and_keeps_nothing(ws, secret_env):
    ws.write({"p/BUILD": """
        genrule(name = "leak", outs = ["leak.txt"], secrets = ["API_TOKEN"],
                cmd = "echo header > $@; echo $$API_TOKEN >> $@")
    """})
    result = ws.build("//p:leak", env=secret_env)
    assert result.returncode == 1
    assert "output 'posbuild-out/p/leak.txt' contains the value of secret 'API_TOKEN'" \
            in result.stdout + result.stderr
    assert not (ws.root / "posbuild-out/p/leak.txt").exists()
    assert kept_anywhere(ws.root, VALUE, result.stdout, result.stderr) == []


def test_secret_in_a_file_of_a_folder_output_fails_and_keeps_nothing(ws, secret_env):
    ws.write({"p/BUILD": """
        genrule(name = "leak", out_dirs = ["d"], secrets = ["API_TOKEN"],
                cmd = "mkdir -p $@/deep && echo header > $@/a && echo $$API_TOKEN >> $@/deep/b")
    """})
    result = ws.build("//p:leak", env=secret_env)
    assert result.returncode == 1
    assert "output 'posbuild-out/p/d' contains the value of secret 'API_TOKEN'" \
        in result.stdout + result.stderr
    assert not (ws.root / "posbuild-out/p/d").exists()
    assert kept_anywhere(ws.root, VALUE, result.stdout, result.stderr) == []


def test_allow_secret_in_output(ws, secret_env):
    ws.write({"p/BUILD": """
        genrule(name = "cfg", outs = ["cfg.ini"], secrets = ["API_TOKEN"], allow_secret_in_output = True,
                cmd = "echo token=$$API_TOKEN > $@")
    """})  # noqa: E501
    result = ws.build("//p:cfg", env=secret_env)
    assert result.returncode == 0, result.stderr
    assert ws.out("p/cfg.ini") == f"token={VALUE}\n"


def _secrets_file(folder: Path, mode: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "secrets"
    path.write_text(f"# deployment credentials\nAPI_TOKEN = {VALUE}\n\nOTHER=1\n")
    path.chmod(mode)
    return path


def test_value_from_a_0600_secrets_file(ws, tmp_path):
    path = _secrets_file(tmp_path / "home", 0o600)
    ws.write({"p/q.txt": "question\n", "p/BUILD": USES_SECRET})
    result = ws.build("//p:call", env={"POSBUILD_SECRETS_FILE": str(path)})
    assert result.returncode == 0, result.stderr
    assert kept_anywhere(ws.root, VALUE, result.stdout, result.stderr) == []


def test_secrets_file_from_config(ws, tmp_path):
    path = _secrets_file(tmp_path / "home", 0o600)
    ws.write({"posbuild.toml": f'[secrets]\nfile = "{path}"\n', "p/q.txt": "question\n",
              "p/BUILD": USES_SECRET})
    result = ws.build("//p:call", env={"POSBUILD_SECRETS_FILE": ""})
    assert result.returncode == 0, result.stderr


def test_secrets_file_readable_by_others_is_refused(ws, tmp_path):
    path = _secrets_file(tmp_path / "home", 0o644)
    ws.write({"p/q.txt": "question\n", "p/BUILD": USES_SECRET})
    result = ws.build("//p:call", env={"POSBUILD_SECRETS_FILE": str(path)})
    assert result.returncode == 1
    assert f"has mode 0644; it must be 0600 (chmod 600 {path})" in result.stdout + result.stderr


def test_secrets_file_inside_the_workspace_is_refused(ws):
    path = _secrets_file(ws.root / "conf", 0o600)
    ws.write({"p/q.txt": "question\n", "p/BUILD": USES_SECRET})
    result = ws.build("//p:call", env={"POSBUILD_SECRETS_FILE": str(path)})
    assert result.returncode == 1
    assert "is inside the workspace" in result.stdout + result.stderr


def test_secret_also_passed_through_env_is_refused(ws, secret_env):
    ws.write({"posbuild.toml": '[env]\npass = ["API_TOKEN"]\n', "p/q.txt": "question\n",
              "p/BUILD": USES_SECRET})
    ws.write(
        {"p/BUILD": USES_SECRET + '    genrule(name = "first", outs = ["f.txt"], cmd = "echo f > '
                                  '$@")\n'})
    result = ws.build("//p:all", env=secret_env)
    assert result.returncode == 2
    assert "//p:call: 'API_TOKEN' is both a secret and in [env] pass" in result.stderr
    assert not (ws.root / "posbuild-out").exists()  # refused before anything ran


@pytest.mark.parametrize("attrs, message", [
    ('secrets = ["NOT-A-NAME"]', "'NOT-A-NAME' is not an environment variable name"),
    ('secrets = ["A"], env = {"A": "1"}', "'A' is both in env and in secrets"),
    ('allow_secret_in_output = 1', "attribute 'allow_secret_in_output' must be True or False"),
    ('secrets = ["POSBUILD_CACHE_KEY"]',
     "POSBUILD_CACHE_KEY is posbuild's own secret and is never given to an action"),
])
def test_bad_secret_attributes(ws, attrs, message):
    ws.write({"p/BUILD": f'genrule(name = "t", outs = ["x"], cmd = "touch $@", {attrs})\n'})
    result = ws.build("//p:t")
    assert result.returncode == 3
    assert message in result.stderr


def test_py_task_gets_its_secret(ws, secret_env):
    ws.write({
        "p/BUILD": 'py_task(name = "t", script = "t.py", outs = ["o.txt"], args = ["$@"], secrets '
                   '= ["API_TOKEN"])\n',
        "p/t.py": "import os, sys\nopen(sys.argv[1], "
                  "'w').write(str(len(os.environ['API_TOKEN'])))\n",
    })
    result = ws.build("//p:t", env=secret_env)
    assert result.returncode == 0, result.stderr
    assert ws.out("p/o.txt") == str(len(VALUE))


def test_verify_runs_with_the_secret_and_quotes_no_value(ws, secret_env):
    ws.write({"p/q.txt": "question\n", "p/BUILD": USES_SECRET + """
    genrule(name = "flaky", outs = ["f.txt"], secrets = ["API_TOKEN"],
            cmd = "echo $$API_TOKEN >&2; date +%s%N > $@")
"""})
    assert ws.build("//p:call", env=secret_env).returncode == 0
    result = ws.run("verify", "//p:call", env=secret_env)
    assert result.returncode == 0, result.stdout + result.stderr
    missing = ws.run("verify", "//p:call", env={
        "API_TOKEN": "", "POSBUILD_SECRETS_FILE": secret_env["POSBUILD_SECRETS_FILE"]})
    assert missing.returncode != 0
    assert kept_anywhere(ws.root, VALUE, result.stdout, result.stderr) == []


def test_unreadable_secrets_file_fails_the_action_without_quoting_it(ws, tmp_path):
    path = tmp_path / "home" / "secrets"
    path.parent.mkdir()
    path.write_bytes(b"API_TOKEN=\xff\xfe" + VALUE.encode() + b"\n")
    path.chmod(0o600)
    ws.write({"p/q.txt": "question\n", "p/BUILD": USES_SECRET})
    result = ws.build("//p:call", env={"POSBUILD_SECRETS_FILE": str(path)})
    assert result.returncode == 1
    assert "is not UTF-8 text of NAME=value lines" in result.stderr
    assert "Traceback" not in result.stderr
    assert kept_anywhere(ws.root, VALUE, result.stdout, result.stderr) == []
