// coffer_native: the few Linux file-system calls that Node.js does not expose and that a backup
// needs for full fidelity: nanosecond-exact times (also on symlinks), extended attributes (POSIX
// ACLs are the xattrs system.posix_acl_*), device nodes, FIFOs, Unix socket files and the
// SEEK_DATA/SEEK_HOLE walk of sparse files. Plain C against node_api.h only (ABI-stable N-API,
// no C++ and no npm dependencies), so `npm ci` builds it with the machine's compiler and
// Node's headers and the result loads on any later Node.js.
//
// Every function is one synchronous system call on a path (never following a final symlink
// where that matters) or a file descriptor. Failures throw an Error shaped like Node's own:
// message "ENOENT: No such file or directory, lsetxattr '/x'", and .code, .errno (negative),
// .syscall, .path and .description (strerror), so that src/sources/native.ts can map errno
// values the way node:fs errors are mapped. Paths and xattr names may be strings (UTF-8) or
// Buffers (any bytes but NUL).

#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <dirent.h>
#include <unistd.h>

#include "codec.h"

#ifndef ENOATTR
#define ENOATTR ENODATA
#endif

// errno names, so JS sees the same .code strings that node:fs errors carry. Numbers differ
// between architectures, names do not.
static const char *errno_name(int e) {
  switch (e) {
#define N(x) case x: return #x;
    N(EPERM) N(ENOENT) N(ESRCH) N(EINTR) N(EIO) N(ENXIO) N(E2BIG) N(ENOEXEC) N(EBADF) N(ECHILD)
    N(EAGAIN) N(ENOMEM) N(EACCES) N(EFAULT) N(EBUSY) N(EEXIST) N(EXDEV) N(ENODEV) N(ENOTDIR)
    N(EISDIR) N(EINVAL) N(ENFILE) N(EMFILE) N(ENOTTY) N(ETXTBSY) N(EFBIG) N(ENOSPC) N(ESPIPE)
    N(EROFS) N(EMLINK) N(EPIPE) N(EDOM) N(ERANGE) N(ENAMETOOLONG) N(ENOSYS) N(ELOOP)
    N(ENODATA) N(EOVERFLOW) N(EOPNOTSUPP) N(EADDRINUSE) N(EADDRNOTAVAIL) N(EAFNOSUPPORT)
    N(EDQUOT) N(ESTALE) N(ECONNREFUSED) N(ENOTSOCK) N(EPROTONOSUPPORT) N(ENOTEMPTY)
#if ENOTSUP != EOPNOTSUPP
    N(ENOTSUP)
#endif
#undef N
    default: return NULL;
  }
}

// An errno Error shaped like node:fs's; NULL (with an exception pending) when out of memory.
static napi_value make_errno_error(napi_env env, int err, const char *syscall, const char *path) {
  char codebuf[24];
  const char *code = errno_name(err);
  if (code == NULL) {
    snprintf(codebuf, sizeof codebuf, "E%d", err);
    code = codebuf;
  }
  // ENOTSUP and EOPNOTSUPP are one value on Linux; report the name node:fs uses for it.
  if (err == EOPNOTSUPP) code = "ENOTSUP";
  size_t len = strlen(code) + strlen(strerror(err)) + strlen(syscall) + (path ? strlen(path) : 0) + 16;
  char *msg = malloc(len);
  if (msg == NULL) {
    napi_throw_error(env, "ENOMEM", "out of memory");
    return NULL;
  }
  if (path) snprintf(msg, len, "%s: %s, %s '%s'", code, strerror(err), syscall, path);
  else snprintf(msg, len, "%s: %s, %s", code, strerror(err), syscall);
  napi_value jcode, jmsg, error, v;
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &jcode);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &jmsg);
  free(msg);
  napi_create_error(env, jcode, jmsg, &error);
  napi_create_int32(env, -err, &v);
  napi_set_named_property(env, error, "errno", v);
  napi_create_string_utf8(env, strerror(err), NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, error, "description", v);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &v);
  napi_set_named_property(env, error, "syscall", v);
  if (path) {
    napi_create_string_utf8(env, path, NAPI_AUTO_LENGTH, &v);
    napi_set_named_property(env, error, "path", v);
  }
  return error;
}

// Throws an errno Error; returns NULL so callers can `return throw_errno(...)`.
static napi_value throw_errno(napi_env env, int err, const char *syscall, const char *path) {
  napi_value error = make_errno_error(env, err, syscall, path);
  if (error != NULL) napi_throw(env, error);
  return NULL;
}

static napi_value throw_type(napi_env env, const char *msg) {
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
  return NULL;
}

// Reads argc arguments; throws unless exactly `want` were given.
static int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return 0;
  if (argc < want) {
    throw_type(env, "coffer_native: too few arguments");
    return 0;
  }
  return 1;
}

// A NUL-terminated copy of a string (UTF-8) or Buffer argument; NULL after throwing. Buffers
// carry names that are not valid UTF-8; an embedded NUL could never name a file, so refuse it.
static char *get_bytes(napi_env env, napi_value v, const char *what) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_string) {
    size_t len;
    napi_get_value_string_utf8(env, v, NULL, 0, &len);
    char *s = malloc(len + 1);
    if (s == NULL) return (char *)throw_errno(env, ENOMEM, "malloc", NULL);
    napi_get_value_string_utf8(env, v, s, len + 1, &len);
    if (strlen(s) != len) {
      free(s);
      throw_type(env, what);
      return NULL;
    }
    return s;
  }
  bool is_buffer = false;
  napi_is_buffer(env, v, &is_buffer);
  if (is_buffer) {
    void *data;
    size_t len;
    napi_get_buffer_info(env, v, &data, &len);
    if (memchr(data, 0, len) != NULL) {
      throw_type(env, what);
      return NULL;
    }
    char *s = malloc(len + 1);
    if (s == NULL) return (char *)throw_errno(env, ENOMEM, "malloc", NULL);
    memcpy(s, data, len);
    s[len] = 0;
    return s;
  }
  throw_type(env, what);
  return NULL;
}

// An integer argument given as a Number (must be an exact integer) or a BigInt.
static int get_int64(napi_env env, napi_value v, int64_t *out, const char *what) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_bigint) {
    bool lossless;
    napi_get_value_bigint_int64(env, v, out, &lossless);
    if (lossless) return 1;
  } else if (t == napi_number) {
    double d;
    napi_get_value_double(env, v, &d);
    // Range first (NaN fails it too): casting a double outside int64_t's range is undefined.
    if (d >= -9223372036854775808.0 && d < 9223372036854775808.0 && d == (double)(int64_t)d) {
      *out = (int64_t)d;
      return 1;
    }
  }
  throw_type(env, what);
  return 0;
}

static napi_value make_number(napi_env env, double d) {
  napi_value v;
  napi_create_double(env, d, &v);
  return v;
}

static napi_value make_undefined(napi_env env) {
  napi_value v;
  napi_get_undefined(env, &v);
  return v;
}

// utimensat(path, atimeSec, atimeNsec, mtimeSec, mtimeNsec, nofollow): seconds as Number or
// BigInt (times before 1970 are negative seconds with a non-negative nanosecond part).
static napi_value js_utimensat(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  if (!get_args(env, info, 6, argv)) return NULL;
  int64_t as, an, ms, mn;
  bool nofollow = false;
  if (!get_int64(env, argv[1], &as, "atimeSec must be an integer")) return NULL;
  if (!get_int64(env, argv[2], &an, "atimeNsec must be an integer")) return NULL;
  if (!get_int64(env, argv[3], &ms, "mtimeSec must be an integer")) return NULL;
  if (!get_int64(env, argv[4], &mn, "mtimeNsec must be an integer")) return NULL;
  if (an < 0 || an > 999999999 || mn < 0 || mn > 999999999) return throw_type(env, "nanoseconds must be in 0..999999999");
  napi_get_value_bool(env, argv[5], &nofollow);
  char *path = get_bytes(env, argv[0], "path must be a string or Buffer without NUL");
  if (path == NULL) return NULL;
  struct timespec ts[2] = {{.tv_sec = (time_t)as, .tv_nsec = (long)an}, {.tv_sec = (time_t)ms, .tv_nsec = (long)mn}};
  int r = utimensat(AT_FDCWD, path, ts, nofollow ? AT_SYMLINK_NOFOLLOW : 0);
  napi_value result = r == 0 ? make_undefined(env) : throw_errno(env, errno, "utimensat", path);
  free(path);
  return result;
}

// lgetxattr(path, name) → Buffer. Sizes the value first; retries if it grew in between.
static napi_value js_lgetxattr(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  char *path = get_bytes(env, argv[0], "path must be a string or Buffer without NUL");
  if (path == NULL) return NULL;
  char *name = get_bytes(env, argv[1], "name must be a string or Buffer without NUL");
  if (name == NULL) {
    free(path);
    return NULL;
  }
  napi_value result = NULL;
  for (int attempt = 0;; attempt++) {
    ssize_t size = lgetxattr(path, name, NULL, 0);
    if (size < 0) {
      result = throw_errno(env, errno, "lgetxattr", path);
      break;
    }
    char *buf = malloc(size > 0 ? (size_t)size : 1);
    if (buf == NULL) {
      result = throw_errno(env, ENOMEM, "malloc", NULL);
      break;
    }
    ssize_t got = lgetxattr(path, name, buf, (size_t)size);
    if (got < 0) {
      int err = errno;
      free(buf);
      if (err == ERANGE && attempt < 8) continue;
      result = throw_errno(env, err, "lgetxattr", path);
      break;
    }
    napi_create_buffer_copy(env, (size_t)got, buf, NULL, &result);
    free(buf);
    break;
  }
  free(name);
  free(path);
  return result;
}

// llistxattr(path) → Buffer[]: each name's bytes (names need not be UTF-8).
static napi_value js_llistxattr(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  char *path = get_bytes(env, argv[0], "path must be a string or Buffer without NUL");
  if (path == NULL) return NULL;
  napi_value result = NULL;
  for (int attempt = 0;; attempt++) {
    ssize_t size = llistxattr(path, NULL, 0);
    if (size < 0) {
      result = throw_errno(env, errno, "llistxattr", path);
      break;
    }
    char *buf = malloc(size > 0 ? (size_t)size : 1);
    if (buf == NULL) {
      result = throw_errno(env, ENOMEM, "malloc", NULL);
      break;
    }
    ssize_t got = llistxattr(path, buf, (size_t)size);
    if (got < 0) {
      int err = errno;
      free(buf);
      if (err == ERANGE && attempt < 8) continue;
      result = throw_errno(env, err, "llistxattr", path);
      break;
    }
    napi_create_array(env, &result);
    uint32_t n = 0;
    for (ssize_t i = 0; i < got;) {
      size_t len = strnlen(buf + i, (size_t)(got - i));
      if (len > 0) {
        napi_value name;
        napi_create_buffer_copy(env, len, buf + i, NULL, &name);
        napi_set_element(env, result, n++, name);
      }
      i += (ssize_t)len + 1;
    }
    free(buf);
    break;
  }
  free(path);
  return result;
}

// lsetxattr(path, name, value: Buffer, flags: 0 | XATTR_CREATE | XATTR_REPLACE).
static napi_value js_lsetxattr(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  if (!get_args(env, info, 4, argv)) return NULL;
  bool is_buffer = false;
  napi_is_buffer(env, argv[2], &is_buffer);
  if (!is_buffer) return throw_type(env, "value must be a Buffer");
  int64_t flags;
  if (!get_int64(env, argv[3], &flags, "flags must be an integer")) return NULL;
  void *data;
  size_t len;
  napi_get_buffer_info(env, argv[2], &data, &len);
  char *path = get_bytes(env, argv[0], "path must be a string or Buffer without NUL");
  if (path == NULL) return NULL;
  char *name = get_bytes(env, argv[1], "name must be a string or Buffer without NUL");
  if (name == NULL) {
    free(path);
    return NULL;
  }
  int r = lsetxattr(path, name, len ? data : "", len, (int)flags);
  napi_value result = r == 0 ? make_undefined(env) : throw_errno(env, errno, "lsetxattr", path);
  free(name);
  free(path);
  return result;
}

static napi_value js_lremovexattr(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  char *path = get_bytes(env, argv[0], "path must be a string or Buffer without NUL");
  if (path == NULL) return NULL;
  char *name = get_bytes(env, argv[1], "name must be a string or Buffer without NUL");
  if (name == NULL) {
    free(path);
    return NULL;
  }
  int r = lremovexattr(path, name);
  napi_value result = r == 0 ? make_undefined(env) : throw_errno(env, errno, "lremovexattr", path);
  free(name);
  free(path);
  return result;
}

// mknod(path, mode, dev): mode includes the file type (S_IFCHR, S_IFBLK, ...); the umask applies.
static napi_value js_mknod(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  int64_t mode, dev;
  if (!get_int64(env, argv[1], &mode, "mode must be an integer")) return NULL;
  if (!get_int64(env, argv[2], &dev, "dev must be an integer")) return NULL;
  char *path = get_bytes(env, argv[0], "path must be a string or Buffer without NUL");
  if (path == NULL) return NULL;
  int r = mknod(path, (mode_t)mode, (dev_t)dev);
  napi_value result = r == 0 ? make_undefined(env) : throw_errno(env, errno, "mknod", path);
  free(path);
  return result;
}

static napi_value js_mkfifo(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  int64_t mode;
  if (!get_int64(env, argv[1], &mode, "mode must be an integer")) return NULL;
  char *path = get_bytes(env, argv[0], "path must be a string or Buffer without NUL");
  if (path == NULL) return NULL;
  int r = mkfifo(path, (mode_t)mode);
  napi_value result = r == 0 ? make_undefined(env) : throw_errno(env, errno, "mkfifo", path);
  free(path);
  return result;
}

// mksock(path): creates a Unix socket file by binding a socket to the path and closing it (the
// file stays). sun_path holds only 107 bytes, so a longer path is bound through
// /proc/self/fd/<dir>/<name> with the parent directory opened O_PATH, which changes no process
// state (a chdir would race with other threads).
static napi_value js_mksock(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  char *path = get_bytes(env, argv[0], "path must be a string or Buffer without NUL");
  if (path == NULL) return NULL;
  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  int dirfd = -1, err = 0;
  if (strlen(path) < sizeof addr.sun_path) {
    memcpy(addr.sun_path, path, strlen(path));
  } else {
    char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    if (slash == path) dirfd = open("/", O_PATH | O_DIRECTORY | O_CLOEXEC);
    else if (slash) {
      *slash = 0;
      dirfd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
      *slash = '/';
    } else dirfd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) err = errno;
    else if ((size_t)snprintf(addr.sun_path, sizeof addr.sun_path, "/proc/self/fd/%d/%s", dirfd, base) >= sizeof addr.sun_path)
      err = ENAMETOOLONG;
  }
  if (err == 0) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) err = errno;
    else {
      if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) err = errno;
      close(fd);
    }
  }
  if (dirfd >= 0) close(dirfd);
  napi_value result = err == 0 ? make_undefined(env) : throw_errno(env, err, "bind", path);
  free(path);
  return result;
}

// seekData/seekHole(fd, offset) → the next data/hole offset, or -1 at ENXIO (no data at or
// after offset / offset past the end). The descriptor's file position is put back, so a caller
// reading sequentially from the same descriptor is not disturbed.
static napi_value do_seek(napi_env env, napi_callback_info info, int whence, const char *syscall) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  int64_t fd, offset;
  if (!get_int64(env, argv[0], &fd, "fd must be an integer")) return NULL;
  if (!get_int64(env, argv[1], &offset, "offset must be an integer")) return NULL;
  off_t here = lseek((int)fd, 0, SEEK_CUR);
  if (here < 0) return throw_errno(env, errno, "lseek", NULL);
  off_t r = lseek((int)fd, (off_t)offset, whence);
  int err = errno;
  lseek((int)fd, here, SEEK_SET);
  if (r >= 0) return make_number(env, (double)r);
  if (err == ENXIO) return make_number(env, -1);
  return throw_errno(env, err, syscall, NULL);
}

static napi_value js_seekData(napi_env env, napi_callback_info info) {
  return do_seek(env, info, SEEK_DATA, "lseek(SEEK_DATA)");
}

static napi_value js_seekHole(napi_env env, napi_callback_info info) {
  return do_seek(env, info, SEEK_HOLE, "lseek(SEEK_HOLE)");
}

// makedev(major, minor) → dev_t as a Number, in the C library's encoding (the one
// fs.Stats.rdev reports), and its inverse.
static napi_value js_makedev(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  int64_t ma, mi;
  if (!get_int64(env, argv[0], &ma, "major must be an integer")) return NULL;
  if (!get_int64(env, argv[1], &mi, "minor must be an integer")) return NULL;
  if (ma < 0 || ma > 0xffffffffLL || mi < 0 || mi > 0xffffffffLL) return throw_type(env, "major and minor must be 32-bit");
  return make_number(env, (double)makedev((unsigned)ma, (unsigned)mi));
}

static napi_value js_splitdev(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  int64_t dev;
  if (!get_int64(env, argv[0], &dev, "dev must be an integer")) return NULL;
  napi_value result;
  napi_create_array_with_length(env, 2, &result);
  napi_set_element(env, result, 0, make_number(env, major((dev_t)dev)));
  napi_set_element(env, result, 1, make_number(env, minor((dev_t)dev)));
  return result;
}

// ---- scanDir: a directory's entries and their lstat, in one thread-pool job --------------------
// scanDir(path, callback): lists the directory (not following a symlink at `path`), sorts the
// names bytewise (as Buffer.compare does) and lstats each entry relative to the open directory,
// all on a libuv pool thread. A backup walk pays one call per directory instead of a readdir
// and one lstat round trip per entry. callback(error) when the directory cannot be opened or
// listed; else callback(null, names, stats): `names` is every name's bytes back to back, each
// followed by a NUL, and `stats` is a BigInt64Array of SCAN_FIELDS values per entry (see
// SCAN_* below, times in nanoseconds, the size of the xattr name list); an entry whose lstat failed (it vanished) has its errno in SCAN_ERRNO.

enum {
  SCAN_MODE, SCAN_UID, SCAN_GID, SCAN_NLINK, SCAN_INO, SCAN_DEV, SCAN_RDEV, SCAN_SIZE, SCAN_BLOCKS,
  SCAN_ATIME_NS, SCAN_MTIME_NS, SCAN_CTIME_NS, SCAN_XATTR_BYTES, SCAN_ERRNO, SCAN_FIELDS
};

typedef struct {
  char *name;
  size_t len;
} scan_name;

typedef struct {
  napi_async_work work;
  napi_ref callback;
  char *path;
  int err;
  const char *syscall;
  scan_name *names;
  size_t count;
  int64_t *stats;
} scan_job;

// Nanoseconds since 1970 as one int64 (years 1678 to 2262); beyond that, saturated.
static int64_t time_ns(struct timespec t) {
  __int128 ns = (__int128)t.tv_sec * 1000000000 + t.tv_nsec;
  if (ns > INT64_MAX) return INT64_MAX;
  if (ns < INT64_MIN) return INT64_MIN;
  return (int64_t)ns;
}

static int cmp_names(const void *a, const void *b) {
  const scan_name *x = a, *y = b;
  size_t n = x->len < y->len ? x->len : y->len;
  int c = memcmp(x->name, y->name, n);
  if (c != 0) return c;
  return x->len < y->len ? -1 : x->len > y->len;
}

static void scan_execute(napi_env env, void *data) {
  scan_job *job = data;
  int fd = open(job->path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    job->err = errno;
    job->syscall = "open";
    return;
  }
  DIR *dir = fdopendir(fd);
  if (dir == NULL) {
    job->err = errno;
    job->syscall = "fdopendir";
    close(fd);
    return;
  }
  size_t cap = 64;
  job->names = malloc(cap * sizeof *job->names);
  if (job->names == NULL) {
    job->err = ENOMEM;
    job->syscall = "malloc";
    closedir(dir);
    return;
  }
  for (;;) {
    errno = 0;
    struct dirent *d = readdir(dir);
    if (d == NULL) {
      if (errno != 0) {
        job->err = errno;
        job->syscall = "readdir";
      }
      break;
    }
    if (d->d_name[0] == '.' && (d->d_name[1] == 0 || (d->d_name[1] == '.' && d->d_name[2] == 0))) continue;
    if (job->count == cap) {
      scan_name *more = realloc(job->names, 2 * cap * sizeof *job->names);
      if (more == NULL) {
        job->err = ENOMEM;
        job->syscall = "malloc";
        break;
      }
      job->names = more;
      cap *= 2;
    }
    size_t len = strlen(d->d_name);
    char *copy = malloc(len + 1);
    if (copy == NULL) {
      job->err = ENOMEM;
      job->syscall = "malloc";
      break;
    }
    memcpy(copy, d->d_name, len + 1);
    job->names[job->count].name = copy;
    job->names[job->count].len = len;
    job->count++;
  }
  if (job->err == 0) {
    qsort(job->names, job->count, sizeof *job->names, cmp_names);
    job->stats = calloc(job->count ? job->count : 1, SCAN_FIELDS * sizeof(int64_t));
    if (job->stats == NULL) {
      job->err = ENOMEM;
      job->syscall = "malloc";
    } else {
      int dfd = dirfd(dir);
      size_t plen = strlen(job->path);
      char *full = malloc(plen + 2 + 256);
      if (full != NULL) {
        memcpy(full, job->path, plen);
        full[plen] = '/';
      }
      for (size_t i = 0; i < job->count; i++) {
        int64_t *o = job->stats + i * SCAN_FIELDS;
        struct stat st;
        if (fstatat(dfd, job->names[i].name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
          o[SCAN_ERRNO] = errno;
          continue;
        }
        o[SCAN_MODE] = st.st_mode;
        o[SCAN_UID] = st.st_uid;
        o[SCAN_GID] = st.st_gid;
        o[SCAN_NLINK] = (int64_t)st.st_nlink;
        o[SCAN_INO] = (int64_t)st.st_ino;
        o[SCAN_DEV] = (int64_t)st.st_dev;
        o[SCAN_RDEV] = (int64_t)st.st_rdev;
        o[SCAN_SIZE] = st.st_size;
        o[SCAN_BLOCKS] = st.st_blocks;
        o[SCAN_ATIME_NS] = time_ns(st.st_atim);
        o[SCAN_MTIME_NS] = time_ns(st.st_mtim);
        o[SCAN_CTIME_NS] = time_ns(st.st_ctim);
        // How many bytes the entry's xattr names take (0: none, the common case), so that the
        // caller lists them only where there are some; -1 when that cannot be told here.
        o[SCAN_XATTR_BYTES] = -1;
        if (full != NULL && job->names[i].len < 256) {
          memcpy(full + plen + 1, job->names[i].name, job->names[i].len + 1);
          ssize_t n = llistxattr(full, NULL, 0);
          if (n >= 0) o[SCAN_XATTR_BYTES] = n;
          else if (errno == ENOTSUP) o[SCAN_XATTR_BYTES] = 0;
        }
      }
      free(full);
    }
  }
  closedir(dir);
}

static void scan_free(scan_job *job) {
  for (size_t i = 0; i < job->count; i++) free(job->names[i].name);
  free(job->names);
  free(job->stats);
  free(job->path);
  free(job);
}

static void scan_complete(napi_env env, napi_status status, void *data) {
  scan_job *job = data;
  napi_value callback, global, argv[3], result;
  napi_get_reference_value(env, job->callback, &callback);
  napi_get_global(env, &global);
  napi_get_null(env, &argv[0]);
  size_t argc = 1;
  if (status != napi_ok) {
    argv[0] = make_errno_error(env, ECANCELED, "scandir", job->path);
  } else if (job->err != 0) {
    argv[0] = make_errno_error(env, job->err, job->syscall, job->path);
  } else {
    size_t total = 0;
    for (size_t i = 0; i < job->count; i++) total += job->names[i].len + 1;
    void *bytes;
    napi_create_buffer(env, total, &bytes, &argv[1]);
    char *at = bytes;
    for (size_t i = 0; i < job->count; i++) {
      memcpy(at, job->names[i].name, job->names[i].len + 1);
      at += job->names[i].len + 1;
    }
    void *stats;
    napi_value ab;
    size_t n = job->count * SCAN_FIELDS;
    napi_create_arraybuffer(env, n * sizeof(int64_t), &stats, &ab);
    if (n) memcpy(stats, job->stats, n * sizeof(int64_t));
    napi_create_typedarray(env, napi_bigint64_array, n, ab, 0, &argv[2]);
    argc = 3;
  }
  if (argv[0] == NULL) napi_get_null(env, &argv[0]);
  napi_call_function(env, global, callback, argc, argv, &result);
  napi_delete_reference(env, job->callback);
  napi_delete_async_work(env, job->work);
  scan_free(job);
}

static napi_value js_scanDir(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  napi_valuetype t;
  napi_typeof(env, argv[1], &t);
  if (t != napi_function) return throw_type(env, "callback must be a function");
  char *path = get_bytes(env, argv[0], "path must be a string or Buffer without NUL bytes");
  if (path == NULL) return NULL;
  scan_job *job = calloc(1, sizeof *job);
  if (job == NULL) {
    free(path);
    return throw_errno(env, ENOMEM, "malloc", NULL);
  }
  job->path = path;
  napi_value name;
  napi_create_string_utf8(env, "coffer:scanDir", NAPI_AUTO_LENGTH, &name);
  napi_create_reference(env, argv[1], 1, &job->callback);
  if (napi_create_async_work(env, NULL, name, scan_execute, scan_complete, job, &job->work) != napi_ok ||
      napi_queue_async_work(env, job->work) != napi_ok) {
    napi_delete_reference(env, job->callback);
    scan_free(job);
    return throw_errno(env, ENOMEM, "napi_queue_async_work", NULL);
  }
  return make_undefined(env);
}

// willNeed(fd): posix_fadvise(POSIX_FADV_WILLNEED) on the whole file: the kernel starts reading
// it into the page cache and returns. A backup worker does this for every file of a batch before
// reading them one by one, so that a cold disk sees many requests at once instead of one: reading
// the benchmark data set cold took 16.9 s one file at a time and 5.0 s eight at a time. Advice
// only: failures are ignored.
static napi_value js_willNeed(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  int32_t fd;
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok) return throw_type(env, "fd must be a number");
  (void)posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED);
  return make_undefined(env);
}

// ---- zstd with one reused context per thread ------------------------------------------------
// node:zlib's zstdCompressSync/zstdDecompressSync build and free a zstd context on every call,
// which cost a fifth of the compression time of 1 MiB blobs in profiles. Here each JS thread
// (main or worker: one napi_env each) keeps one compression and one decompression context,
// freed with the thread. The zstd library is the one Node.js itself links and exports; the
// functions are declared weak (zstd's stable API, as in zstd.h) so that the addon still loads
// where a Node.js build does not export them: zstdAvailable() is then false and compress.ts
// uses node:zlib.

typedef struct ZSTD_CCtx_s ZSTD_CCtx;
typedef struct ZSTD_DCtx_s ZSTD_DCtx;
extern ZSTD_CCtx *ZSTD_createCCtx(void) __attribute__((weak));
extern size_t ZSTD_freeCCtx(ZSTD_CCtx *cctx) __attribute__((weak));
extern size_t ZSTD_CCtx_setParameter(ZSTD_CCtx *cctx, int param, int value) __attribute__((weak));
extern size_t ZSTD_compress2(ZSTD_CCtx *cctx, void *dst, size_t dstCapacity, const void *src, size_t srcSize) __attribute__((weak));
extern unsigned ZSTD_isError(size_t code) __attribute__((weak));
extern const char *ZSTD_getErrorName(size_t code) __attribute__((weak));
extern ZSTD_DCtx *ZSTD_createDCtx(void) __attribute__((weak));
extern size_t ZSTD_freeDCtx(ZSTD_DCtx *dctx) __attribute__((weak));
extern size_t ZSTD_decompressDCtx(ZSTD_DCtx *dctx, void *dst, size_t dstCapacity, const void *src, size_t srcSize) __attribute__((weak));
enum { ZSTD_C_COMPRESSION_LEVEL = 100, ZSTD_C_CHECKSUM_FLAG = 201 };

static int zstd_present(void) {
  return ZSTD_createCCtx && ZSTD_freeCCtx && ZSTD_CCtx_setParameter && ZSTD_compress2 &&
         ZSTD_isError && ZSTD_getErrorName && ZSTD_createDCtx && ZSTD_freeDCtx && ZSTD_decompressDCtx;
}

typedef struct {
  ZSTD_CCtx *cctx;
  ZSTD_DCtx *dctx;
  int level;            // the level set on cctx (INT32_MIN: none yet)
  unsigned char *out;   // compression output, reused; `cap` bytes
  size_t cap;
} zstd_state;

static void zstd_state_free(napi_env env, void *data, void *hint) {
  zstd_state *st = data;
  if (st->cctx) ZSTD_freeCCtx(st->cctx);
  if (st->dctx) ZSTD_freeDCtx(st->dctx);
  free(st->out);
  free(st);
}

// This thread's state, created on first use; NULL with an exception pending on failure.
static zstd_state *zstd_get(napi_env env) {
  void *data = NULL;
  if (napi_get_instance_data(env, &data) == napi_ok && data != NULL) return data;
  zstd_state *st = calloc(1, sizeof *st);
  if (st == NULL) {
    throw_errno(env, ENOMEM, "malloc", NULL);
    return NULL;
  }
  st->level = INT32_MIN;
  if (napi_set_instance_data(env, st, zstd_state_free, NULL) != napi_ok) {
    free(st);
    napi_throw_error(env, "EINVAL", "zstd: cannot keep per-thread state");
    return NULL;
  }
  return st;
}

static napi_value zstd_error(napi_env env, const char *what, size_t code) {
  char msg[160];
  snprintf(msg, sizeof msg, "zstd %s: %s", what, ZSTD_getErrorName(code));
  napi_throw_error(env, "ZSTD_ERROR", msg);
  return NULL;
}

// A Uint8Array argument's bytes (any backing store, shared or not); 0 with a TypeError pending.
static int get_u8(napi_env env, napi_value v, void **data, size_t *len) {
  bool is_ta = false;
  napi_is_typedarray(env, v, &is_ta);
  napi_typedarray_type tt = napi_int8_array;
  napi_value ab;
  size_t off;
  if (is_ta) napi_get_typedarray_info(env, v, &tt, len, data, &ab, &off);
  if (tt != napi_uint8_array) {
    throw_type(env, "data must be a Uint8Array");
    return 0;
  }
  return 1;
}

static napi_value js_zstdAvailable(napi_env env, napi_callback_info info) {
  napi_value v;
  napi_get_boolean(env, zstd_present(), &v);
  return v;
}

// zstdCompress(data, level): one zstd frame (content size recorded, no checksum) in a new
// Buffer, or null when it would not be smaller than `data`.
static napi_value js_zstdCompress(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  if (!zstd_present()) return throw_errno(env, ENOSYS, "zstdCompress", NULL);
  void *src;
  size_t len;
  if (!get_u8(env, argv[0], &src, &len)) return NULL;
  int32_t level;
  if (napi_get_value_int32(env, argv[1], &level) != napi_ok) return throw_type(env, "level must be a number");
  zstd_state *st = zstd_get(env);
  if (st == NULL) return NULL;
  if (st->cctx == NULL) {
    st->cctx = ZSTD_createCCtx();
    if (st->cctx == NULL) return throw_errno(env, ENOMEM, "ZSTD_createCCtx", NULL);
    size_t r = ZSTD_CCtx_setParameter(st->cctx, ZSTD_C_CHECKSUM_FLAG, 0);
    if (ZSTD_isError(r)) return zstd_error(env, "set checksum flag", r);
  }
  if (st->level != level) {
    size_t r = ZSTD_CCtx_setParameter(st->cctx, ZSTD_C_COMPRESSION_LEVEL, level);
    if (ZSTD_isError(r)) return zstd_error(env, "set level", r);
    st->level = level;
  }
  napi_value out;
  if (len == 0) {
    napi_get_null(env, &out);
    return out;
  }
  // Output that is not smaller than the input is not wanted: a len-1 byte buffer is enough,
  // and zstd stops with dstSize_tooSmall as soon as it would not fit.
  size_t cap = len - 1;
  if (cap > st->cap) {
    unsigned char *p = realloc(st->out, cap);
    if (p == NULL) return throw_errno(env, ENOMEM, "malloc", NULL);
    st->out = p;
    st->cap = cap;
  }
  size_t n = ZSTD_compress2(st->cctx, st->out, cap, src, len);
  if (ZSTD_isError(n)) {
    // Too small for the output: the data does not shrink. Anything else is a real error.
    if (strstr(ZSTD_getErrorName(n), "too small") != NULL) {
      napi_get_null(env, &out);
      return out;
    }
    return zstd_error(env, "compress", n);
  }
  void *dst;
  if (napi_create_buffer_copy(env, n, st->out, &dst, &out) != napi_ok) return NULL;
  // Keep at most 16 MiB of output buffer between calls (blobs are a few MiB at most).
  if (st->cap > (16u << 20)) {
    free(st->out);
    st->out = NULL;
    st->cap = 0;
  }
  return out;
}

// zstdDecompress(data, rawLength): the bytes of the zstd frame(s) in `data`, which must come to
// exactly rawLength bytes; throws ZSTD_ERROR (bad data, or more) or ZSTD_LENGTH (fewer).
static napi_value js_zstdDecompress(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  if (!zstd_present()) return throw_errno(env, ENOSYS, "zstdDecompress", NULL);
  void *src;
  size_t len;
  if (!get_u8(env, argv[0], &src, &len)) return NULL;
  int64_t want;
  if (!get_int64(env, argv[1], &want, "rawLength must be an integer")) return NULL;
  if (want < 0 || want > 0xffffffffLL) return throw_type(env, "rawLength must be 0..2^32-1");
  if (len == 0) {
    napi_throw_error(env, "ZSTD_ERROR", "zstd decompress: no frame (empty input)");
    return NULL;
  }
  zstd_state *st = zstd_get(env);
  if (st == NULL) return NULL;
  if (st->dctx == NULL) {
    st->dctx = ZSTD_createDCtx();
    if (st->dctx == NULL) return throw_errno(env, ENOMEM, "ZSTD_createDCtx", NULL);
  }
  napi_value out;
  void *dst;
  if (napi_create_buffer(env, (size_t)want, &dst, &out) != napi_ok) return NULL;
  size_t n = ZSTD_decompressDCtx(st->dctx, dst, (size_t)want, src, len);
  if (ZSTD_isError(n)) return zstd_error(env, "decompress", n);
  if (n != (size_t)want) {
    char msg[96];
    snprintf(msg, sizeof msg, "got %zu bytes, expected %lld", n, (long long)want);
    napi_throw_error(env, "ZSTD_LENGTH", msg);
    return NULL;
  }
  return out;
}

// zstdDecompressInto(data, out): decompresses one zstd frame into `out` (any Uint8Array, shared
// memory too), which it must fill exactly; throws ZSTD_ERROR or ZSTD_LENGTH otherwise. The
// restore decodes into reused buffers with it (src/engine/decode-into.ts): a new buffer per blob,
// as zstdDecompress() returns, cost a page fault per 4 KiB written.
extern size_t ZSTD_findFrameCompressedSize(const void *src, size_t srcSize) __attribute__((weak));

static napi_value js_zstdDecompressInto(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  if (!zstd_present()) return throw_errno(env, ENOSYS, "zstdDecompressInto", NULL);
  void *src, *dst;
  size_t len, want;
  if (!get_u8(env, argv[0], &src, &len)) return NULL;
  if (!get_u8(env, argv[1], &dst, &want)) return NULL;
  if (len == 0) {
    napi_throw_error(env, "ZSTD_ERROR", "zstd decompress: no frame (empty input)");
    return NULL;
  }
  // Exactly one frame: bytes after the first are not data of this blob.
  if (ZSTD_findFrameCompressedSize) {
    size_t frame = ZSTD_findFrameCompressedSize(src, len);
    if (ZSTD_isError(frame)) return zstd_error(env, "decompress", frame);
    if (frame != len) {
      napi_throw_error(env, "ZSTD_ERROR", "zstd decompress: bytes after the frame");
      return NULL;
    }
  }
  zstd_state *st = zstd_get(env);
  if (st == NULL) return NULL;
  if (st->dctx == NULL) {
    st->dctx = ZSTD_createDCtx();
    if (st->dctx == NULL) return throw_errno(env, ENOMEM, "ZSTD_createDCtx", NULL);
  }
  size_t n = ZSTD_decompressDCtx(st->dctx, dst, want, src, len);
  if (ZSTD_isError(n)) return zstd_error(env, "decompress", n);
  if (n != want) {
    char msg[96];
    snprintf(msg, sizeof msg, "got %zu bytes, expected %zu", n, want);
    napi_throw_error(env, "ZSTD_LENGTH", msg);
    return NULL;
  }
  return make_undefined(env);
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
    {"utimensat", NULL, js_utimensat, NULL, NULL, NULL, napi_enumerable, NULL},
    {"lgetxattr", NULL, js_lgetxattr, NULL, NULL, NULL, napi_enumerable, NULL},
    {"llistxattr", NULL, js_llistxattr, NULL, NULL, NULL, napi_enumerable, NULL},
    {"lsetxattr", NULL, js_lsetxattr, NULL, NULL, NULL, napi_enumerable, NULL},
    {"lremovexattr", NULL, js_lremovexattr, NULL, NULL, NULL, napi_enumerable, NULL},
    {"mknod", NULL, js_mknod, NULL, NULL, NULL, napi_enumerable, NULL},
    {"mkfifo", NULL, js_mkfifo, NULL, NULL, NULL, napi_enumerable, NULL},
    {"mksock", NULL, js_mksock, NULL, NULL, NULL, napi_enumerable, NULL},
    {"seekData", NULL, js_seekData, NULL, NULL, NULL, napi_enumerable, NULL},
    {"seekHole", NULL, js_seekHole, NULL, NULL, NULL, napi_enumerable, NULL},
    {"makedev", NULL, js_makedev, NULL, NULL, NULL, napi_enumerable, NULL},
    {"splitdev", NULL, js_splitdev, NULL, NULL, NULL, napi_enumerable, NULL},
    {"scanDir", NULL, js_scanDir, NULL, NULL, NULL, napi_enumerable, NULL},
    {"willNeed", NULL, js_willNeed, NULL, NULL, NULL, napi_enumerable, NULL},
    {"zstdAvailable", NULL, js_zstdAvailable, NULL, NULL, NULL, napi_enumerable, NULL},
    {"zstdCompress", NULL, js_zstdCompress, NULL, NULL, NULL, napi_enumerable, NULL},
    {"zstdDecompress", NULL, js_zstdDecompress, NULL, NULL, NULL, napi_enumerable, NULL},
    {"zstdDecompressInto", NULL, js_zstdDecompressInto, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) return NULL;
  if (!coffer_codec_init(env, exports)) return NULL;
  napi_value flag;
  napi_create_int32(env, XATTR_CREATE, &flag);
  napi_set_named_property(env, exports, "XATTR_CREATE", flag);
  napi_create_int32(env, XATTR_REPLACE, &flag);
  napi_set_named_property(env, exports, "XATTR_REPLACE", flag);
  return exports;
}
