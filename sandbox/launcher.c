/* The `wrapperd` command: a static launcher for wrapperd's Python, which runs as root.
 *
 * An init starts /sbin/wrapperd with the *service's* environment.  Handed to a
 * dynamically linked interpreter, that environment is acted on before any of our code
 * runs: LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, GCONV_PATH ... are read by the dynamic
 * loader and libc, PYTHON* by the interpreter.  So this launcher is linked statically
 * (no dynamic loader reads anything) and does three things only:
 *   1. writes its environment, exactly as execve(2) gave it, to a memfd;
 *   2. execs PYTHON -I -S -c BOOT PYPATH --environ-fd N ARGS..., the interpreter
 *      isolated (-I: no PYTHON* variable, no user site, no working directory on
 *      sys.path), without the site module (-S: no .pth file runs, and a start costs
 *      what the interpreter itself costs) -- sys.path gets PYPATH instead, the package
 *      root and what the site module would add -- and with an environment of PATH
 *      and the WRAPPERD_* settings only;
 *   3. wrapperd reads the memfd (and closes it) as the environment of a flags-mode
 *      target, which so gets it byte for byte.
 * Built by `python3 -I -m sandbox.launchers`, which sets PYTHON to that interpreter and
 * PYPATH to what its site module would put on sys.path (sandbox.launchers._site_path).
 * If anything fails, exit 125 with one line, and a status record on --status-fd N if
 * given, as wrapperd does: the target never runs. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef PYTHON
#error "build with -DPYTHON='\"/path/to/python3\"'"
#endif
#ifndef PYPATH
#error "build with -DPYPATH='\"/dir:/dir\"'"
#endif

/* What python -I -m wrapperd runs, with PYPATH (argv[1]) at the end of sys.path. */
#define BOOT "import sys; sys.path += sys.argv.pop(1).split(':'); import wrapperd.__main__"

#define EXIT_FAILURE_WRAPPERD 125
#define CLEAN_PATH "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

extern char **environ;

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int fail(char **argv, const char *what)
{
	int err = errno;
	char rec[512];
	/* --status-fd N, as wrapperd's argument parser would find it (before "--"). */
	for (char **a = argv + 1; *a && a[1]; a++) {
		if (strcmp(*a, "--") == 0)
			break;
		if (strcmp(*a, "--status-fd") == 0) {
			char *end;
			long fd = strtol(a[1], &end, 10);
			if (*a[1] && !*end && fd >= 0 && fd < 1 << 20) {
				int n = snprintf(rec, sizeof rec, "{\"step\": \"python\", \"errno\": %d, "
						 "\"message\": \"%s\"}\n", err, what);
				if (n > 0 && (size_t)n < sizeof rec)
					(void)write_all((int)fd, rec, (size_t)n);
			}
			break;
		}
	}
	fprintf(stderr, "wrapperd: python: %s: %s\n", what, strerror(err));
	return EXIT_FAILURE_WRAPPERD;
}

int main(int argc, char **argv)
{
	int fd = memfd_create("wrapperd-environ", 0);   /* inherited by the interpreter */
	if (fd < 0)
		return fail(argv, "memfd_create");
	if (fd <= 2) {
		/* The caller closed a stdio fd: leave that slot closed for the target, as
		 * given (wrapperd takes no --environ-fd of 0, 1 or 2). */
		int high = fcntl(fd, F_DUPFD, 3);
		if (high < 0)
			return fail(argv, "fcntl F_DUPFD");
		close(fd);
		fd = high;
	}
	size_t keep = 0;
	for (char **e = environ; *e; e++) {
		if (write_all(fd, *e, strlen(*e) + 1) < 0)
			return fail(argv, "write the environment");
		if (strncmp(*e, "WRAPPERD_", 9) == 0)
			keep++;
	}
	if (lseek(fd, 0, SEEK_SET) < 0)
		return fail(argv, "lseek");

	char fdarg[16];
	snprintf(fdarg, sizeof fdarg, "%d", fd);
	char **args = calloc((size_t)argc + 9, sizeof *args);
	char **env = calloc(keep + 2, sizeof *env);
	if (!args || !env)
		return fail(argv, "calloc");
	size_t i = 0;
	args[i++] = PYTHON;
	args[i++] = "-I";
	args[i++] = "-S";
	args[i++] = "-c";
	args[i++] = BOOT;
	args[i++] = PYPATH;
	args[i++] = "--environ-fd";
	args[i++] = fdarg;
	for (int a = 1; a < argc; a++)
		args[i++] = argv[a];
	args[i] = NULL;

	/* The wrapperd settings the shim reads from its own environment (the seccomp
	 * cache directory, the tests' fault injection) are the caller's to give. */
	size_t j = 0;
	env[j++] = CLEAN_PATH;
	for (char **e = environ; *e; e++)
		if (strncmp(*e, "WRAPPERD_", 9) == 0)
			env[j++] = *e;
	env[j] = NULL;

	execve(PYTHON, args, env);
	return fail(argv, "execve " PYTHON);
}
