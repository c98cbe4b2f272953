# copy_file: copy one file (a source file or another rule's single output) to a new name.
#
#     load("@posbuild//rules:copy_file.bzl", "copy_file")
#
#     copy_file(
#         name = "config",
#         src = "config.default.json",     # or "//other:target" with exactly one output
#         out = "config.json",             # posbuild-out/<pkg>/config.json
#     )
#
#     copy_file(name = "run", src = "run.sh.in", out = "run.sh", is_executable = True)
#
# Arguments:
#     name           the target name
#     src            a label: a source file of the package, an exported file, or a rule with one output
#     out            the output file name, relative to the package
#     is_executable  mark the copy executable (mode 0755); default False (the mode of a plain copy)
#     **kwargs       passed on to genrule (tags, version, resources, ...)

load("@posbuild//rules:_text.bzl", "check_name")

def copy_file(name, src, out, is_executable = False, **kwargs):
    """A genrule that copies `src` to `out` byte for byte."""
    check_name("copy_file", name)
    if type(src) != "string" or not src:
        fail("copy_file '%s': 'src' must be a label string" % name)
    if type(out) != "string" or not out:
        fail("copy_file '%s': 'out' must be a file name" % name)
    cmd = "cp $< $@"
    if is_executable:
        cmd += " && chmod 0755 $@"
    genrule(name = name, srcs = [src], outs = [out], cmd = cmd, **kwargs)
