/* sandbox_exec: run one action with the isolation its options ask for, then exec it.
 *
 *   sandbox_exec [-j PID] [-p] [-m ROOT] [-l] [-n NETNS] [-r PATH...] [-w PATH...] -- ARGV...
 *
 * -j PID    join the user, network, IPC and UTS namespaces PID holds (made once per build)
 * -n NETNS  join the network namespace at this path (Landlock alone has no UDP rule)
 * -p        a fresh PID namespace: fork, the command is its PID 1, this process waits for it
 *           (so wait4's rusage still counts the command) and dies with its parent
 * -m ROOT   a fresh mount namespace: a tmpfs on ROOT holding the -r paths read-only and the -w
 *           paths writable at their own path, /dev nodes, /proc, /tmp; pivot_root into it
 * -l        Landlock: -r paths readable, -w paths writable, TCP denied, signals and abstract
 *           sockets scoped to the action
 * Always: every capability dropped (root's exec gives none back), no_new_privs, PDEATHSIG.
 * Only bench_sandbox_alternatives.py builds and runs it: it measures what the kernel costs
 * without Python in the child. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/capability.h>

#define DIE(what) do { perror(what); _exit(126); } while (0)
#define MAXP 64

struct attr { uint64_t fs, net, scoped; };
struct beneath { uint64_t allowed; int32_t fd; } __attribute__((packed));
static char *rd[MAXP], *wr[MAXP];
static int nrd, nwr;

static void join(const char *pid, const char *ns, int type) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%s/ns/%s", pid, ns);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || setns(fd, type)) DIE(path);
    close(fd);
}

static void mkpath(char *path, int dir) {
    for (char *p = path + 1; *p; p++)
        if (*p == '/') { *p = 0; mkdir(path, 0755); *p = '/'; }
    if (dir) mkdir(path, 0755);
    else close(open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
}

static void bind(const char *root, const char *src, int ro) {
    char in[4096], link[4096];
    struct stat st;
    snprintf(in, sizeof in, "%s%s", root, src);
    if (lstat(src, &st)) return;
    if (S_ISLNK(st.st_mode)) {
        ssize_t n = readlink(src, link, sizeof link - 1);
        link[n < 0 ? 0 : n] = 0;
        mkpath(in, 0); unlink(in);
        if (symlink(link, in)) DIE("symlink");
        return;
    }
    mkpath(in, S_ISDIR(st.st_mode));
    if (mount(src, in, NULL, MS_BIND | MS_REC, NULL)) DIE(src);
    if (ro) {
        struct statvfs v;
        statvfs(src, &v);
        unsigned long keep = v.f_flag & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME |
                                         MS_NODIRATIME | MS_RELATIME);
        if (mount(NULL, in, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | keep, NULL)) DIE(src);
    }
}

static void mounts(const char *root) {
    static const char *dev[] = {"/dev/null", "/dev/zero", "/dev/urandom", "/dev/random",
                                "/dev/full", NULL};
    char path[4096];
    if (unshare(CLONE_NEWNS)) DIE("unshare mount");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)) DIE("private");
    if (mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")) DIE("tmpfs");
    for (int i = 0; i < nrd; i++) bind(root, rd[i], 1);
    for (const char **d = dev; *d; d++) bind(root, *d, 0);
    for (int i = 0; i < nwr; i++) bind(root, wr[i], 0);
    snprintf(path, sizeof path, "%s/proc", root); mkdir(path, 0755);
    if (mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL)) DIE("proc");
    snprintf(path, sizeof path, "%s/tmp", root); mkdir(path, 01777);
    if (mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, NULL)) DIE("tmp");
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) DIE("getcwd");
    if (chdir(root) || syscall(SYS_pivot_root, ".", ".") || umount2(".", MNT_DETACH))
        DIE("pivot_root");
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL))
        DIE("remount root");
    if (chdir(cwd)) DIE("chdir");
}

static void landlock(void) {
    struct attr a = { (1 << 16) - 1, 3, 3 };
    int rs = syscall(444, &a, sizeof a, 0);
    if (rs < 0) DIE("landlock_create_ruleset");
    for (int i = 0; i < nrd + nwr; i++) {
        const char *p = i < nrd ? rd[i] : wr[i - nrd];
        int fd = open(p, O_PATH | O_CLOEXEC);
        struct stat st;
        if (fd < 0) continue;
        fstat(fd, &st);
        uint64_t rights = i >= nrd ? (1 << 16) - 1 : 1 | 4 | 8;
        if (!S_ISDIR(st.st_mode)) rights &= 1 | 2 | 4 | (1 << 14) | (1 << 15);
        struct beneath b = { rights, fd };
        if (syscall(445, rs, 1, &b, 0)) DIE(p);
        close(fd);
    }
    if (syscall(446, rs, 0)) DIE("landlock_restrict_self");
    close(rs);
}

int main(int argc, char **argv) {
    char *holder = NULL, *netns = NULL, *root = NULL;
    int pid_ns = 0, ll = 0, mode = 0, i;
    for (i = 1; i < argc && strcmp(argv[i], "--"); i++) {
        if (!strcmp(argv[i], "-j")) holder = argv[++i];
        else if (!strcmp(argv[i], "-n")) netns = argv[++i];
        else if (!strcmp(argv[i], "-m")) root = argv[++i];
        else if (!strcmp(argv[i], "-p")) pid_ns = 1;
        else if (!strcmp(argv[i], "-l")) ll = 1;
        else if (!strcmp(argv[i], "-r") || !strcmp(argv[i], "-w")) mode = argv[i][1];
        else if (mode == 'r' && nrd < MAXP) rd[nrd++] = argv[i];
        else if (mode == 'w' && nwr < MAXP) wr[nwr++] = argv[i];
    }
    if (i + 1 >= argc) { fprintf(stderr, "sandbox_exec: no command\n"); return 126; }
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    if (holder) {
        join(holder, "user", CLONE_NEWUSER);
        join(holder, "net", CLONE_NEWNET);
        join(holder, "ipc", CLONE_NEWIPC);
        join(holder, "uts", CLONE_NEWUTS);
    }
    if (netns) {
        int fd = open(netns, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || setns(fd, CLONE_NEWNET)) DIE(netns);
        close(fd);
    }
    if (pid_ns) {
        if (unshare(CLONE_NEWPID)) DIE("unshare pid");
        pid_t child = fork();
        if (child < 0) DIE("fork");
        if (child > 0) {
            int status;
            signal(SIGINT, SIG_IGN);
            while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
            if (WIFSIGNALED(status)) { signal(WTERMSIG(status), SIG_DFL);
                                       kill(getpid(), WTERMSIG(status)); }
            _exit(WEXITSTATUS(status));
        }
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    }
    if (root) mounts(root);
    struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2] = {{0}};
    prctl(PR_SET_SECUREBITS, 0x2f, 0, 0, 0);
    if (syscall(SYS_capset, &h, d)) DIE("capset");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) DIE("no_new_privs");
    if (ll) landlock();
    execv(argv[i + 1], argv + i + 1);
    DIE(argv[i + 1]);
}
