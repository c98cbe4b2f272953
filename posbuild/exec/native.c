/*
 * posbuild's per-action file-system and process work, one call each (native.py).
 *
 * Staging a sandbox, removing it and starting its command are a few dozen system calls per
 * action. Made from Python, each is a call of the interpreter that lets go of its lock and takes
 * it back, and with two worker threads the lock changes hands at nearly every one of them. Here
 * each of the three is one call that lets go of the lock once. What they do is exactly what the
 * Python code beside them does (stage.py, sandbox.py); anything unusual (a folder input, a
 * sandbox the command changed, an error) is reported, not handled, and the Python code takes
 * over from a clean state.
 *
 * Paths come as one buffer of `count` NUL-terminated strings, workspace-relative, no "." or ".."
 * parts (analysis makes them so); argv and the environment likewise.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>
#include <linux/fs.h> /* FICLONE: share the source's blocks copy-on-write (btrfs, XFS ...) */

#if !defined(__GLIBC__) || !__GLIBC_PREREQ(2, 34)
#error "needs glibc 2.34 (posix_spawn_file_actions_addclosefrom_np)"
#endif

#define FOLDER_FLAGS (O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)

/* The strings of a buffer of `count` NUL-terminated ones, in a new array (free it). */
static const char **split(const char *blob, int count) {
    const char **out = malloc((size_t)(count > 0 ? count : 1) * sizeof *out);
    if (out == NULL) return NULL;
    for (int i = 0; i < count; i++) {
        out[i] = blob;
        blob += strlen(blob) + 1;
    }
    return out;
}

/* Length of the folder part of `path` ("a/b" of "a/b/c"; 0 for "c"). */
static size_t folder_length(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash == NULL ? 0 : (size_t)(slash - path);
}

/* Copy `source` (open) to a new file `target` with `mode`; a large one is cloned where the
 * file system can. 0, or -1 with errno (the target removed). */
static int copy_file(int source, const struct stat *info, const char *target, long long limit) {
    int out = open(target, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, info->st_mode & 0777);
    if (out < 0) return -1;
    if (info->st_size >= limit && ioctl(out, FICLONE, source) == 0) {
        close(out);
        return 0;
    }
    off_t offset = 0;
    while (offset < info->st_size) {
        ssize_t sent = sendfile(out, source, &offset, (size_t)(info->st_size - offset));
        if (sent < 0) {
            int saved = errno;
            close(out);
            unlink(target);
            errno = saved;
            return -1;
        }
        if (sent == 0) break; /* the file shrank meanwhile: what there was */
    }
    close(out);
    return 0;
}

/*
 * stage.stage: make `sandbox`, its tmp/ and exec/, the folders of the `count` paths (the
 * first `inputs` of them inputs, the rest outputs) in order of first appearance, then copy
 * each input from `root` (ending in "/") into exec/, keeping its mode bits; one of `limit`
 * bytes or more is cloned where the file system can, or with `link_large` made a symbolic
 * link to its source. Returns 0; 1 when it stopped with part of it made (an input is a folder,
 * which stage.py stages, or an error); 2 when it made nothing (the sandbox folder could not be
 * made). stage.py then removes what was made and stages the sandbox itself.
 */
int posbuild_stage(const char *root, const char *sandbox, const char *blob, int count,
                   int inputs, long long limit, int link_large) {
    char path[PATH_MAX], source[PATH_MAX];
    const char **paths = split(blob, count);
    if (paths == NULL) return 2;
    int result = 2;
    if (mkdir(sandbox, 0777) != 0) goto done;
    result = 1;
    if (snprintf(path, sizeof path, "%s/tmp", sandbox) >= (int)sizeof path) goto done;
    if (mkdir(path, 0777) != 0) goto done;
    int base = snprintf(path, sizeof path, "%s/exec/", sandbox);
    if (base >= (int)sizeof path) goto done;
    path[base - 1] = '\0';
    if (mkdir(path, 0777) != 0) goto done;
    path[base - 1] = '/';
    const char *previous = "";
    size_t previous_folder = 0;
    for (int i = 0; i < count; i++) { /* folders: those below what it shares with the last path */
        const char *name = paths[i];
        size_t folder = folder_length(name), same = 0;
        while (same < folder && same < previous_folder && name[same] == previous[same]) same++;
        if (!((same == folder || name[same] == '/')
              && (same == previous_folder || previous[same] == '/'))) {
            while (same > 0 && name[same - 1] != '/') same--; /* back to the last whole part */
            same = same > 0 ? same - 1 : 0;
        }
        for (size_t start = same == 0 ? 0 : same + 1; start < folder;) {
            size_t end = (size_t)(strchr(name + start, '/') - name);
            if (base + end >= sizeof path) goto done;
            memcpy(path + base, name, end);
            path[base + end] = '\0';
            if (mkdir(path, 0777) != 0 && errno != EEXIST) goto done; /* made for another path */
            start = end + 1;
        }
        previous = name;
        previous_folder = folder;
    }
    for (int i = 0; i < inputs; i++) {
        if (snprintf(source, sizeof source, "%s%s", root, paths[i]) >= (int)sizeof source
            || snprintf(path + base, sizeof path - base, "%s", paths[i])
               >= (int)(sizeof path - base)) goto done;
        int fd = open(source, O_RDONLY | O_CLOEXEC);
        if (fd < 0) goto done;
        struct stat info;
        int failed = fstat(fd, &info) != 0;
        if (!failed && S_ISDIR(info.st_mode)) {
            close(fd);
            goto done;
        }
        if (!failed && link_large && info.st_size >= limit) failed = symlink(source, path) != 0;
        else if (!failed) failed = copy_file(fd, &info, path, limit) != 0;
        int saved = errno;
        close(fd);
        errno = saved;
        if (failed) goto done;
    }
    result = 0;
done:
    free(paths);
    return result;
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/*
 * stage.remove_tree with what staging made: unlink the `count` paths under `sandbox`/exec/ (one
 * already gone is fine), remove their folders, then exec/, tmp/ and the sandbox. Folders are
 * opened one part at a time without following links (a command may leave one pointing
 * anywhere), each once: the paths are taken in sorted order, where those under one folder come
 * together. Returns 0, or -1 when something else is there or went wrong (the caller then lists
 * and removes what is left).
 */
int posbuild_remove(const char *sandbox, const char *blob, int count) {
    enum { DEPTH = 64 };
    char path[PATH_MAX], parts[DEPTH][NAME_MAX + 1];
    int fds[DEPTH];
    const char *names[DEPTH]; /* the folder at depth d is names[d][0, lengths[d]) */
    size_t lengths[DEPTH];
    const char **paths = split(blob, count);
    if (paths == NULL) return -1;
    qsort(paths, (size_t)count, sizeof *paths, by_name);
    int result = -1, depth = 0;
    if (snprintf(path, sizeof path, "%s/exec", sandbox) >= (int)sizeof path) goto done;
    if ((fds[0] = open(path, FOLDER_FLAGS)) < 0) goto done;
    depth = 1;
    for (int i = 0; i <= count; i++) {
        const char *name = i < count ? paths[i] : "";
        while (depth > 1) { /* leave the folders it is not under, removing them */
            size_t n = lengths[depth - 1];
            if (i < count && strncmp(name, names[depth - 1], n) == 0 && name[n] == '/') break;
            close(fds[--depth]);
            if (unlinkat(fds[depth - 1], parts[depth], AT_REMOVEDIR) != 0) goto done;
        }
        if (i == count) break;
        size_t start = depth > 1 ? lengths[depth - 1] + 1 : 0;
        for (const char *slash; (slash = strchr(name + start, '/')) != NULL;) { /* enter the rest */
            size_t n = (size_t)(slash - (name + start));
            if (depth == DEPTH || n > NAME_MAX) goto done;
            memcpy(parts[depth], name + start, n);
            parts[depth][n] = '\0';
            if ((fds[depth] = openat(fds[depth - 1], parts[depth], FOLDER_FLAGS)) < 0) goto done;
            names[depth] = name;
            lengths[depth] = (size_t)(slash - name);
            start = lengths[depth++] + 1;
        }
        if (unlinkat(fds[depth - 1], name + start, 0) != 0 && errno != ENOENT) goto done;
    }
    close(fds[0]);
    depth = 0;
    if (rmdir(path) != 0) goto done;
    snprintf(path, sizeof path, "%s/tmp", sandbox);
    if (rmdir(path) != 0) goto done;
    result = rmdir(sandbox);
done:
    while (depth > 0) close(fds[--depth]);
    free(paths);
    return result;
}

/*
 * What subprocess.Popen(argv, executable=program, cwd=cwd, env=env, stdin=in, stdout=out,
 * stderr=err, start_new_session=True) does, with posix_spawn: the command in a session of its
 * own, in `cwd`, with only descriptors 0-2, SIGPIPE and SIGXFSZ back to their defaults and no
 * signal blocked. Returns its pid, or -1 with errno (it could not be exec'd).
 */
int posbuild_spawn(const char *program, const char *argv_blob, int argc, const char *env_blob,
                   int envc, const char *cwd, int in, int out, int err) {
    char **argv = malloc((size_t)(argc + 1) * sizeof *argv);
    char **envp = malloc((size_t)(envc + 1) * sizeof *envp);
    int result = -1, code = ENOMEM;
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attributes;
    if (argv == NULL || envp == NULL) goto done;
    for (int i = 0; i < argc; i++, argv_blob += strlen(argv_blob) + 1) argv[i] = (char *)argv_blob;
    for (int i = 0; i < envc; i++, env_blob += strlen(env_blob) + 1) envp[i] = (char *)env_blob;
    argv[argc] = envp[envc] = NULL;
    if ((code = posix_spawn_file_actions_init(&actions)) != 0) goto done;
    if ((code = posix_spawnattr_init(&attributes)) != 0) {
        posix_spawn_file_actions_destroy(&actions);
        goto done;
    }
    sigset_t defaults, none;
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGPIPE);
    sigaddset(&defaults, SIGXFSZ);
    sigemptyset(&none);
    pid_t pid;
    if ((code = posix_spawn_file_actions_adddup2(&actions, in, 0)) == 0
        && (code = posix_spawn_file_actions_adddup2(&actions, out, 1)) == 0
        && (code = posix_spawn_file_actions_adddup2(&actions, err, 2)) == 0
        && (code = posix_spawn_file_actions_addclosefrom_np(&actions, 3)) == 0
        && (code = posix_spawn_file_actions_addchdir_np(&actions, cwd)) == 0
        && (code = posix_spawnattr_setsigdefault(&attributes, &defaults)) == 0
        && (code = posix_spawnattr_setsigmask(&attributes, &none)) == 0
        && (code = posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSID
                                            | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK)) == 0
        && (code = posix_spawn(&pid, program, &actions, &attributes, argv, envp)) == 0)
        result = pid;
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attributes);
done:
    free(argv);
    free(envp);
    if (result < 0) errno = code;
    return result;
}
