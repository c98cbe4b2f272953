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
 *   outside it. The status is passed on: an exit code as it is, a signal as the same signal. */
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
 * /proc, where `holder` has another pid. */
static void join(const char *holder, int network) {
    static const char *names[] = {"user", "mnt", "ipc", "uts", "net", "pid"};
    static const int types[] = {CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUTS,
                                CLONE_NEWNET, CLONE_NEWPID};
    int fds[6];
    char path[64], cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) die("getcwd");
    for (int i = 0; i < 6; i++) {
        snprintf(path, sizeof path, "/proc/%s/ns/%s", holder, names[i]);
        fds[i] = types[i] == CLONE_NEWNET && network ? -1 : open(path, O_RDONLY | O_CLOEXEC);
        if (fds[i] < 0 && !(types[i] == CLONE_NEWNET && network)) die(path);
    }
    for (int i = 0; i < 6; i++) {
        if (fds[i] < 0) continue;
        if (setns(fds[i], types[i])) die(names[i]);
        close(fds[i]);
    }
    if (chdir(cwd)) die(cwd);  /* joining a mount namespace moved it to its root */
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

static void confine(int rules) {
    struct __user_cap_header_struct header = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    for (int cap = 0; prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0 || errno == EPERM; cap++)
        if (cap > 63) break;
    /* NOROOT, NO_SETUID_FIXUP and KEEP_CAPS, each locked: root's exec gives nothing back */
    prctl(PR_SET_SECUREBITS, 0x2f, 0, 0, 0);
    if (syscall(SYS_capset, &header, data)) die("capset");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("no_new_privs");
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

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "hold")) return hold();
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
    if (holder) join(holder, tcp);  /* the child will be in the PID namespace: a fork */
    int rules = ruleset(read, nread, write, nwrite, tcp);
    pid_t child = holder ? fork() : 0;
    if (child < 0) die("fork");
    if (child == 0) {
        if (holder) prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        confine(rules);
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
