// coffer_native: the few Linux file-system calls that Node.js does not expose and that a backup
// needs for full fidelity: nanosecond-exact times (also on symlinks), extended attributes (POSIX
// ACLs are the xattrs system.posix_acl_*), device nodes, FIFOs, Unix socket files and the
// SEEK_DATA/SEEK_HOLE walk of sparse files. Plain C against node_api.h only (ABI-stable N-API,
// no C++ and no npm dependencies), so `npm ci` builds it with the machine's compiler and
// Node's headers and the result loads on any later Node.js. It is optional: without it Coffer
// runs on node:fs alone, with less fidelity (src/sources/native.ts says what is lost).
//
// Every function is one synchronous system call on a path (never following a final symlink
// where that matters) or a file descriptor. Failures throw an Error shaped like Node's own:
// message "ENOENT: No such file or directory, lsetxattr '/x'", and .code, .errno (negative),
// .syscall, .path and .description (strerror), so that src/sources/native.ts can map errno
// values the way node:fs errors are mapped. Paths and xattr names may be strings (UTF-8) or
// Buffers (any bytes but NUL).
//
// Defensive by rule, as this code runs inside the agent on every protected host: every N-API
// call's status is checked (CHECK below: a failure throws and the function returns NULL), and
// every number from JavaScript is range-checked before it becomes a C type (get_int64_in: a
// RangeError, code ERR_OUT_OF_RANGE, names the argument and its range). The tests run once per
// CI run against a build with AddressSanitizer (scripts/build-native-asan.ts).

#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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

// ---- N-API status checks -----------------------------------------------------------------------

// Checks the status of a napi_throw_*: it fails only when an exception is pending already (which
// then propagates) or the engine is out of memory; returning to JavaScript with neither a value
// nor an exception would hide the failure, so that last case stops the process.
static void thrown(napi_env env, napi_status s) {
  bool pending = false;
  if (s == napi_ok || (napi_is_exception_pending(env, &pending) == napi_ok && pending)) return;
  napi_fatal_error("coffer_native", NAPI_AUTO_LENGTH, "cannot throw an exception", NAPI_AUTO_LENGTH);
}

// Throws an Error (code NAPI_ERROR) for a failed N-API call, unless an exception is pending
// already (the call ran JavaScript that threw, or an earlier step threw). Must run right after
// the failed call: N-API keeps the last error's details only until the next call.
static void throw_napi_failure(napi_env env, const char *call) {
  const napi_extended_error_info *info = NULL;
  char msg[256];
  const char *said = napi_get_last_error_info(env, &info) == napi_ok && info != NULL && info->error_message != NULL ? info->error_message : "unknown error";
  snprintf(msg, sizeof msg, "coffer_native: %s failed: %s", call, said);
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) return;
  thrown(env, napi_throw_error(env, "NAPI_ERROR", msg));
}

// Evaluates an N-API call; on failure throws and returns NULL (CHECK) or `ret` (CHECK_OR) from
// the calling function.
#define CHECK_OR(env, call, ret)                 \
  do {                                           \
    if ((call) != napi_ok) {                     \
      throw_napi_failure((env), #call);          \
      return ret;                                \
    }                                            \
  } while (0)
#define CHECK(env, call) CHECK_OR(env, call, NULL)

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

// Sets a string property; 0 with an exception pending on failure.
static int set_string(napi_env env, napi_value obj, const char *key, const char *value) {
  napi_value v;
  CHECK_OR(env, napi_create_string_utf8(env, value, NAPI_AUTO_LENGTH, &v), 0);
  CHECK_OR(env, napi_set_named_property(env, obj, key, v), 0);
  return 1;
}

// An errno Error shaped like node:fs's; NULL (with an exception pending) on failure.
static napi_value make_errno_error(napi_env env, int err, const char *syscall, const char *path) {
  char codebuf[24];
  const char *code = errno_name(err);
  if (code == NULL) {
    snprintf(codebuf, sizeof codebuf, "E%d", err);
    code = codebuf;
  }
  // ENOTSUP and EOPNOTSUPP are one value on Linux; report the name node:fs uses for it.
  if (err == EOPNOTSUPP) code = "ENOTSUP";
  const char *said = strerror(err);
  size_t len = strlen(code) + strlen(said) + strlen(syscall) + (path ? strlen(path) : 0) + 16;
  char *msg = malloc(len);
  if (msg == NULL) {
    thrown(env, napi_throw_error(env, "ENOMEM", "out of memory"));
    return NULL;
  }
  if (path) snprintf(msg, len, "%s: %s, %s '%s'", code, said, syscall, path);
  else snprintf(msg, len, "%s: %s, %s", code, said, syscall);
  napi_value jcode, jmsg, error, v;
  if (napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &jcode) != napi_ok ||
      napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &jmsg) != napi_ok) {
    throw_napi_failure(env, "napi_create_string_utf8");
    free(msg);
    return NULL;
  }
  free(msg);
  CHECK(env, napi_create_error(env, jcode, jmsg, &error));
  CHECK(env, napi_create_int32(env, -err, &v));
  CHECK(env, napi_set_named_property(env, error, "errno", v));
  if (!set_string(env, error, "description", said)) return NULL;
  if (!set_string(env, error, "syscall", syscall)) return NULL;
  if (path && !set_string(env, error, "path", path)) return NULL;
  return error;
}

// Throws an errno Error; returns NULL so callers can `return throw_errno(...)`.
static napi_value throw_errno(napi_env env, int err, const char *syscall, const char *path) {
  napi_value error = make_errno_error(env, err, syscall, path);
  if (error != NULL) thrown(env, napi_throw(env, error));
  return NULL;
}

static napi_value throw_type(napi_env env, const char *msg) {
  thrown(env, napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg));
  return NULL;
}

// Reads argc arguments; throws unless at least `want` were given.
static int get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv) {
  size_t argc = want;
  CHECK_OR(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL), 0);
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
  CHECK(env, napi_typeof(env, v, &t));
  if (t == napi_string) {
    size_t len;
    CHECK(env, napi_get_value_string_utf8(env, v, NULL, 0, &len));
    if (len == SIZE_MAX) return (char *)throw_errno(env, ENOMEM, "malloc", NULL);
    char *s = malloc(len + 1);
    if (s == NULL) return (char *)throw_errno(env, ENOMEM, "malloc", NULL);
    size_t got;
    if (napi_get_value_string_utf8(env, v, s, len + 1, &got) != napi_ok) {
      free(s);
      throw_napi_failure(env, "napi_get_value_string_utf8");
      return NULL;
    }
    if (got != len || strlen(s) != len) {
      free(s);
      throw_type(env, what);
      return NULL;
    }
    return s;
  }
  bool is_buffer = false;
  CHECK(env, napi_is_buffer(env, v, &is_buffer));
  if (is_buffer) {
    void *data;
    size_t len;
    CHECK(env, napi_get_buffer_info(env, v, &data, &len));
    if (len == SIZE_MAX) return (char *)throw_errno(env, ENOMEM, "malloc", NULL);
    if (len > 0 && memchr(data, 0, len) != NULL) {
      throw_type(env, what);
      return NULL;
    }
    char *s = malloc(len + 1);
    if (s == NULL) return (char *)throw_errno(env, ENOMEM, "malloc", NULL);
    if (len > 0) memcpy(s, data, len);
    s[len] = 0;
    return s;
  }
  throw_type(env, what);
  return NULL;
}

// An integer argument given as a Number (must be an exact integer) or a BigInt, in int64_t's
// range; 0 with a TypeError pending otherwise.
static int get_int64(napi_env env, napi_value v, int64_t *out, const char *name) {
  napi_valuetype t;
  CHECK_OR(env, napi_typeof(env, v, &t), 0);
  if (t == napi_bigint) {
    bool lossless;
    CHECK_OR(env, napi_get_value_bigint_int64(env, v, out, &lossless), 0);
    if (lossless) return 1;
  } else if (t == napi_number) {
    double d;
    CHECK_OR(env, napi_get_value_double(env, v, &d), 0);
    // Range first (NaN fails it too): casting a double outside int64_t's range is undefined.
    if (d >= -9223372036854775808.0 && d < 9223372036854775808.0 && d == (double)(int64_t)d) {
      *out = (int64_t)d;
      return 1;
    }
  }
  char msg[128];
  snprintf(msg, sizeof msg, "%s must be an integer (a Number or a BigInt in the 64-bit range)", name);
  throw_type(env, msg);
  return 0;
}

// An integer argument in [min, max], the range of the C value it becomes; a RangeError (code
// ERR_OUT_OF_RANGE) that names the argument and the range when it is outside.
static int get_int64_in(napi_env env, napi_value v, int64_t *out, int64_t min, int64_t max, const char *name) {
  if (!get_int64(env, v, out, name)) return 0;
  if (*out >= min && *out <= max) return 1;
  char msg[160];
  snprintf(msg, sizeof msg, "%s must be in %lld..%lld, got %lld", name, (long long)min, (long long)max, (long long)*out);
  thrown(env, napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg));
  return 0;
}

// A boolean argument (no coercion: a wrong type must not silently mean false).
static int get_bool(napi_env env, napi_value v, bool *out, const char *name) {
  napi_valuetype t;
  CHECK_OR(env, napi_typeof(env, v, &t), 0);
  if (t != napi_boolean) {
    char msg[96];
    snprintf(msg, sizeof msg, "%s must be a boolean", name);
    throw_type(env, msg);
    return 0;
  }
  CHECK_OR(env, napi_get_value_bool(env, v, out), 0);
  return 1;
}

static napi_value make_number(napi_env env, double d) {
  napi_value v;
  CHECK(env, napi_create_double(env, d, &v));
  return v;
}

static napi_value make_undefined(napi_env env) {
  napi_value v;
  CHECK(env, napi_get_undefined(env, &v));
  return v;
}

// The range of time_t (64 bits on every Linux that Node.js 24 runs on; 32 on old 32-bit ABIs).
#define TIME_T_MIN (sizeof(time_t) >= 8 ? INT64_MIN : (int64_t)INT32_MIN)
#define TIME_T_MAX (sizeof(time_t) >= 8 ? INT64_MAX : (int64_t)INT32_MAX)

// utimensat(path, atimeSec, atimeNsec, mtimeSec, mtimeNsec, nofollow): seconds as Number or
// BigInt (times before 1970 are negative seconds with a non-negative nanosecond part).
static napi_value js_utimensat(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  if (!get_args(env, info, 6, argv)) return NULL;
  int64_t as, an, ms, mn;
  bool nofollow = false;
  if (!get_int64_in(env, argv[1], &as, TIME_T_MIN, TIME_T_MAX, "atimeSec")) return NULL;
  if (!get_int64_in(env, argv[2], &an, 0, 999999999, "atimeNsec")) return NULL;
  if (!get_int64_in(env, argv[3], &ms, TIME_T_MIN, TIME_T_MAX, "mtimeSec")) return NULL;
  if (!get_int64_in(env, argv[4], &mn, 0, 999999999, "mtimeNsec")) return NULL;
  if (!get_bool(env, argv[5], &nofollow, "nofollow")) return NULL;
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
    if (napi_create_buffer_copy(env, (size_t)got, buf, NULL, &result) != napi_ok) {
      throw_napi_failure(env, "napi_create_buffer_copy");
      result = NULL;
    }
    free(buf);
    break;
  }
  free(name);
  free(path);
  return result;
}

// The names in an llistxattr list of `got` bytes as an array of Buffers; NULL after throwing.
static napi_value xattr_names(napi_env env, const char *buf, ssize_t got) {
  napi_value result;
  CHECK(env, napi_create_array(env, &result));
  uint32_t n = 0;
  for (ssize_t i = 0; i < got;) {
    size_t len = strnlen(buf + i, (size_t)(got - i));
    if (len > 0) {
      napi_value name;
      CHECK(env, napi_create_buffer_copy(env, len, buf + i, NULL, &name));
      CHECK(env, napi_set_element(env, result, n++, name));
    }
    i += (ssize_t)len + 1;
  }
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
    result = xattr_names(env, buf, got);
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
  CHECK(env, napi_is_buffer(env, argv[2], &is_buffer));
  if (!is_buffer) return throw_type(env, "value must be a Buffer");
  int64_t flags;
  if (!get_int64_in(env, argv[3], &flags, 0, XATTR_CREATE | XATTR_REPLACE, "flags")) return NULL;
  void *data;
  size_t len;
  CHECK(env, napi_get_buffer_info(env, argv[2], &data, &len));
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

// A mode with the file type bits (S_IFMT) and permissions: what mknod takes.
#define MODE_MAX ((int64_t)(S_IFMT | 07777))

// mknod(path, mode, dev): mode includes the file type (S_IFCHR, S_IFBLK, ...); the umask applies.
static napi_value js_mknod(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  if (!get_args(env, info, 3, argv)) return NULL;
  int64_t mode, dev;
  if (!get_int64_in(env, argv[1], &mode, 0, MODE_MAX, "mode")) return NULL;
  // dev_t is unsigned 64-bit; Linux's device numbers use 32 of them (12 major + 20 minor bits).
  if (!get_int64_in(env, argv[2], &dev, 0, INT64_MAX, "dev")) return NULL;
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
  if (!get_int64_in(env, argv[1], &mode, 0, 07777, "mode")) return NULL;
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
  if (!get_int64_in(env, argv[0], &fd, 0, INT_MAX, "fd")) return NULL;
  if (!get_int64_in(env, argv[1], &offset, 0, sizeof(off_t) >= 8 ? INT64_MAX : (int64_t)INT32_MAX, "offset")) return NULL;
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
  if (!get_int64_in(env, argv[0], &ma, 0, UINT32_MAX, "major")) return NULL;
  if (!get_int64_in(env, argv[1], &mi, 0, UINT32_MAX, "minor")) return NULL;
  dev_t dev = makedev((unsigned)ma, (unsigned)mi);
  // A Number holds integers exactly up to 2^53; Linux's own numbers use 32 bits.
  if (dev > (dev_t)9007199254740991ULL) {
    thrown(env, napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "major and minor give a device number beyond 2^53, which a Number cannot hold"));
    return NULL;
  }
  return make_number(env, (double)dev);
}

static napi_value js_splitdev(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  int64_t dev;
  if (!get_int64_in(env, argv[0], &dev, 0, INT64_MAX, "dev")) return NULL;
  napi_value result, ma, mi;
  if ((ma = make_number(env, major((dev_t)dev))) == NULL || (mi = make_number(env, minor((dev_t)dev))) == NULL) return NULL;
  CHECK(env, napi_create_array_with_length(env, 2, &result));
  CHECK(env, napi_set_element(env, result, 0, ma));
  CHECK(env, napi_set_element(env, result, 1, mi));
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
      scan_name *more = cap <= SIZE_MAX / 2 / sizeof *job->names ? realloc(job->names, 2 * cap * sizeof *job->names) : NULL;
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

// The arguments for a successful scan's callback: the names back to back and the stats array.
// 0 with an exception pending on failure.
static int scan_results(napi_env env, scan_job *job, napi_value *names, napi_value *stats) {
  size_t total = 0;
  for (size_t i = 0; i < job->count; i++) total += job->names[i].len + 1;
  void *bytes;
  CHECK_OR(env, napi_create_buffer(env, total, &bytes, names), 0);
  char *at = bytes;
  for (size_t i = 0; i < job->count; i++) {
    memcpy(at, job->names[i].name, job->names[i].len + 1);
    at += job->names[i].len + 1;
  }
  void *data;
  napi_value ab;
  size_t n = job->count * SCAN_FIELDS;
  CHECK_OR(env, napi_create_arraybuffer(env, n * sizeof(int64_t), &data, &ab), 0);
  if (n) memcpy(data, job->stats, n * sizeof(int64_t));
  CHECK_OR(env, napi_create_typedarray(env, napi_bigint64_array, n, ab, 0, stats), 0);
  return 1;
}

// Calls the callback with (error) or (null, names, stats); returns with an exception pending
// when that fails (or the callback threw), which Node reports as uncaught.
static void scan_deliver(napi_env env, napi_status status, scan_job *job) {
  napi_value callback, global, argv[3], result;
  size_t argc = 1;
  if (napi_get_reference_value(env, job->callback, &callback) != napi_ok) {
    throw_napi_failure(env, "napi_get_reference_value");
    return;
  }
  if (napi_get_global(env, &global) != napi_ok) {
    throw_napi_failure(env, "napi_get_global");
    return;
  }
  if (status != napi_ok) {
    if ((argv[0] = make_errno_error(env, ECANCELED, "scandir", job->path)) == NULL) return;
  } else if (job->err != 0) {
    if ((argv[0] = make_errno_error(env, job->err, job->syscall, job->path)) == NULL) return;
  } else {
    if (napi_get_null(env, &argv[0]) != napi_ok) {
      throw_napi_failure(env, "napi_get_null");
      return;
    }
    if (!scan_results(env, job, &argv[1], &argv[2])) return;
    argc = 3;
  }
  if (napi_call_function(env, global, callback, argc, argv, &result) != napi_ok) throw_napi_failure(env, "napi_call_function");
}

static void scan_complete(napi_env env, napi_status status, void *data) {
  scan_job *job = data;
  scan_deliver(env, status, job);
  napi_status s = napi_delete_reference(env, job->callback);
  if (s != napi_ok) throw_napi_failure(env, "napi_delete_reference");
  s = napi_delete_async_work(env, job->work);
  if (s != napi_ok) throw_napi_failure(env, "napi_delete_async_work");
  scan_free(job);
}

static napi_value js_scanDir(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  napi_valuetype t;
  CHECK(env, napi_typeof(env, argv[1], &t));
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
  if (napi_create_string_utf8(env, "coffer:scanDir", NAPI_AUTO_LENGTH, &name) != napi_ok) {
    throw_napi_failure(env, "napi_create_string_utf8");
    scan_free(job);
    return NULL;
  }
  if (napi_create_reference(env, argv[1], 1, &job->callback) != napi_ok) {
    throw_napi_failure(env, "napi_create_reference");
    scan_free(job);
    return NULL;
  }
  if (napi_create_async_work(env, NULL, name, scan_execute, scan_complete, job, &job->work) != napi_ok) {
    throw_napi_failure(env, "napi_create_async_work");
    if (napi_delete_reference(env, job->callback) != napi_ok) throw_napi_failure(env, "napi_delete_reference");
    scan_free(job);
    return NULL;
  }
  if (napi_queue_async_work(env, job->work) != napi_ok) {
    throw_napi_failure(env, "napi_queue_async_work");
    if (napi_delete_async_work(env, job->work) != napi_ok) throw_napi_failure(env, "napi_delete_async_work");
    if (napi_delete_reference(env, job->callback) != napi_ok) throw_napi_failure(env, "napi_delete_reference");
    scan_free(job);
    return NULL;
  }
  return make_undefined(env);
}

// willNeed(fd): posix_fadvise(POSIX_FADV_WILLNEED) on the whole file: the kernel starts reading
// it into the page cache and returns. A backup worker does this for every file of a batch before
// reading them one by one, so that a cold disk sees many requests at once instead of one: reading
// the benchmark data set cold took 16.9 s one file at a time and 5.0 s eight at a time. Advice
// only: failures (a closed or invalid descriptor) are ignored, a number that is no int is not.
static napi_value js_willNeed(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv)) return NULL;
  int64_t fd;
  if (!get_int64_in(env, argv[0], &fd, INT_MIN, INT_MAX, "fd")) return NULL;
  (void)posix_fadvise((int)fd, 0, 0, POSIX_FADV_WILLNEED);
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
extern int ZSTD_getErrorCode(size_t functionResult) __attribute__((weak));
extern int ZSTD_minCLevel(void) __attribute__((weak));
extern int ZSTD_maxCLevel(void) __attribute__((weak));
extern ZSTD_DCtx *ZSTD_createDCtx(void) __attribute__((weak));
extern size_t ZSTD_freeDCtx(ZSTD_DCtx *dctx) __attribute__((weak));
extern size_t ZSTD_decompressDCtx(ZSTD_DCtx *dctx, void *dst, size_t dstCapacity, const void *src, size_t srcSize) __attribute__((weak));
extern size_t ZSTD_findFrameCompressedSize(const void *src, size_t srcSize) __attribute__((weak));
extern unsigned long long ZSTD_getFrameContentSize(const void *src, size_t srcSize) __attribute__((weak));
// Parameter and error numbers from zstd.h and zstd_errors.h, which pin them down as stable.
enum { ZSTD_C_COMPRESSION_LEVEL = 100, ZSTD_C_CHECKSUM_FLAG = 201, ZSTD_ERROR_DST_SIZE_TOO_SMALL = 70 };
#define ZSTD_MAGIC 0xFD2FB528u
#define ZSTD_CONTENTSIZE_UNKNOWN (0ULL - 1)
#define ZSTD_CONTENTSIZE_ERROR (0ULL - 2)

static int zstd_present(void) {
  return ZSTD_createCCtx && ZSTD_freeCCtx && ZSTD_CCtx_setParameter && ZSTD_compress2 && ZSTD_isError &&
         ZSTD_getErrorName && ZSTD_getErrorCode && ZSTD_minCLevel && ZSTD_maxCLevel && ZSTD_createDCtx &&
         ZSTD_freeDCtx && ZSTD_decompressDCtx && ZSTD_findFrameCompressedSize && ZSTD_getFrameContentSize;
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
  CHECK(env, napi_get_instance_data(env, &data));
  if (data != NULL) return data;
  zstd_state *st = calloc(1, sizeof *st);
  if (st == NULL) {
    throw_errno(env, ENOMEM, "malloc", NULL);
    return NULL;
  }
  st->level = INT32_MIN;
  if (napi_set_instance_data(env, st, zstd_state_free, NULL) != napi_ok) {
    throw_napi_failure(env, "napi_set_instance_data");
    free(st);
    return NULL;
  }
  return st;
}

static napi_value zstd_throw(napi_env env, const char *code, const char *msg) {
  thrown(env, napi_throw_error(env, code, msg));
  return NULL;
}

static napi_value zstd_error(napi_env env, const char *what, size_t code) {
  char msg[160];
  snprintf(msg, sizeof msg, "zstd %s: %s", what, ZSTD_getErrorName(code));
  return zstd_throw(env, "ZSTD_ERROR", msg);
}

// A Uint8Array argument's bytes (any backing store, shared or not); 0 with a TypeError pending.
static int get_u8(napi_env env, napi_value v, void **data, size_t *len) {
  bool is_ta = false;
  CHECK_OR(env, napi_is_typedarray(env, v, &is_ta), 0);
  napi_typedarray_type tt = napi_int8_array;
  if (is_ta) {
    napi_value ab;
    size_t off;
    CHECK_OR(env, napi_get_typedarray_info(env, v, &tt, len, data, &ab, &off), 0);
  }
  if (tt != napi_uint8_array) {
    throw_type(env, "data must be a Uint8Array");
    return 0;
  }
  return 1;
}

static napi_value js_zstdAvailable(napi_env env, napi_callback_info info) {
  napi_value v;
  CHECK(env, napi_get_boolean(env, zstd_present(), &v));
  return v;
}

static napi_value make_null(napi_env env) {
  napi_value v;
  CHECK(env, napi_get_null(env, &v));
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
  int64_t level;
  if (!get_int64_in(env, argv[1], &level, ZSTD_minCLevel(), ZSTD_maxCLevel(), "level")) return NULL;
  zstd_state *st = zstd_get(env);
  if (st == NULL) return NULL;
  if (st->cctx == NULL) {
    st->cctx = ZSTD_createCCtx();
    if (st->cctx == NULL) return throw_errno(env, ENOMEM, "ZSTD_createCCtx", NULL);
    size_t r = ZSTD_CCtx_setParameter(st->cctx, ZSTD_C_CHECKSUM_FLAG, 0);
    if (ZSTD_isError(r)) return zstd_error(env, "set checksum flag", r);
  }
  if (st->level != (int)level) {
    size_t r = ZSTD_CCtx_setParameter(st->cctx, ZSTD_C_COMPRESSION_LEVEL, (int)level);
    if (ZSTD_isError(r)) return zstd_error(env, "set level", r);
    st->level = (int)level;
  }
  if (len == 0) return make_null(env);
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
    if (ZSTD_getErrorCode(n) == ZSTD_ERROR_DST_SIZE_TOO_SMALL) return make_null(env);
    return zstd_error(env, "compress", n);
  }
  napi_value out;
  void *dst;
  CHECK(env, napi_create_buffer_copy(env, n, st->out, &dst, &out));
  // Keep at most 16 MiB of output buffer between calls (blobs are a few MiB at most).
  if (st->cap > (16u << 20)) {
    free(st->out);
    st->out = NULL;
    st->cap = 0;
  }
  return out;
}

// zstdDecompress(data, rawLength): the content of the one zstd frame that `data` must be
// (nothing before or after it, no second frame), which must be exactly rawLength bytes. Throws
// ZSTD_ERROR for anything else but a wrong length, and ZSTD_LENGTH for that.
static napi_value js_zstdDecompress(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv)) return NULL;
  if (!zstd_present()) return throw_errno(env, ENOSYS, "zstdDecompress", NULL);
  void *src;
  size_t len;
  if (!get_u8(env, argv[0], &src, &len)) return NULL;
  int64_t want;
  if (!get_int64_in(env, argv[1], &want, 0, 0xffffffffLL, "rawLength")) return NULL;
  char msg[160];
  if (len < 4 || ((const unsigned char *)src)[0] != (ZSTD_MAGIC & 0xff) || ((const unsigned char *)src)[1] != ((ZSTD_MAGIC >> 8) & 0xff) ||
      ((const unsigned char *)src)[2] != ((ZSTD_MAGIC >> 16) & 0xff) || ((const unsigned char *)src)[3] != (ZSTD_MAGIC >> 24)) {
    snprintf(msg, sizeof msg, "zstd decompress: not a zstd frame (%zu bytes that do not start with its magic number)", len);
    return zstd_throw(env, "ZSTD_ERROR", msg);
  }
  size_t frame = ZSTD_findFrameCompressedSize(src, len);
  if (ZSTD_isError(frame)) {
    snprintf(msg, sizeof msg, "zstd decompress: not one whole frame (%s) in %zu bytes", ZSTD_getErrorName(frame), len);
    return zstd_throw(env, "ZSTD_ERROR", msg);
  }
  if (frame != len) {
    snprintf(msg, sizeof msg, "zstd decompress: %zu bytes follow the frame of %zu bytes (a second frame or trailing garbage)", len - frame, frame);
    return zstd_throw(env, "ZSTD_ERROR", msg);
  }
  unsigned long long content = ZSTD_getFrameContentSize(src, len);
  if (content == ZSTD_CONTENTSIZE_ERROR) return zstd_throw(env, "ZSTD_ERROR", "zstd decompress: the frame header is invalid");
  if (content != ZSTD_CONTENTSIZE_UNKNOWN && content != (unsigned long long)want) {
    snprintf(msg, sizeof msg, "zstd decompress: the frame holds %llu bytes, expected %lld", content, (long long)want);
    return zstd_throw(env, "ZSTD_LENGTH", msg);
  }
  zstd_state *st = zstd_get(env);
  if (st == NULL) return NULL;
  if (st->dctx == NULL) {
    st->dctx = ZSTD_createDCtx();
    if (st->dctx == NULL) return throw_errno(env, ENOMEM, "ZSTD_createDCtx", NULL);
  }
  napi_value out;
  void *dst;
  CHECK(env, napi_create_buffer(env, (size_t)want, &dst, &out));
  size_t n = ZSTD_decompressDCtx(st->dctx, dst, (size_t)want, src, len);
  if (ZSTD_isError(n)) {
    // Only a frame without a recorded size can expand past rawLength unnoticed until here.
    if (ZSTD_getErrorCode(n) == ZSTD_ERROR_DST_SIZE_TOO_SMALL) {
      snprintf(msg, sizeof msg, "zstd decompress: the frame holds more than the %lld bytes expected", (long long)want);
      return zstd_throw(env, "ZSTD_LENGTH", msg);
    }
    return zstd_error(env, "decompress", n);
  }
  if (n != (size_t)want) {
    snprintf(msg, sizeof msg, "zstd decompress: got %zu bytes, expected %lld", n, (long long)want);
    return zstd_throw(env, "ZSTD_LENGTH", msg);
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

// Defines a function property.
#define FN(name) {#name, NULL, js_##name, NULL, NULL, NULL, napi_enumerable, NULL}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
    FN(utimensat), FN(lgetxattr), FN(llistxattr), FN(lsetxattr), FN(lremovexattr), FN(mknod), FN(mkfifo),
    FN(mksock), FN(seekData), FN(seekHole), FN(makedev), FN(splitdev), FN(scanDir), FN(willNeed),
    FN(zstdAvailable), FN(zstdCompress), FN(zstdDecompress), FN(zstdDecompressInto),
  };
  CHECK(env, napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  if (!coffer_codec_init(env, exports)) return NULL;
  napi_value flag;
  CHECK(env, napi_create_int32(env, XATTR_CREATE, &flag));
  CHECK(env, napi_set_named_property(env, exports, "XATTR_CREATE", flag));
  CHECK(env, napi_create_int32(env, XATTR_REPLACE, &flag));
  CHECK(env, napi_set_named_property(env, exports, "XATTR_REPLACE", flag));
  return exports;
}
