# checked_file: a source file pinned by its BLAKE3 digest.
#
#     load("@posbuild//rules:checked_file.bzl", "checked_file")
#
#     checked_file(
#         name = "raw",
#         src = "raw.csv",                       # a source file of this package, or "//pkg:file"
#         digest = "3b1f...e9",                   # 64 hex characters: `b3sum raw.csv`, or `posbuild lock`
#     )
#
#     genrule(name = "clean", srcs = [":raw"], outs = ["clean.csv"], cmd = "...")   # uses the checked copy
#
# Arguments:
#     name      the target name
#     src       a label of a source file (not a generated one)
#     digest    the BLAKE3 digest of the file's bytes, as 64 hex characters
#     out       the name of the checked copy, relative to the package; default "<name>/<file name of src>"
#     **kwargs  passed on to genrule
#
# Every build that needs this target checks the file before anything runs: if its bytes no longer
# hash to `digest`, the build stops with ORCH-03 (exit 13), naming the file, the pinned digest and
# the actual one, and runs no action at all. On a match, the target's output is a copy of the
# file, so dependents that use `:name` only ever see the pinned bytes.
#
# How: the macro tags the genrule with `pin:<workspace-relative path>=<digest>`; the engine checks
# such tags together with the pins of posbuild.lock. Any genrule may carry such a tag on one of its
# own source inputs.

load("@posbuild//rules:_text.bzl", "check_name")

_HEX = "0123456789abcdefABCDEF"

def _source_path(name, src):
    """The workspace-relative path of the source file `src` names."""
    if src.startswith("@"):
        fail("checked_file '%s': 'src' must be a file of this workspace, got '%s'" % (name, src))
    if src.startswith("//"):
        package, colon, file = src[2:].partition(":")
        if not colon or not file:
            fail("checked_file '%s': 'src' must name a file, as '//pkg:file', got '%s'" % (name, src))
    else:
        package, file = package_name(), src[1:] if src.startswith(":") else src
    if not file:
        fail("checked_file '%s': 'src' must name a file" % name)
    return package + "/" + file if package else file

def checked_file(name, src, digest, out = None, **kwargs):
    """A genrule copying `src` to `out`, whose build fails with ORCH-03 unless `src` hashes to `digest`."""
    check_name("checked_file", name)
    if type(src) != "string" or not src:
        fail("checked_file '%s': 'src' must be a label string" % name)
    if type(digest) != "string" or len(digest) != 64 or [c for c in digest.elems() if c not in _HEX]:
        fail("checked_file '%s': 'digest' must be a BLAKE3 digest of 64 hex characters, got %r" % (name, digest))
    if out == None:
        out = name + "/" + src.rpartition(":")[2].rpartition("/")[2]
    if type(out) != "string" or not out:
        fail("checked_file '%s': 'out' must be a file name" % name)
    tags = list(kwargs.pop("tags", []))
    tags.append("pin:%s=%s" % (_source_path(name, src), digest.lower()))
    genrule(name = name, srcs = [src], outs = [out], cmd = "cp $< $@", tags = tags, **kwargs)
