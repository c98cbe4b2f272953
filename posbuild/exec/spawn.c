/* posbuild's spawn: start one command as a child of the calling process, pinned to its
 * processors from its first instruction, without moving the calling thread.
 *
 * A forked child inherits its thread's CPU mask, so pinning a command through Python's
 * subprocess means confining the thread that starts it; that thread then shares the command's
 * processor with it (or migrates at every start), which costs a fifth of a cold build of cheap
 * actions. Here the child sets its own mask between vfork and exec, as subprocess sets its
 * session and descriptors. Loaded with ctypes (spawn.py), which lets go of the interpreter lock
 * for the call.
 *
 * The child is vfork'd, as Python's subprocess does: it shares the caller's memory and stack
 * until it execs, calls only system calls, never returns, and reports a failure through the
 * request it was given. Every signal is blocked around the vfork; the child resets
 * the handlers the caller installed (they must not run in it) and SIGPIPE and SIGXFSZ, which
 * Python ignores, before it restores the caller's mask.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

struct request {
    const char *file;
    char **argv, **envp;
    const char *cwd;
    int fds[3]; /* stdin, stdout, stderr */
    int umask;
    const int32_t *cpus;
    int ncpu;
    sigset_t mask; /* the caller's, for the command */
    volatile int error, step; /* what failed in the child: errno, and where (SPAWN_*) */
};

enum { SPAWN_SESSION = 1, SPAWN_PIN, SPAWN_FDS, SPAWN_CWD, SPAWN_EXEC };

static _Noreturn void fail(struct request *r, int step) {
    r->error = errno;
    r->step = step;
    _exit(127);
}

static void close_from(int lowest) {
    if (syscall(SYS_close_range, lowest, ~0U, 0) == 0) return;
    long most = sysconf(_SC_OPEN_MAX);
    if (most < 0 || most > 65536) most = 65536;
    for (int fd = lowest; fd < most; fd++) close(fd);
}

static _Noreturn void child(struct request *r) {
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction action;
        if (sig == SIGKILL || sig == SIGSTOP || sigaction(sig, NULL, &action)) continue;
        int ignored_by_python = sig == SIGPIPE || sig == SIGXFSZ;
        if (action.sa_handler == SIG_DFL || (action.sa_handler == SIG_IGN && !ignored_by_python))
            continue;
        memset(&action, 0, sizeof action);
        action.sa_handler = SIG_DFL;
        sigaction(sig, &action, NULL);
    }
    sigprocmask(SIG_SETMASK, &r->mask, NULL);
    if (setsid() < 0) fail(r, SPAWN_SESSION);
    if (r->ncpu > 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        for (int i = 0; i < r->ncpu; i++)
            if (r->cpus[i] >= 0 && r->cpus[i] < CPU_SETSIZE) CPU_SET(r->cpus[i], &set);
        if (sched_setaffinity(0, sizeof set, &set)) fail(r, SPAWN_PIN);
    }
    if (r->umask >= 0) umask((mode_t)r->umask);
    /* a descriptor below 3 could be overwritten by the dup2 before it: move each out of the way */
    int fds[3];
    for (int i = 0; i < 3; i++) {
        fds[i] = r->fds[i];
        if (fds[i] < 3 && fds[i] != i && (fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3)) < 0)
            fail(r, SPAWN_FDS);
    }
    for (int i = 0; i < 3; i++) {
        if (fds[i] == i) {
            if (fcntl(i, F_SETFD, 0)) fail(r, SPAWN_FDS);
        } else if (dup2(fds[i], i) < 0) {
            fail(r, SPAWN_FDS);
        }
    }
    if (chdir(r->cwd)) fail(r, SPAWN_CWD);
    close_from(3);
    execve(r->file, r->argv, r->envp);
    fail(r, SPAWN_EXEC);
}

/* Split `count` NUL-terminated strings laid end to end in `packed` into a NULL-ended array. */
static char **unpack(char *packed, int count) {
    char **list = malloc(sizeof(char *) * ((size_t)count + 1));
    if (!list) return NULL;
    for (int i = 0; i < count; i++) {
        list[i] = packed;
        packed += strlen(packed) + 1;
    }
    list[count] = NULL;
    return list;
}

/* Start `file` with the packed argv and environment in `cwd`, with fds 0-2 given, in a session
 * of its own, under `umask` (-1: the caller's) and on `cpus` (none: the caller's mask). Returns
 * its pid, or -errno with *step saying what failed (0: before the child ran). */
long posbuild_spawn(const char *file, char *argv, int argc, char *envp, int envc,
                    const char *cwd, int in, int out, int err, int mask,
                    const int32_t *cpus, int ncpu, int *step) {
    struct request r = {.file = file, .cwd = cwd, .fds = {in, out, err}, .umask = mask,
                        .cpus = cpus, .ncpu = ncpu};
    *step = 0;
    r.argv = unpack(argv, argc);
    r.envp = unpack(envp, envc);
    long result;
    if (!r.argv || !r.envp) {
        result = -ENOMEM;
    } else {
        sigset_t all;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &r.mask);
        pid_t pid = vfork();
        if (pid == 0) child(&r); /* never returns */
        int forked = errno;
        pthread_sigmask(SIG_SETMASK, &r.mask, NULL);
        if (pid < 0) {
            result = -forked;
        } else if (r.step) {
            while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
            *step = r.step;
            result = -r.error;
        } else {
            result = pid;
        }
    }
    free(r.argv);
    free(r.envp);
    return result;
}
