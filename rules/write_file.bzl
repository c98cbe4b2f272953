# write_file: write a file whose content is given in the BUILD file.
#
#     load("@posbuild//rules:write_file.bzl", "write_file")
#
#     write_file(
#         name = "greeting",
#         out = "hello.txt",
#         content = "Hello, $USER's \"world\"!\n",   # written exactly as given, no trailing newline added
#     )
#
#     write_file(
#         name = "script",
#         out = "run.sh",
#         content = ["#!/bin/sh", "echo 'ok'"],       # a list of lines: each line ends with "\n"
#         is_executable = True,
#     )
#
# Arguments:
#     name           the target name
#     out            the output file name, relative to the package
#     content        a string, written as is; or a list of strings, written one per line, each
#                    followed by a newline (an empty list gives an empty file)
#     is_executable  mark the file executable (mode 0755); default False
#     **kwargs       passed on to genrule (tags, version, ...)
#
# Any character is written exactly: the content reaches the command through `env` (see _text.bzl),
# never through shell quoting, and it is part of the action key. The file is UTF-8.

load("@posbuild//rules:_text.bzl", "check_name", "shell_printf", "text_env")

def write_file(name, out, content, is_executable = False, **kwargs):
    """A genrule that writes `content` to `out`."""
    check_name("write_file", name)
    if type(out) != "string" or not out:
        fail("write_file '%s': 'out' must be a file name" % name)
    if type(content) == "list":
        for line in content:
            if type(line) != "string":
                fail("write_file '%s': 'content' lines must be strings, got %s" % (name, type(line)))
        content = "".join([line + "\n" for line in content])
    elif type(content) != "string":
        fail("write_file '%s': 'content' must be a string or a list of strings, got %s" % (name, type(content)))
    env = dict(kwargs.pop("env", {}))
    env.update(text_env("POSBUILD_CONTENT", content))
    cmd = shell_printf("POSBUILD_CONTENT", content) + " > $@"
    if is_executable:
        cmd += " && chmod 0755 $@"
    genrule(name = name, outs = [out], cmd = cmd, env = env, **kwargs)
