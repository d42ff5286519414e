/* redline-seccomp-exec FD COMMAND...: put the seccomp program in file descriptor FD on this
 * process, close FD, then execute COMMAND.
 *
 * The program is compiled by libseccomp (redline/sandbox/seccomp_filter.py export): this only
 * installs it, as bwrap's --seccomp does, so that every process the harness enters into a sandbox
 * is filtered before nsenter enters the namespaces (see redline/sandbox/syscalls.py). It runs on
 * the host, as root, started by the harness. It never executes COMMAND unfiltered: any failure
 * prints "redline-seccomp: <why>" and exits 1. Compiled on first use (statically where it can be,
 * redline/sandbox/syscalls.py); it costs ~0.7 ms per entry. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static int fail(const char *what) {
    fprintf(stderr, "redline-seccomp: %s: %s\n", what, strerror(errno));
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "redline-seccomp: usage: redline-seccomp-exec FD COMMAND...\n");
        return 1;
    }
    char *end;
    long fd = strtol(argv[1], &end, 10);
    struct stat info;
    if (*end || fd < 0 || fstat((int)fd, &info) != 0) return fail("the filter's descriptor");
    if (info.st_size <= 0 || info.st_size % sizeof(struct sock_filter) || info.st_size > 65536 * 8) {
        errno = EINVAL;
        return fail("the filter's size");
    }
    struct sock_filter *code = malloc(info.st_size);
    if (!code) return fail("memory");
    for (off_t done = 0; done < info.st_size;) {  /* pread: the descriptor is shared, its offset is not used */
        ssize_t got = pread((int)fd, (char *)code + done, info.st_size - done, done);
        if (got <= 0) return fail("reading the filter");
        done += got;
    }
    struct sock_fprog program = {.len = (unsigned short)(info.st_size / sizeof(struct sock_filter)), .filter = code};
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &program) != 0) return fail("loading the filter");
    close((int)fd);
    execvp(argv[2], argv + 2);
    return fail(argv[2]);
}
