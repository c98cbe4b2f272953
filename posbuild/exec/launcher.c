/* posbuild's sandbox launcher: run one action's command under Landlock, in namespaces made
 * once per build. Compiled on first use by posbuild/exec/landlock.py, which documents why.
 *
 *   launcher hold
 *       Make a user, PID, network, IPC, UTS and mount namespace (the network one with only a
 *       loopback, up; the mount one the host's, with a /proc of the PID namespace), fork their
 *       PID 1, print its pid and exit. The PID 1 reads its stdin, a pipe from
 *       posbuild, and exits when posbuild closes it, however posbuild ends: the kernel then
 *       kills every process in those namespaces and in the namespaces nested in them.
 *
 *   launcher [-N PID] [-t] [-c TEXT] [-L PRELOAD] [-r PATH...] [-w PATH...] -- FILE ARGV...
 *       -N  the PID 1 of `hold`: join its user, mount, IPC, UTS and PID namespaces, and its network
 *           namespace unless -t; the command then runs in a child, which this process waits for
 *       -t  TCP allowed and the host's network kept (an action tagged `network`)
 *       -c  the script bash runs when FILE cannot be exec'd as it is (a script without `#!`)
 *       -L  LD_PRELOAD for the command only (libfaketime)
 *       -r  paths the command may read and run; -w paths it may also write
 *       FILE ARGV...  what to exec, and its argv (argv[0] as the shell would give it)
 *   In the command's process: every capability dropped (and root's exec gives none back),
 *   no_new_privs, then the Landlock ruleset: -r/-w as said and nothing else of the file system,
 *   TCP bind and connect denied unless -t, no signal to or abstract Unix socket of a process
 *   outside it. The status is passed on: an exit code as it is, a signal as the same signal.
 *
 *   launcher serve [-N PID]
 *       The fork server (forkserver.py): one process per build that starts every command, so
 *       that posbuild forks no interpreter and execs no launcher per action. With -N it joins
 *       the namespaces of `hold` once (all but the network one, which each command joins
 *       unless it may use TCP). It reads requests from fd 0, a SOCK_SEQPACKET socket: a header
 *       of int32 (umask or -1, flags: 1 Landlock, 2 TCP allowed; processor count, argv, env,
 *       read-rule and write-rule counts), the processors as int32, then NUL-ended strings
 *       (file, the fallback script or "", the working folder, argv, env, read rules, write
 *       rules, the last of them the action's own sandbox); with three descriptors: the
 *       command's stdout and stderr, and the write end of a pipe on which it writes the
 *       command's pid (int32; -errno when it could not be made) and closes. A request larger
 *       than a message may be comes in a file, a fourth descriptor (the message is one byte). The command is
 *       made posbuild's child (CLONE_PARENT), which waits for it as for one it forked itself;
 *       it runs in its own session, on the processors given, with the umask given, stdin from
 *       /dev/null, the signal mask and dispositions posbuild had (SIGPIPE its default). The
 *       server exits when fd 0 reaches its end. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/capability.h>

#define FAIL 126
#define LL_CREATE 444
#define LL_ADD_RULE 445
#define LL_RESTRICT 446
#define FS_ALL ((1ULL << 16) - 1)  /* every file-system right of ABI 5 */
#define FS_READ (1ULL | 4 | 8)     /* EXECUTE, READ_FILE, READ_DIR */
#define FS_FILE (1ULL | 2 | 4 | (1 << 14) | (1 << 15))  /* the rights a rule on a file may hold */
#define NET_TCP 3ULL               /* BIND_TCP, CONNECT_TCP */
#define SCOPES 3ULL                /* ABSTRACT_UNIX_SOCKET, SIGNAL (ABI 6) */

struct ruleset_attr { uint64_t fs, net, scoped; };
struct path_beneath { uint64_t allowed; int32_t fd; } __attribute__((packed));

static void die(const char *what) {
    fprintf(stderr, "posbuild sandbox: %s: %s\n", what, strerror(errno));
    _exit(FAIL);
}

static void write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, text, strlen(text)) < 0) die(path);
    close(fd);
}

static int hold(void) {
    char map[64];
    uid_t uid = geteuid();
    gid_t gid = getegid();
    if (unshare(CLONE_NEWUSER)) die("unshare user namespace");
    write_file("/proc/self/setgroups", "deny");
    snprintf(map, sizeof map, "%u %u 1", uid, uid);
    write_file("/proc/self/uid_map", map);
    snprintf(map, sizeof map, "%u %u 1", gid, gid);
    write_file("/proc/self/gid_map", map);
    if (unshare(CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNS))
        die("unshare");
    /* host mounts still reach it; its own /proc does not reach the host */
    if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL)) die("mount namespace");
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq loopback = {0};
    strcpy(loopback.ifr_name, "lo");
    if (sock < 0 || ioctl(sock, SIOCGIFFLAGS, &loopback)) die("loopback");
    loopback.ifr_flags |= IFF_UP;
    if (ioctl(sock, SIOCSIFFLAGS, &loopback)) die("loopback up");
    close(sock);
    int ready[2];
    if (pipe2(ready, O_CLOEXEC)) die("pipe");
    pid_t init = fork();
    if (init < 0) die("fork");
    if (init == 0) {  /* PID 1 of the build's namespaces */
        char buffer[64];
        /* a /proc of this PID namespace: $$ and /proc/<pid> agree, other processes are gone */
        char done = mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) ? 0 : 1;
        if (!done) perror("posbuild sandbox: mount /proc");
        if (write(ready[1], &done, 1) != 1 || !done) _exit(FAIL);
        int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
        signal(SIGCHLD, SIG_IGN);  /* reaps whatever is left to it */
        dup2(null, 1);  /* posbuild reads the outputs of `hold` to their end */
        dup2(null, 2);
        for (;;) {
            ssize_t n = read(0, buffer, sizeof buffer);
            if (n == 0 || (n < 0 && errno != EINTR)) _exit(0);
        }
    }
    char done = 0;
    close(ready[1]);
    if (read(ready[0], &done, 1) != 1 || !done) { errno = EPERM; die("mount /proc"); }
    printf("%d\n", (int)init);
    return fflush(stdout) ? FAIL : 0;
}

/* Join the namespaces `holder` holds: all opened first, as the mount namespace brings its own
 * /proc, where `holder` has another pid. The network one is joined only with `network`; else
 * its descriptor is returned (the fork server keeps it for the commands that join it), or -1. */
static int join(const char *holder, int network) {
    static const char *names[] = {"user", "mnt", "ipc", "uts", "pid", "net"};
    static const int types[] = {CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUTS,
                                CLONE_NEWPID, CLONE_NEWNET};
    int fds[6];
    char path[64], cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) die("getcwd");
    for (int i = 0; i < 6; i++) {
        snprintf(path, sizeof path, "/proc/%s/ns/%s", holder, names[i]);
        if ((fds[i] = open(path, O_RDONLY | O_CLOEXEC)) < 0) die(path);
    }
    for (int i = 0; i < (network ? 6 : 5); i++) {
        if (setns(fds[i], types[i])) die(names[i]);
        close(fds[i]);
    }
    if (chdir(cwd)) die(cwd);  /* joining a mount namespace moved it to its root */
    return network ? -1 : fds[5];
}

static int ruleset(char **read, int nread, char **write, int nwrite, int tcp) {
    struct ruleset_attr attr = { FS_ALL, tcp ? 0 : NET_TCP, SCOPES };
    int fd = syscall(LL_CREATE, &attr, sizeof attr, 0);
    if (fd < 0) die("landlock_create_ruleset");
    for (int i = 0; i < nread + nwrite; i++) {
        const char *path = i < nread ? read[i] : write[i - nread];
        int target = open(path, O_PATH | O_CLOEXEC);
        if (target < 0) continue;  /* a path this machine lacks, or one gone meanwhile */
        struct path_beneath rule = { i < nread ? FS_READ : FS_ALL, target };
        /* a file takes only a file's rights (trying saves a stat per rule) */
        int failed = syscall(LL_ADD_RULE, fd, 1, &rule, 0);
        if (failed && errno == EINVAL) {
            rule.allowed &= FS_FILE;
            failed = syscall(LL_ADD_RULE, fd, 1, &rule, 0);
        }
        /* a rule that cannot be had (on a pipe ...) grants nothing: leave it out */
        if (failed && errno != EBADFD && errno != EINVAL) die(path);
        close(target);
    }
    return fd;
}

/* What every command of a build gives up, inherited by every process made after it: the
 * capabilities it could ever gain (the bounding set), root's special treatment (NOROOT,
 * NO_SETUID_FIXUP and KEEP_CAPS, each locked: root's exec gives nothing back), and new
 * privileges (no_new_privs). Done once in the fork server, per command in the launcher. */
static void give_up_privileges(void) {
    for (int cap = 0; prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0 || errno == EPERM; cap++)
        if (cap > 63) break;
    prctl(PR_SET_SECUREBITS, 0x2f, 0, 0, 0);
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("no_new_privs");
}

/* The command's own: no capability left, and the Landlock rules. */
static void restrict_to(int rules) {
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &header, data)) die("capset");
    if (syscall(LL_RESTRICT, rules, 0)) die("landlock_restrict_self");
    close(rules);
}

/* Exit as the command did: its code, or killed by the same signal (no core of our own). */
static int pass_on(int status) {
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    int number = WTERMSIG(status);
    struct rlimit none = {0, 0};
    sigset_t all;
    setrlimit(RLIMIT_CORE, &none);
    signal(number, SIG_DFL);
    sigfillset(&all);
    sigprocmask(SIG_UNBLOCK, &all, NULL);
    kill(getpid(), number);
    return 128 + number;
}

/* One request, parsed in place (its strings point into the buffer it came in). */
struct request {
    int32_t umask, flags, ncpu;
    int argc, envc, nread, nwrite;
    const char *cpus;  /* ncpu int32, unaligned */
    char **strings;    /* allocated: file, script, cwd, argv, NULL, env, NULL, rules */
    char *file, *script, *cwd, **argv, **env, **read, **write;
    char *rules;       /* where the rules start, and how many bytes they take but the last */
    size_t shared;
};

/* The rules every request of one kind (TCP or not) shares, opened once: all but the last write
 * rule, the action's sandbox. A rule on a file holds only a file's rights. */
struct rules { char *text; size_t size; int count, *fds; uint64_t *rights; };

static int parse(char *buffer, size_t size, struct request *r) {
    int32_t head[7];
    if (size < sizeof head) return -1;
    memcpy(head, buffer, sizeof head);
    r->umask = head[0], r->flags = head[1], r->ncpu = head[2];
    r->argc = head[3], r->envc = head[4], r->nread = head[5], r->nwrite = head[6];
    size_t at = sizeof head + (size_t)(r->ncpu > 0 ? r->ncpu : 0) * 4;
    if (r->ncpu < 0 || r->argc < 1 || r->envc < 0 || r->nread < 0 || r->nwrite < 0 || at > size
        || ((r->flags & 1) && r->nwrite < 1))
        return -1;
    r->cpus = buffer + sizeof head;
    int total = 3 + r->argc + r->envc + r->nread + r->nwrite;
    char **strings = calloc(total + 2, sizeof *strings);
    if (!strings) return -1;
    for (int i = 0; i < total; i++) {
        char *end = at < size ? memchr(buffer + at, 0, size - at) : NULL;
        if (!end) { free(strings); return -1; }
        strings[i] = buffer + at;
        at = end - buffer + 1;
    }
    /* argv and env each end with a NULL: the slots after them are moved up one and two */
    memmove(strings + 3 + r->argc + 1, strings + 3 + r->argc,
            (total - 3 - r->argc) * sizeof *strings);
    strings[3 + r->argc] = NULL;
    int env_at = 3 + r->argc + 1, rules_at = env_at + r->envc + 1;
    memmove(strings + rules_at, strings + env_at + r->envc,
            (r->nread + r->nwrite) * sizeof *strings);
    strings[env_at + r->envc] = NULL;
    r->strings = strings;
    r->file = strings[0], r->script = strings[1], r->cwd = strings[2];
    r->argv = strings + 3, r->env = strings + env_at;
    r->read = strings + rules_at, r->write = r->read + r->nread;
    r->rules = r->nread + r->nwrite ? r->read[0] : NULL;
    r->shared = r->nwrite ? (size_t)(r->write[r->nwrite - 1] - r->rules) : 0;
    return 0;
}

/* The shared rules of `r`, opened anew only when they differ from the last ones of its kind. */
static struct rules *shared_rules(struct rules *cache, struct request *r) {
    struct rules *c = &cache[(r->flags & 2) ? 1 : 0];
    if (c->text && c->size == r->shared && !memcmp(c->text, r->rules, r->shared)) return c;
    for (int i = 0; i < c->count; i++)
        if (c->fds[i] >= 0) close(c->fds[i]);
    free(c->text), free(c->fds), free(c->rights);
    int n = r->nread + r->nwrite - 1;
    c->text = malloc(r->shared + 1), c->size = r->shared, c->count = n;
    c->fds = calloc(n + 1, sizeof *c->fds), c->rights = calloc(n + 1, sizeof *c->rights);
    if (!c->text || !c->fds || !c->rights) die("malloc");
    memcpy(c->text, r->rules, r->shared);
    for (int i = 0; i < n; i++) {
        const char *path = i < r->nread ? r->read[i] : r->write[i - r->nread];
        struct stat info;
        c->fds[i] = open(path, O_PATH | O_CLOEXEC);
        c->rights[i] = i < r->nread ? FS_READ : FS_ALL;
        if (c->fds[i] >= 0 && !fstat(c->fds[i], &info) && !S_ISDIR(info.st_mode))
            c->rights[i] &= FS_FILE;
    }
    return c;
}

struct launch {  /* what the command's process is given, in the server's memory it shares */
    struct request *r;
    struct rules *rules;
    int out, err, null, netfd;
    const sigset_t *mask;
};

/* The command's process: everything the request asks, then exec; never returns. */
static void start(struct request *r, struct rules *rules, int out, int err, int null,
                  int netfd, const sigset_t *mask) {
    signal(SIGPIPE, SIG_DFL);
    sigprocmask(SIG_SETMASK, mask, NULL);
    if (setsid() < 0) die("setsid");
    if (r->ncpu > 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        for (int i = 0; i < r->ncpu; i++) {
            int32_t cpu;
            memcpy(&cpu, r->cpus + (size_t)i * 4, 4);
            if (cpu >= 0 && cpu < CPU_SETSIZE) CPU_SET(cpu, &set);
        }
        sched_setaffinity(0, sizeof set, &set);
    }
    if (r->umask >= 0) umask(r->umask);
    if (dup2(null, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) die("dup2");
    if (chdir(r->cwd)) die(r->cwd);
    if (r->flags & 1) {
        if (!(r->flags & 2) && setns(netfd, CLONE_NEWNET)) die("net");
        struct ruleset_attr attr = { FS_ALL, (r->flags & 2) ? 0 : NET_TCP, SCOPES };
        int fd = syscall(LL_CREATE, &attr, sizeof attr, 0);
        if (fd < 0) die("landlock_create_ruleset");
        for (int i = 0; i < rules->count; i++) {
            struct path_beneath rule = { rules->rights[i], rules->fds[i] };
            /* a rule that cannot be had (a path this machine lacks, a pipe ...) grants nothing */
            if (rule.fd >= 0 && syscall(LL_ADD_RULE, fd, 1, &rule, 0)
                && errno != EBADFD && errno != EINVAL)
                die("landlock_add_rule");
        }
        struct path_beneath own = { FS_ALL, open(r->write[r->nwrite - 1], O_PATH | O_CLOEXEC) };
        if (own.fd < 0 || syscall(LL_ADD_RULE, fd, 1, &own, 0)) die(r->write[r->nwrite - 1]);
        restrict_to(fd);  /* the server gave up the rest for every command (`serve`) */
    }
    execve(r->file, r->argv, r->env);
    if (*r->script && errno != ENOENT) {
        char *shell[] = {"/bin/bash", "-euo", "pipefail", "-c", r->script, NULL};
        execve(shell[0], shell, r->env);
    }
    fprintf(stderr, "posbuild sandbox: %s: %s\n", r->file, strerror(errno));
    _exit(errno == ENOENT ? 127 : FAIL);
}

/* Write all of `size` bytes to a report pipe; a reader that is gone is no error of ours. */
static void report(int fd, const void *data, size_t size) {
    while (size) {
        ssize_t n = write(fd, data, size);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        data = (const char *)data + n;
        size -= n;
    }
}

static int launched(void *given) {
    struct launch *l = given;
    start(l->r, l->rules, l->out, l->err, l->null, l->netfd, l->mask);
    return FAIL;
}

/* A request too large for one message (a command of hundreds of KiB) comes in a file instead:
 * its bytes, read whole into `*owned` (freed by the caller); -1 when it cannot be read. */
static ssize_t read_request(int fd, char **owned) {
    struct stat info;
    if (fstat(fd, &info) || !(*owned = malloc(info.st_size + 1))) return -1;
    ssize_t done = 0;
    while (done < info.st_size) {
        ssize_t n = pread(fd, *owned + done, info.st_size - done, done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        done += n;
    }
    return done;
}

static int serve(const char *holder) {
    static char buffer[1 << 16];
    /* the command's stack until it execs: it shares the server's memory (CLONE_VM), and the
     * server waits meanwhile (CLONE_VFORK), so nothing is copied and nothing runs twice */
    static char stack[1 << 16] __attribute__((aligned(16)));
    /* all but the network one, which each command joins unless it may use TCP */
    int netfd = holder ? join(holder, 0) : -1;
    if (holder) give_up_privileges();
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    sigset_t mask;
    if (null < 0 || sigprocmask(SIG_SETMASK, NULL, &mask)) die("serve");
    signal(SIGPIPE, SIG_IGN);  /* a reader gone; the command gets the default back */
    struct rules cache[2] = {{0}};
    for (;;) {
        char control[CMSG_SPACE(4 * sizeof(int))];
        struct iovec iov = {buffer, sizeof buffer};
        struct msghdr msg = {0};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        ssize_t size = recvmsg(0, &msg, MSG_CMSG_CLOEXEC);
        if (size < 0 && errno == EINTR) continue;
        if (size <= 0) return 0;  /* posbuild is done, or gone */
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        int fds[4] = {-1, -1, -1, -1}, given = 0;
        if (cmsg && cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS) {
            given = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            memcpy(fds, CMSG_DATA(cmsg), (given < 4 ? given : 4) * sizeof(int));
        }
        char *request = buffer, *owned = NULL;
        if (given == 4) size = read_request(fds[3], &owned), request = owned;
        struct request r;
        if (given < 3 || given > 4 || size < 0 || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))
            || parse(request, size, &r)) {
            /* not a request of posbuild's: its answer pipe (if any) ends unanswered */
            for (int i = 0; i < 4 && i < given; i++) close(fds[i]);
            free(owned);
            continue;
        }
        struct rules *rules = (r.flags & 1) ? shared_rules(cache, &r) : NULL;
        /* posbuild's child, not ours: it waits for it (and its usage) as for any it forks */
        struct launch launch = {&r, rules, fds[0], fds[1], null, netfd, &mask};
        pid_t pid = clone(launched, stack + sizeof stack,
                          CLONE_VM | CLONE_VFORK | CLONE_PARENT | SIGCHLD, &launch);
        free(r.strings);
        free(owned);
        int32_t said = pid < 0 ? -errno : pid;
        report(fds[2], &said, sizeof said);
        for (int i = 0; i < given; i++) close(fds[i]);
    }
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "hold")) return hold();
    if (argc >= 2 && !strcmp(argv[1], "serve"))
        return serve(argc == 4 && !strcmp(argv[2], "-N") ? argv[3] : NULL);
    char **read = calloc(argc, sizeof *read), **write = calloc(argc, sizeof *write);
    char *holder = NULL, *script = NULL, *preload = NULL;
    int nread = 0, nwrite = 0, tcp = 0, list = 0, i;
    if (!read || !write) die("calloc");
    for (i = 1; i < argc && strcmp(argv[i], "--"); i++) {
        char *arg = argv[i];
        if (arg[0] == '-' && arg[1] && !arg[2] && strchr("NcL", arg[1]) && i + 1 < argc) {
            char *value = argv[++i];
            *(arg[1] == 'N' ? &holder : arg[1] == 'c' ? &script : &preload) = value;
        } else if (!strcmp(arg, "-t")) tcp = 1;
        else if (!strcmp(arg, "-r") || !strcmp(arg, "-w")) list = arg[1];
        else if (list == 'r' && arg[0] == '/') read[nread++] = arg;
        else if (list == 'w' && arg[0] == '/') write[nwrite++] = arg;
        else { fprintf(stderr, "posbuild sandbox: unexpected argument %s\n", arg); return FAIL; }
    }
    if (i + 2 >= argc) { fprintf(stderr, "posbuild sandbox: no command\n"); return FAIL; }
    char *file = argv[i + 1], **command = argv + i + 2;
    /* No death signal here: it would fire when the posbuild *thread* that started this ends.
     * When posbuild ends, the PID namespace does: the child is killed, and this returns. */
    if (holder) {  /* the child will be in the PID namespace: a fork */
        int kept = join(holder, !tcp);
        if (kept >= 0) close(kept);
    }
    int rules = ruleset(read, nread, write, nwrite, tcp);
    pid_t child = holder ? fork() : 0;
    if (child < 0) die("fork");
    if (child == 0) {
        if (holder) prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        give_up_privileges();
        restrict_to(rules);
        if (preload) setenv("LD_PRELOAD", preload, 1);
        execv(file, command);
        if (errno == ENOEXEC && script) {
            char *shell[] = {"/bin/bash", "-euo", "pipefail", "-c", script, NULL};
            execv(shell[0], shell);
        }
        fprintf(stderr, "posbuild sandbox: %s: %s\n", file, strerror(errno));
        _exit(errno == ENOENT ? 127 : FAIL);
    }
    close(rules);
    int status;
    while (waitpid(child, &status, 0) < 0)
        if (errno != EINTR) die("waitpid");
    return pass_on(status);
}
