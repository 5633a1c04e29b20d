/* LD_PRELOAD shim for the sandbox probe: prints every file or socket call refused (EACCES, EPERM) to stderr. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

static void note(const char *call, const char *path, int err) {
    if (err == EACCES || err == EPERM) fprintf(stderr, "DENIED %s %s: %s\n", call, path ? path : "?", strerror(err));
    errno = err;
}

#define OPEN_LIKE(name)                                                          \
    int name(const char *path, int flags, ...) {                                \
        va_list ap; va_start(ap, flags); int mode = va_arg(ap, int); va_end(ap); \
        static int (*real)(const char *, int, ...);                             \
        if (!real) real = dlsym(RTLD_NEXT, #name);                              \
        int fd = real(path, flags, mode);                                        \
        if (fd < 0) note(#name, path, errno);                                    \
        return fd;                                                               \
    }
OPEN_LIKE(open)
OPEN_LIKE(open64)

#define OPENAT_LIKE(name)                                                        \
    int name(int dir, const char *path, int flags, ...) {                       \
        va_list ap; va_start(ap, flags); int mode = va_arg(ap, int); va_end(ap); \
        static int (*real)(int, const char *, int, ...);                        \
        if (!real) real = dlsym(RTLD_NEXT, #name);                              \
        int fd = real(dir, path, flags, mode);                                   \
        if (fd < 0) note(#name, path, errno);                                    \
        return fd;                                                               \
    }
OPENAT_LIKE(openat)
OPENAT_LIKE(openat64)

int mkdir(const char *path, mode_t mode) {
    static int (*real)(const char *, mode_t);
    if (!real) real = dlsym(RTLD_NEXT, "mkdir");
    int r = real(path, mode);
    if (r < 0) note("mkdir", path, errno);
    return r;
}

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real)(int, const struct sockaddr *, socklen_t);
    if (!real) real = dlsym(RTLD_NEXT, "connect");
    int r = real(fd, addr, len);
    if (r < 0) {
        char where[120] = "?";
        if (addr && addr->sa_family == AF_UNIX) {
            const struct sockaddr_un *un = (const struct sockaddr_un *)addr;
            snprintf(where, sizeof where, "%s%s", un->sun_path[0] ? "" : "@", un->sun_path + !un->sun_path[0]);
        }
        note("connect", where, errno);
    }
    return r;
}
