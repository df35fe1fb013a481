/* Seccomp probe: makes raw syscalls (glibc wrappers hide or rewrite errnos) and prints
 * one JSON line: {"results": [[ret, errno], ...]} in the order of its arguments.
 *   sys:NR[:ARG...]  syscall(NR, ARGs) -- numbers in C syntax (0x.. ok), up to 6 args
 *   int80:NR         the i386 entry (int $0x80) with eax=NR, no args (x86_64 only)
 *   clone:FLAGS      raw clone(FLAGS|SIGCHLD); the child exits at once, ret 0 = ok
 *   getppid:N        N raw getppid calls; result [ns per call, 0]
 *   rw:N             N write+read pairs of one byte over a pipe; [ns per syscall, 0]
 *   ioctl:N          N ioctl(-1, TCGETS) calls (EBADF); [ns per call, 0]
 * Built by the tests with gcc into a temporary directory. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    printf("{\"results\": [");
    for (int i = 1; i < argc; i++) {
        char *op = strdup(argv[i]), *arg = strchr(op, ':');
        long long ret = -1;
        int err = 0;
        if (arg)
            *arg++ = 0;
        if (!strcmp(op, "sys") && arg) {
            unsigned long long a[7] = {0};
            int n = 0;
            for (char *t = strtok(arg, ":"); t && n < 7; t = strtok(NULL, ":"))
                a[n++] = strtoull(t, NULL, 0);
            errno = 0;
            ret = syscall((long)a[0], a[1], a[2], a[3], a[4], a[5], a[6]);
            err = ret == -1 ? errno : 0;
        } else if (!strcmp(op, "int80") && arg) {
#if defined(__x86_64__)
            long nr = strtol(arg, NULL, 0);
            __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr) : "memory", "r8", "r9", "r10", "r11");
            if (ret < 0 && ret > -4096) {
                err = (int)-ret;
                ret = -1;
            }
#else
            err = ENOSYS;
#endif
        } else if (!strcmp(op, "clone") && arg) {
            unsigned long flags = strtoul(arg, NULL, 0) | SIGCHLD;
            errno = 0;
            ret = syscall(SYS_clone, flags, 0, 0, 0, 0);
            if (ret == 0)
                _exit(0);
            err = ret == -1 ? errno : 0;
            if (ret > 0) {
                waitpid((pid_t)ret, NULL, 0);
                ret = 0;
            }
        } else if (!strcmp(op, "getppid") && arg) {
            long n = strtol(arg, NULL, 0);
            long long t0 = now_ns();
            for (long k = 0; k < n; k++)
                syscall(SYS_getppid);
            ret = (now_ns() - t0) / (n ? n : 1);
        } else if (!strcmp(op, "ioctl") && arg) {
            long n = strtol(arg, NULL, 0);
            long long t0 = now_ns();
            for (long k = 0; k < n; k++)
                syscall(SYS_ioctl, -1, 0x5401, 0);
            ret = (now_ns() - t0) / (n ? n : 1);
        } else if (!strcmp(op, "rw") && arg) {
            long n = strtol(arg, NULL, 0);
            int p[2];
            char c = 'x';
            if (pipe(p)) {
                err = errno;
            } else {
                long long t0 = now_ns();
                for (long k = 0; k < n; k++) {
                    if (syscall(SYS_write, p[1], &c, 1) != 1 || syscall(SYS_read, p[0], &c, 1) != 1) {
                        err = errno;
                        break;
                    }
                }
                ret = (now_ns() - t0) / (2 * (n ? n : 1));
            }
        } else {
            fprintf(stderr, "seccomp_probe: bad op %s\n", argv[i]);
            return 2;
        }
        printf("%s[%lld, %d]", i > 1 ? ", " : "", ret, err);
        free(op);
    }
    printf("]}\n");
    return 0;
}
