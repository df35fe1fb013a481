/* wrapperd-helper: what stays alive beside a confined target, in place of a resident
 * Python interpreter (sandbox/supervisor.py says when one stays, and exec()s this).
 *
 *   wrapperd-reaper reaper PID SYNC     pid 1 of the target's pid namespace: reap every
 *                                       child, orphans too; exit when PID exits
 *   wrapperd-super supervise PID SYNC   the supervisor outside: wait for PID only
 *   wrapperd-reaper join-reaper PID SYNC  the fork server's premade reaper, exec'd
 *                                       while its spare is idle: first join the
 *                                       namespaces its worker PID sends on SYNC (as
 *                                       namespaces.join_for_worker), then as reaper
 *
 * argv[0] is the name (supervisor.REAPER_COMM, SUPERVISOR_COMM), PID the target's pid
 * as this process sees it, SYNC an fd (or -1) on which one byte is written, and which
 * is then closed, once this process is ready: non-dumpable, every other fd closed, its
 * signal handlers in place.  The child on the other end (the future target, the reaper
 * below the supervisor, the fork server's worker) does not go on before that byte or
 * EOF (supervisor.await_ready), so nothing the target runs ever sees this process
 * dumpable.  The environment is empty:
 * the caller's never reaches this process's stack (supervisor.become passes none).
 *
 * Guarantees, the same as supervisor.supervise()'s (the Python fallback):
 *   - PR_SET_DUMPABLE 0 first.  execve made us dumpable again (an ordinary exec as the
 *     same uid sets SUID_DUMP_USER); until the prctl below, a process with our uid and
 *     a superset of our permitted capabilities could ptrace us -- the kernel's access
 *     check (__ptrace_may_access: same uid and gid, then cap_ptrace_access_check: the
 *     tracer's permitted set must contain ours, unless it has CAP_SYS_PTRACE, which
 *     passes whatever dumpable says).  The target cannot: no code of its runs before it
 *     reads our byte on SYNC (the shim's reaper step, just before the filter and exec),
 *     written after the prctl.  Any other process that could was able to ptrace the shim
 *     itself for far longer (from its exec to its first step, which is this same prctl).
 *   - FORWARDED_SIGNALS (TERM INT HUP USR1 USR2) go to PID.  The caller blocked them
 *     before forking; the mask and what is pending survive execve, so the handlers are
 *     installed first and only then are they unblocked: none is lost.  SIGCHLD back to
 *     its default (an inherited SIG_IGN would have the kernel reap PID for us, and its
 *     status would be lost), SIGPIPE ignored (writing SYNC must not kill us).
 *   - The exit status is PID's: its code, or 128+N when killed by signal N; 125 when
 *     this helper cannot do its job (bad arguments, no such child).
 *   - No fd: everything but SYNC is closed at once, and SYNC once the byte is written.
 *   - No auxiliary vector: the kernel's copy (the addresses of the stack's random bytes,
 *     the vDSO, the program headers) is cut to its terminator with PR_SET_MM_MAP, as
 *     procattr.erase_environment does, so /proc/PID/auxv shows nothing (best effort:
 *     it needs /proc and CONFIG_CHECKPOINT_RESTORE; the environment is empty anyway).
 *   - A signal is never forwarded to a pid already reaped (it could be someone else's
 *     by then): PID's exit is seen with WNOWAIT, the forwarded signals are blocked,
 *     and only then is it reaped.
 *
 * Built static (no dynamic loader, no library path to trust) by
 * `python3 -I -m sandbox.launchers`, into the package directory as wrapperd-helper.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define EXIT_HELPER_FAILED 125

static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2};
#define N_FORWARDED (sizeof forwarded / sizeof forwarded[0])

static volatile pid_t target;

static void forward(int sig)
{
	int saved = errno;
	kill(target, sig);
	errno = saved;
}

static void say(const char *what)
{
	/* Before fd 2 is closed only: the usage errors. */
	static const char prefix[] = "wrapperd-helper: ";
	(void)!write(2, prefix, sizeof prefix - 1);
	(void)!write(2, what, strlen(what));
	(void)!write(2, "\n", 1);
}

static int number(const char *s, long lo, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || !*s || *end || v < lo || v > INT32_MAX)
		return -1;
	*out = v;
	return 0;
}

static void close_all_but(int keep)
{
#ifdef SYS_close_range
	if (keep < 0) {
		if (syscall(SYS_close_range, 0U, ~0U, 0U) == 0)
			return;
	} else if ((keep == 0 || syscall(SYS_close_range, 0U, (unsigned)keep - 1, 0U) == 0) &&
		   syscall(SYS_close_range, (unsigned)keep + 1, ~0U, 0U) == 0) {
		return;
	}
#endif
	long max = sysconf(_SC_OPEN_MAX);
	if (max < 0 || max > 1 << 20)
		max = 1 << 20;
	for (int fd = 0; fd < max; fd++)
		if (fd != keep)
			close(fd);
}

/* PR_SET_MM_MAP's argument, <linux/prctl.h> struct prctl_mm_map. */
struct mm_map {
	uint64_t start_code, end_code, start_data, end_data, start_brk, brk, start_stack;
	uint64_t arg_start, arg_end, env_start, env_end;
	uint64_t *auxv;
	uint32_t auxv_size, exe_fd;
};

static void cut_auxv(void)
{
	char buf[1024];
	int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	ssize_t n = read(fd, buf, sizeof buf - 1);
	close(fd);
	if (n <= 0)
		return;
	buf[n] = 0;
	/* Fields counted from 1, as proc(5) does; the name (2) may hold anything, so
	 * count from the last ')'. */
	char *p = strrchr(buf, ')');
	if (!p)
		return;
	uint64_t f[53] = {0};
	int i = 2;
	for (p++; i < 52;) {
		while (*p == ' ')
			p++;
		if (!*p || *p == '\n')
			break;
		char *end;
		f[++i] = strtoull(p, &end, 10);     /* 0 for the state letter (3) */
		while (*end && *end != ' ' && *end != '\n')
			end++;
		p = end;
	}
	if (i < 51 || !f[50])
		return;
	static uint64_t auxv[2] = {0, 0};            /* AT_NULL */
	struct mm_map m = {
		.start_code = f[26], .end_code = f[27], .start_stack = f[28],
		.start_data = f[45], .end_data = f[46], .start_brk = f[47],
		.brk = (uint64_t)(uintptr_t)sbrk(0),
		.arg_start = f[48], .arg_end = f[49], .env_start = f[50], .env_end = f[50],
		.auxv = auxv, .auxv_size = sizeof auxv, .exe_fd = (uint32_t)-1,
	};
	(void)prctl(PR_SET_MM, PR_SET_MM_MAP, (unsigned long)&m, sizeof m, 0);
}

/* namespaces.REAPER_JOINS, with their CLONE_NEW* types. */
static const struct {
	const char *name;
	int type;
} joinable[] = {{"mount", CLONE_NEWNS}, {"net", CLONE_NEWNET}, {"ipc", CLONE_NEWIPC},
		{"uts", CLONE_NEWUTS}, {"cgroup", CLONE_NEWCGROUP}};
#define N_JOINABLE (sizeof joinable / sizeof joinable[0])

/* namespaces.join_for_worker in C: wait on sock for the worker's names ("mount,net",
 * or "-") and an fd each (SCM_RIGHTS), setns(2) each with its type, answer with the
 * errno ("0": joined).  EOF: the worker ended without asking. */
static void join_for_worker(int sock)
{
	char msg[65];
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int) * N_JOINABLE)];
	} ctl;
	struct iovec iov = {.iov_base = msg, .iov_len = sizeof msg - 1};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
			    .msg_controllen = sizeof ctl.buf};
	ssize_t n;
	do
		n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	while (n < 0 && errno == EINTR);
	if (n <= 0)
		return;
	msg[n] = 0;
	int fds[N_JOINABLE], nfds = 0;
	for (struct cmsghdr *h = CMSG_FIRSTHDR(&mh); h; h = CMSG_NXTHDR(&mh, h)) {
		if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
			continue;
		size_t k = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k && nfds < (int)N_JOINABLE; i++)
			memcpy(&fds[nfds++], CMSG_DATA(h) + i * sizeof(int), sizeof(int));
	}
	int types[N_JOINABLE], kinds = 0, err = 0;
	if (mh.msg_flags & (MSG_CTRUNC | MSG_TRUNC))
		err = EINVAL;
	if (!err && strcmp(msg, "-") != 0) {
		char *save = NULL;
		for (char *t = strtok_r(msg, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
			int type = 0;
			for (size_t j = 0; j < N_JOINABLE; j++)
				if (strcmp(t, joinable[j].name) == 0)
					type = joinable[j].type;
			if (!type || kinds >= (int)N_JOINABLE) {
				err = EINVAL;
				break;
			}
			types[kinds++] = type;
		}
	}
	if (!err && kinds != nfds)
		err = EINVAL;
	for (int i = 0; !err && i < kinds; i++)
		if (setns(fds[i], types[i]) != 0)    /* the kernel checks the fd's type */
			err = errno ? errno : 1;
	for (int i = 0; i < nfds; i++)
		close(fds[i]);
	char answer[16], *a = answer + sizeof answer;     /* "%d" of err (>= 0) */
	do
		*--a = (char)('0' + err % 10);
	while ((err /= 10) > 0);
	(void)!send(sock, a, (size_t)(answer + sizeof answer - a), MSG_NOSIGNAL);
}

int main(int argc, char **argv)
{
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
		return EXIT_HELPER_FAILED;

	long pid, sync_fd;
	int reaper, join = 0;
	if (argc != 4 || number(argv[2], 1, &pid) || number(argv[3], -1, &sync_fd)) {
		say("usage: wrapperd-reaper reaper PID SYNC_FD | "
		    "wrapperd-super supervise PID SYNC_FD");
		return EXIT_HELPER_FAILED;
	}
	if (strcmp(argv[1], "reaper") == 0) {
		reaper = 1;
	} else if (strcmp(argv[1], "join-reaper") == 0 && sync_fd >= 0) {
		reaper = join = 1;
	} else if (strcmp(argv[1], "supervise") == 0) {
		reaper = 0;
	} else {
		say("the mode is reaper, join-reaper (with SYNC_FD) or supervise");
		return EXIT_HELPER_FAILED;
	}
	target = (pid_t)pid;

	close_all_but((int)sync_fd);

	sigset_t fwd;
	sigemptyset(&fwd);
	for (size_t i = 0; i < N_FORWARDED; i++)
		sigaddset(&fwd, forwarded[i]);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_DFL;
	sigaction(SIGCHLD, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
	sa.sa_handler = forward;
	sa.sa_mask = fwd;                /* one forward at a time */
	sa.sa_flags = SA_RESTART;
	for (size_t i = 0; i < N_FORWARDED; i++)
		if (sigaction(forwarded[i], &sa, NULL) != 0)
			return EXIT_HELPER_FAILED;

	cut_auxv();
	(void)prctl(PR_SET_NAME, (unsigned long)(reaper ? "wrapperd-reaper" : "wrapperd-super"),
		    0, 0, 0);

	if (join)
		join_for_worker((int)sync_fd);     /* the forwarded signals still blocked */
	if (sync_fd >= 0) {
		(void)!write((int)sync_fd, "R", 1);
		close((int)sync_fd);
	}
	/* Whatever arrived since the caller blocked them is delivered, and forwarded, now.
	 * Nothing else stays blocked: the helper has no other signal to hold back. */
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);

	for (;;) {
		siginfo_t si;
		memset(&si, 0, sizeof si);
		int r = reaper ? waitid(P_ALL, 0, &si, WEXITED | WNOWAIT)
			       : waitid(P_PID, (id_t)target, &si, WEXITED | WNOWAIT);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return EXIT_HELPER_FAILED;       /* ECHILD: PID was never ours */
		}
		if (si.si_pid == target)
			break;
		if (si.si_pid > 0)
			waitpid(si.si_pid, NULL, 0);     /* an orphan: a zombie, reaped at once */
	}
	sigprocmask(SIG_BLOCK, &fwd, NULL);
	int status;
	while (waitpid(target, &status, 0) < 0)
		if (errno != EINTR)
			return EXIT_HELPER_FAILED;
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return EXIT_HELPER_FAILED;
}
