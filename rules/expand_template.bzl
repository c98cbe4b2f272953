# expand_template: fill in a template file by replacing placeholder strings.
#
#     load("@posbuild//rules:expand_template.bzl", "expand_template")
#
#     expand_template(
#         name = "settings",
#         template = "settings.py.in",          # a source file or a rule with one output
#         out = "settings.py",
#         substitutions = {
#             "{VERSION}": "1.4.2",
#             "{GREETING}": "it's \"$HOME\" \\ café",   # any characters, inserted exactly
#         },
#     )
#
# Arguments:
#     name           the target name
#     template       a label of the template file
#     out            the output file name, relative to the package
#     substitutions  a dict {placeholder: replacement} of strings; placeholders must be non-empty
#     is_executable  mark the output executable (mode 0755); default False
#     **kwargs       passed on to genrule
#
# Replacement is one left-to-right pass over the template: at each position the longest
# placeholder that matches is replaced (ties cannot happen, keys are distinct), and replaced text
# is never scanned again, so the result does not depend on the order of the dict and a
# replacement that contains another placeholder is inserted as is. Template bytes that are not
# valid UTF-8 are kept unchanged. Substitutions reach the command through `env` (see _text.bzl),
# so they are part of the action key and need no quoting. Runs `python3` from the action's PATH.

load("@posbuild//rules:_text.bzl", "PY_DECODE", "check_name", "text_env")

_SCRIPT = PY_DECODE + """
import re, sys
count = int(os.environ["POSBUILD_SUBSTITUTIONS"])
subs = {decode("POSBUILD_KEY_%d" % i): decode("POSBUILD_VALUE_%d" % i) for i in range(count)}
with open(sys.argv[1], "rb") as f:
    text = f.read().decode("utf-8", "surrogateescape")
if subs:
    keys = sorted(subs, key=lambda k: (-len(k), k))
    text = re.compile("|".join(map(re.escape, keys))).sub(lambda m: subs[m.group(0)], text)
with open(sys.argv[2], "wb") as f:
    f.write(text.encode("utf-8", "surrogateescape"))
"""

def expand_template(name, template, out, substitutions, is_executable = False, **kwargs):
    """A genrule that writes `template` to `out` with every placeholder of `substitutions` replaced."""
    check_name("expand_template", name)
    if type(template) != "string" or not template:
        fail("expand_template '%s': 'template' must be a label string" % name)
    if type(out) != "string" or not out:
        fail("expand_template '%s': 'out' must be a file name" % name)
    if type(substitutions) != "dict":
        fail("expand_template '%s': 'substitutions' must be a dict of strings" % name)
    env = dict(kwargs.pop("env", {}))
    keys = sorted(substitutions.keys())
    for index, key in enumerate(keys):
        value = substitutions[key]
        if type(key) != "string" or not key:
            fail("expand_template '%s': placeholders must be non-empty strings, got %r" % (name, key))
        if type(value) != "string":
            fail("expand_template '%s': the replacement of %r must be a string, got %s" % (name, key, type(value)))
        env.update(text_env("POSBUILD_KEY_%d" % index, key))
        env.update(text_env("POSBUILD_VALUE_%d" % index, value))
    env["POSBUILD_SUBSTITUTIONS"] = str(len(keys))
    env["POSBUILD_SCRIPT"] = _SCRIPT
    cmd = "python3 -I -S -c \"$$POSBUILD_SCRIPT\" $< $@"
    if is_executable:
        cmd += " && chmod 0755 $@"
    genrule(name = name, srcs = [template], outs = [out], cmd = cmd, env = env, **kwargs)
