# concat: concatenate files, in the order given, into one file.
#
#     load("@posbuild//rules:concat.bzl", "concat")
#
#     concat(
#         name = "all_rows",
#         srcs = ["header.csv", ":part1", "//data:part2"],   # files, or rules (all their outputs, in order)
#         out = "all.csv",
#     )
#
# Arguments:
#     name      the target name
#     srcs      labels; their files are joined in the order listed (no separator is added)
#     out       the output file name, relative to the package
#     **kwargs  passed on to genrule
#
# An empty `srcs` gives an empty file.

load("@posbuild//rules:_text.bzl", "check_name")

def concat(name, srcs, out, **kwargs):
    """A genrule that writes the bytes of every file of `srcs`, in order, to `out`."""
    check_name("concat", name)
    if type(srcs) != "list":
        fail("concat '%s': 'srcs' must be a list of labels" % name)
    if type(out) != "string" or not out:
        fail("concat '%s': 'out' must be a file name" % name)
    cmd = "cat $(SRCS) > $@" if srcs else ": > $@"
    genrule(name = name, srcs = srcs, outs = [out], cmd = cmd, **kwargs)
