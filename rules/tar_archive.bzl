# tar_archive: a byte-reproducible tar archive of files.
#
#     load("@posbuild//rules:tar_archive.bzl", "tar_archive")
#
#     tar_archive(
#         name = "bundle",
#         srcs = ["README.md", ":model", "//data:clean"],   # files, or rules (all their outputs)
#         out = "bundle.tar",                              # or "bundle.tar.gz" / "bundle.tgz" (gzip)
#         strip_prefix = ".",                              # store names relative to this package
#     )
#
# Arguments:
#     name          the target name
#     srcs          labels of the files to archive
#     out           the archive file name, relative to the package; a name ending in .tar.gz or .tgz
#                   gives a gzip-compressed archive, any other name a plain tar
#     strip_prefix  "" (the default): members are named by their workspace-relative path, a
#                   generated file by the path of its package (`posbuild-out/pkg/f` is `pkg/f`);
#                   "." : names relative to this target's package; any other value: a folder
#                   (workspace-relative) removed from the front of every name. Every file must lie
#                   under the prefix, and no two files may end up with the same name.
#     mtime         the modification time of every member, in seconds since 1970; default 0
#     **kwargs      passed on to genrule
#
# The archive depends only on the names and bytes of the files and whether they are executable:
# members are sorted by name; every member has the given mtime, uid and gid 0, empty user and
# group names, mode 0755 if the file is executable and 0644 otherwise; the format is GNU tar
# (long names without pax headers, so no access or change times); only regular files are stored
# (folders are implied by the names). A gzip archive has the same mtime in its header and no
# file name. Runs `python3` from the action's PATH (the standard library's tarfile module).

load("@posbuild//rules:_text.bzl", "check_name", "text_env")

_SCRIPT = """
import gzip, io, os, sys, tarfile
out, files = sys.argv[1], sys.argv[2:]
strip = os.environ["POSBUILD_TAR_STRIP"]
mtime = int(os.environ["POSBUILD_TAR_MTIME"])
generated = "posbuild-out/"
members = {}
for path in files:
    name = path[len(generated):] if path.startswith(generated) else path
    if strip:
        if not name.startswith(strip + "/"):
            sys.exit("tar_archive: %s is not under strip_prefix %r" % (name, strip))
        name = name[len(strip) + 1:]
    if name in members:
        sys.exit("tar_archive: two files would be stored as %s: %s and %s" % (name, members[name], path))
    members[name] = path
buffer = io.BytesIO()
with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
    for name in sorted(members):
        path = members[name]
        with open(path, "rb") as f:
            data = f.read()
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = mtime
        info.mode = 0o755 if os.stat(path).st_mode & 0o111 else 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.type = tarfile.REGTYPE
        tar.addfile(info, io.BytesIO(data))
data = buffer.getvalue()
if out.endswith((".tar.gz", ".tgz")):
    packed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=mtime, compresslevel=9) as z:
        z.write(data)
    data = packed.getvalue()
with open(out, "wb") as f:
    f.write(data)
"""

def tar_archive(name, srcs, out, strip_prefix = "", mtime = 0, **kwargs):
    """A genrule that packs the files of `srcs` into the reproducible tar archive `out`."""
    check_name("tar_archive", name)
    if type(srcs) != "list":
        fail("tar_archive '%s': 'srcs' must be a list of labels" % name)
    if type(out) != "string" or not out:
        fail("tar_archive '%s': 'out' must be a file name" % name)
    if type(strip_prefix) != "string":
        fail("tar_archive '%s': 'strip_prefix' must be a string" % name)
    if type(mtime) != "int" or mtime < 0:
        fail("tar_archive '%s': 'mtime' must be a non-negative int" % name)
    strip = strip_prefix
    if strip == ".":
        strip = package_name()
    elif strip.startswith("./"):
        strip = (package_name() + "/" + strip[2:]) if package_name() else strip[2:]
    strip = strip.strip("/")
    env = dict(kwargs.pop("env", {}))
    env["POSBUILD_TAR_STRIP"] = strip
    env["POSBUILD_TAR_MTIME"] = str(mtime)
    env["POSBUILD_SCRIPT"] = _SCRIPT
    cmd = "python3 -I -S -c \"$$POSBUILD_SCRIPT\" $@ $(SRCS)"
    genrule(name = name, srcs = srcs, outs = [out], cmd = cmd, env = env, **kwargs)
