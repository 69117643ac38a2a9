// coffer codec: the blob encoder of the backup's data path, in C on libuv's thread pool.
//
// encodeBlobs() does for a batch of blobs what engine/blob.ts encodeBlob() does for one, with
// the same bytes as the result: zstd (one frame, content size recorded, no checksum; stored raw
// when it does not shrink), then AES-256-GCM under the pack key with the blob's nonce (4 zero
// bytes, then the nonce index as a big-endian u64) and the blob's 48-byte AAD, written as
// ciphertext || tag into one output buffer that the caller gives. Each blob is then opened again
// (tag checked, decompressed) and compared with its input, so that a fault in compression,
// encryption or memory is caught before anything is stored.
//
// Why here: in worker threads every blob crossed threads twice (copied in, transferred back) and
// went through five fresh blob-sized buffers (compressed, ciphertext, stored, decrypted,
// decompressed); a backup touched about three times its data in fresh memory pages. Here the
// work runs on libuv's pool with one set of buffers per pool thread, reused for the life of the
// process: no copies between threads, no allocation per blob.
//
// zstd and OpenSSL are the libraries Node.js itself links and exports; like the zstd functions
// of coffer_native.c they are declared weak, so that the addon loads where they are missing
// (codecAvailable() is then false and the engine encodes in its workers).

#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

// ---- the libraries, as Node.js exports them ------------------------------------------------

typedef struct ZSTD_CCtx_s ZSTD_CCtx;
typedef struct ZSTD_DCtx_s ZSTD_DCtx;
extern ZSTD_CCtx *ZSTD_createCCtx(void) __attribute__((weak));
extern size_t ZSTD_CCtx_setParameter(ZSTD_CCtx *cctx, int param, int value) __attribute__((weak));
extern size_t ZSTD_compress2(ZSTD_CCtx *cctx, void *dst, size_t dstCapacity, const void *src, size_t srcSize) __attribute__((weak));
extern unsigned ZSTD_isError(size_t code) __attribute__((weak));
extern int ZSTD_getErrorCode(size_t code) __attribute__((weak));
extern const char *ZSTD_getErrorName(size_t code) __attribute__((weak));
extern ZSTD_DCtx *ZSTD_createDCtx(void) __attribute__((weak));
typedef struct { const void *src; size_t size; size_t pos; } ZSTD_inBuffer;
typedef struct { void *dst; size_t size; size_t pos; } ZSTD_outBuffer;
extern size_t ZSTD_decompressStream(ZSTD_DCtx *dctx, ZSTD_outBuffer *output, ZSTD_inBuffer *input) __attribute__((weak));
extern size_t ZSTD_DCtx_reset(ZSTD_DCtx *dctx, int reset) __attribute__((weak));
enum { C_ZSTD_C_COMPRESSION_LEVEL = 100, C_ZSTD_C_CHECKSUM_FLAG = 201, C_ZSTD_ERROR_DST_SIZE_TOO_SMALL = 70, C_ZSTD_RESET_SESSION_ONLY = 1 };

typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;
typedef struct evp_cipher_st EVP_CIPHER;
extern EVP_CIPHER_CTX *EVP_CIPHER_CTX_new(void) __attribute__((weak));
extern const EVP_CIPHER *EVP_aes_256_gcm(void) __attribute__((weak));
extern int EVP_EncryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *type, void *impl, const unsigned char *key, const unsigned char *iv) __attribute__((weak));
extern int EVP_EncryptUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl, const unsigned char *in, int inl) __attribute__((weak));
extern int EVP_EncryptFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl) __attribute__((weak));
extern int EVP_DecryptInit_ex(EVP_CIPHER_CTX *ctx, const EVP_CIPHER *type, void *impl, const unsigned char *key, const unsigned char *iv) __attribute__((weak));
extern int EVP_DecryptUpdate(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl, const unsigned char *in, int inl) __attribute__((weak));
extern int EVP_DecryptFinal_ex(EVP_CIPHER_CTX *ctx, unsigned char *out, int *outl) __attribute__((weak));
extern int EVP_CIPHER_CTX_ctrl(EVP_CIPHER_CTX *ctx, int type, int arg, void *ptr) __attribute__((weak));
enum { C_EVP_CTRL_GCM_SET_IVLEN = 0x9, C_EVP_CTRL_GCM_GET_TAG = 0x10, C_EVP_CTRL_GCM_SET_TAG = 0x11 };

static int codec_present(void) {
  return ZSTD_createCCtx && ZSTD_CCtx_setParameter && ZSTD_compress2 && ZSTD_isError && ZSTD_getErrorCode &&
         ZSTD_getErrorName && ZSTD_createDCtx && ZSTD_decompressStream && ZSTD_DCtx_reset && EVP_CIPHER_CTX_new && EVP_aes_256_gcm &&
         EVP_EncryptInit_ex && EVP_EncryptUpdate && EVP_EncryptFinal_ex && EVP_DecryptInit_ex && EVP_DecryptUpdate &&
         EVP_DecryptFinal_ex && EVP_CIPHER_CTX_ctrl;
}

// ---- the blob format (engine/format.ts, engine/blob.ts) -------------------------------------

#define ID_SIZE 32
#define KEY_SIZE 32
#define NONCE_SIZE 12
#define TAG_SIZE 16
#define AAD_SIZE 48
#define FLAG_COMPRESSED 0x01
static const unsigned char AAD_MAGIC[8] = {'C', 'F', 'R', 'B', 'L', 'O', 'B', 0};
#define BLOB_VERSION 1
#define MAX_NONCE_INDEX 0xffffffffULL
#define MAX_BLOB ((size_t)0xffffffffULL)
// Per item in `meta`: type code, key index, nonce index, offset of the raw bytes in their array.
#define META_COLS 3
// Per item in `results`: offset and length of the stored bytes in `out`, compressed 0/1.
#define RESULT_COLS 3

// ---- one set of contexts and buffers per pool thread, kept for the life of the thread -------
// A blob is compressed straight into its place in the output and encrypted there; the check
// decrypts and decompresses it in small steps. So a thread holds its contexts and 192 KiB, not
// blob-sized buffers (libuv's pool has four threads, each would have kept three).

#define PLAIN_STEP (64 * 1024)
#define BACK_STEP (128 * 1024)

typedef struct {
  ZSTD_CCtx *cctx;
  ZSTD_DCtx *dctx;
  EVP_CIPHER_CTX *cipher;
  int level;                       // the level set on cctx (INT_MIN: none yet)
  unsigned char plain[PLAIN_STEP]; // decrypted bytes (the check)
  unsigned char back[BACK_STEP];   // decompressed bytes (the check)
} thread_state;

static __thread thread_state *tls = NULL;

typedef struct {
  const unsigned char *raw;
  size_t rawLen;
  const unsigned char *id;
  const unsigned char *key;
  uint64_t nonceIndex;
  int type;
} enc_item;

typedef struct {
  napi_async_work work;
  napi_ref keep;            // an array holding every JS object the job reads or writes
  napi_ref callback;
  enc_item *items;
  size_t count;
  int level;
  unsigned char *out;
  size_t outCap;
  double *results;
  char error[256];
} enc_job;

static void fail(enc_job *job, const char *fmt, const char *what, size_t i) {
  if (job->error[0] == 0) snprintf(job->error, sizeof job->error, fmt, what, i);
}

// AES-256-GCM over `len` bytes in steps that fit OpenSSL's int lengths.
static int gcm_update(EVP_CIPHER_CTX *c, int enc, unsigned char *out, const unsigned char *in, size_t len) {
  while (len > 0) {
    int step = len > (size_t)(INT_MAX / 2) ? INT_MAX / 2 : (int)len;
    int outl = 0;
    int ok = enc ? EVP_EncryptUpdate(c, out, &outl, in, step) : EVP_DecryptUpdate(c, out, &outl, in, step);
    if (ok != 1 || outl != step) return 0;
    out += step;
    in += step;
    len -= (size_t)step;
  }
  return 1;
}

static void make_aad(unsigned char aad[AAD_SIZE], const enc_item *it, int compressed) {
  memcpy(aad, AAD_MAGIC, 8);
  aad[8] = BLOB_VERSION;
  aad[9] = (unsigned char)it->type;
  aad[10] = compressed ? FLAG_COMPRESSED : 0;
  aad[11] = 0;
  uint32_t n = (uint32_t)it->rawLen;
  aad[12] = n & 0xff;
  aad[13] = (n >> 8) & 0xff;
  aad[14] = (n >> 16) & 0xff;
  aad[15] = (n >> 24) & 0xff;
  memcpy(aad + 16, it->id, ID_SIZE);
}

static void make_nonce(unsigned char nonce[NONCE_SIZE], uint64_t index) {
  memset(nonce, 0, 4);
  for (int b = 0; b < 8; b++) nonce[4 + b] = (unsigned char)(index >> (56 - 8 * b));
}

// Whether `stored` (len bytes of ciphertext, then the tag) opens under the blob's key, nonce and
// AAD to exactly the blob's raw bytes, decompressing when `compressed`.
static int check_blob(thread_state *t, const enc_item *it, const unsigned char *aad, const unsigned char *nonce, unsigned char *stored, size_t len, int compressed) {
  EVP_CIPHER_CTX *c = t->cipher;
  int outl = 0;
  if (EVP_DecryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
      EVP_CIPHER_CTX_ctrl(c, C_EVP_CTRL_GCM_SET_IVLEN, NONCE_SIZE, NULL) != 1 ||
      EVP_DecryptInit_ex(c, NULL, NULL, it->key, nonce) != 1 ||
      EVP_DecryptUpdate(c, NULL, &outl, aad, AAD_SIZE) != 1) return 0;
  if (compressed && ZSTD_isError(ZSTD_DCtx_reset(t->dctx, C_ZSTD_RESET_SESSION_ONLY))) return 0;
  size_t matched = 0;   // raw bytes compared so far
  size_t frameLeft = 1; // ZSTD_decompressStream's hint: 0 once the frame is complete
  for (size_t at = 0; at < len;) {
    size_t step = len - at < PLAIN_STEP ? len - at : PLAIN_STEP;
    if (!gcm_update(c, 0, t->plain, stored + at, step)) return 0;
    at += step;
    if (!compressed) {
      if (memcmp(t->plain, it->raw + matched, step) != 0) return 0;
      matched += step;
      continue;
    }
    ZSTD_inBuffer in = {t->plain, step, 0};
    while (in.pos < in.size) {
      ZSTD_outBuffer out = {t->back, BACK_STEP, 0};
      frameLeft = ZSTD_decompressStream(t->dctx, &out, &in);
      if (ZSTD_isError(frameLeft) || out.pos > it->rawLen - matched) return 0;
      if (memcmp(t->back, it->raw + matched, out.pos) != 0) return 0;
      matched += out.pos;
      if (frameLeft == 0 && in.pos < in.size) return 0; // bytes after the frame
    }
  }
  if (compressed) {
    // Output the decoder still holds (its last block may not have been flushed).
    while (frameLeft != 0) {
      ZSTD_inBuffer in = {NULL, 0, 0};
      ZSTD_outBuffer out = {t->back, BACK_STEP, 0};
      frameLeft = ZSTD_decompressStream(t->dctx, &out, &in);
      if (ZSTD_isError(frameLeft) || out.pos > it->rawLen - matched || (out.pos == 0 && frameLeft != 0)) return 0;
      if (memcmp(t->back, it->raw + matched, out.pos) != 0) return 0;
      matched += out.pos;
    }
  }
  if (matched != it->rawLen) return 0;
  if (EVP_CIPHER_CTX_ctrl(c, C_EVP_CTRL_GCM_SET_TAG, TAG_SIZE, stored + len) != 1) return 0;
  return EVP_DecryptFinal_ex(c, t->plain, &outl) == 1;
}

static void encode_execute(napi_env env, void *data) {
  enc_job *job = data;
  if (tls == NULL) {
    tls = calloc(1, sizeof *tls);
    if (tls == NULL) return fail(job, "%s: out of memory (item %zu)", "contexts", 0);
    tls->level = INT_MIN;
  }
  thread_state *t = tls;
  if (t->cctx == NULL) {
    t->cctx = ZSTD_createCCtx();
    t->dctx = ZSTD_createDCtx();
    t->cipher = EVP_CIPHER_CTX_new();
    if (t->cctx == NULL || t->dctx == NULL || t->cipher == NULL) return fail(job, "%s: out of memory (item %zu)", "contexts", 0);
    size_t r = ZSTD_CCtx_setParameter(t->cctx, C_ZSTD_C_CHECKSUM_FLAG, 0);
    if (ZSTD_isError(r)) return fail(job, "zstd %s failed (item %zu)", "set checksum flag", 0);
  }
  if (t->level != job->level) {
    size_t r = ZSTD_CCtx_setParameter(t->cctx, C_ZSTD_C_COMPRESSION_LEVEL, job->level);
    if (ZSTD_isError(r)) return fail(job, "zstd %s failed (item %zu)", "set level", 0);
    t->level = job->level;
  }
  size_t at = 0;
  for (size_t i = 0; i < job->count; i++) {
    const enc_item *it = &job->items[i];
    if (at + it->rawLen + TAG_SIZE > job->outCap) return fail(job, "%s: output buffer too small (item %zu)", "encode", i);
    unsigned char *stored = job->out + at;
    // Compressed in place, only when smaller: a rawLen-1 byte output is enough, and zstd stops
    // with dstSize_tooSmall as soon as it would not fit.
    size_t len = it->rawLen;
    int compressed = 0;
    if (it->rawLen > 1) {
      size_t n = ZSTD_compress2(t->cctx, stored, it->rawLen - 1, it->raw, it->rawLen);
      if (!ZSTD_isError(n)) {
        len = n;
        compressed = 1;
      } else if (ZSTD_getErrorCode(n) != C_ZSTD_ERROR_DST_SIZE_TOO_SMALL) {
        return fail(job, "zstd compress failed: %s (item %zu)", ZSTD_getErrorName(n), i);
      }
    }
    if (!compressed && len > 0) memcpy(stored, it->raw, len);
    unsigned char aad[AAD_SIZE], nonce[NONCE_SIZE];
    make_aad(aad, it, compressed);
    make_nonce(nonce, it->nonceIndex);
    int outl = 0;
    EVP_CIPHER_CTX *c = t->cipher;
    // Encrypted in place (GCM allows it).
    if (EVP_EncryptInit_ex(c, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, C_EVP_CTRL_GCM_SET_IVLEN, NONCE_SIZE, NULL) != 1 ||
        EVP_EncryptInit_ex(c, NULL, NULL, it->key, nonce) != 1 ||
        EVP_EncryptUpdate(c, NULL, &outl, aad, AAD_SIZE) != 1 ||
        !gcm_update(c, 1, stored, stored, len) ||
        EVP_EncryptFinal_ex(c, stored + len, &outl) != 1 || outl != 0 ||
        EVP_CIPHER_CTX_ctrl(c, C_EVP_CTRL_GCM_GET_TAG, TAG_SIZE, stored + len) != 1) {
      return fail(job, "AES-256-GCM %s failed (item %zu)", "encryption", i);
    }
    // The check: open it again and compare with the input.
    if (!check_blob(t, it, aad, nonce, stored, len, compressed)) {
      return fail(job, "the blob does not decode back to its bytes (%s, item %zu)", compressed ? "compressed" : "stored raw", i);
    }
    job->results[i * RESULT_COLS] = (double)at;
    job->results[i * RESULT_COLS + 1] = (double)(len + TAG_SIZE);
    job->results[i * RESULT_COLS + 2] = compressed;
    at += len + TAG_SIZE;
  }
}

static void encode_complete(napi_env env, napi_status status, void *data) {
  enc_job *job = data;
  napi_value cb, global, arg;
  int ok = napi_get_reference_value(env, job->callback, &cb) == napi_ok && napi_get_global(env, &global) == napi_ok;
  if (ok) {
    if (status == napi_cancelled) snprintf(job->error, sizeof job->error, "%s", "cancelled");
    if (job->error[0]) {
      napi_value msg, code;
      ok = napi_create_string_utf8(env, job->error, NAPI_AUTO_LENGTH, &msg) == napi_ok &&
           napi_create_string_utf8(env, "ENCODE_FAILED", NAPI_AUTO_LENGTH, &code) == napi_ok &&
           napi_create_error(env, code, msg, &arg) == napi_ok;
    } else {
      ok = napi_get_null(env, &arg) == napi_ok;
    }
  }
  napi_delete_reference(env, job->keep);
  napi_delete_reference(env, job->callback);
  napi_delete_async_work(env, job->work);
  free(job->items);
  free(job);
  if (ok) napi_call_function(env, global, cb, 1, &arg, NULL);
}

#define CHECK(call)                                                  \
  do {                                                               \
    if ((call) != napi_ok) {                                         \
      free(items);                                                   \
      free(job);                                                     \
      const napi_extended_error_info *e = NULL;                      \
      napi_get_last_error_info(env, &e);                             \
      bool pending = false;                                          \
      napi_is_exception_pending(env, &pending);                      \
      if (!pending) napi_throw_error(env, "EINVAL", e && e->error_message ? e->error_message : "N-API call failed"); \
      return NULL;                                                   \
    }                                                                \
  } while (0)

static napi_value type_error(napi_env env, enc_item *items, enc_job *job, const char *msg) {
  free(items);
  free(job);
  napi_throw_type_error(env, "EINVAL", msg);
  return NULL;
}

// A typed array argument of type `want`: its data and element count; 0 if it is not one.
static int typed_info(napi_env env, napi_value v, napi_typedarray_type want, void **data, size_t *len) {
  bool is = false;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return 0;
  napi_typedarray_type tt;
  napi_value ab;
  size_t off;
  return napi_get_typedarray_info(env, v, &tt, len, data, &ab, &off) == napi_ok && tt == want;
}

static int u8_info(napi_env env, napi_value v, unsigned char **data, size_t *len) {
  return typed_info(env, v, napi_uint8_array, (void **)data, len);
}

static int f64_info(napi_env env, napi_value v, double **data, size_t *len) {
  return typed_info(env, v, napi_float64_array, (void **)data, len);
}

// encodeBlobs(raws: Uint8Array[], meta: Float64Array, ids: Uint8Array, keys: Uint8Array,
//             level: number, out: Uint8Array, results: Float64Array, callback(err))
// Encodes raws[i] (type meta[3i], pack key keys[32·meta[3i+1]..], nonce index meta[3i+2], id
// ids[32i..]) into `out` one after another and fills `results` (RESULT_COLS per item). The
// caller must leave every array alone until the callback runs; `out` needs Σ(raw length + 16).
static napi_value js_encodeBlobs(napi_env env, napi_callback_info info) {
  enc_item *items = NULL;
  enc_job *job = NULL;
  size_t argc = 8;
  napi_value argv[8];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc != 8) return type_error(env, items, job, "encodeBlobs takes 8 arguments");
  if (!codec_present()) return type_error(env, items, job, "encodeBlobs: zstd or OpenSSL is not exported by this Node.js");
  bool isArray = false;
  CHECK(napi_is_array(env, argv[0], &isArray));
  if (!isArray) return type_error(env, items, job, "raws must be an array of Uint8Array");
  uint32_t count;
  CHECK(napi_get_array_length(env, argv[0], &count));
  double *meta, *results;
  size_t metaLen, resultsLen, idsLen, keysLen, outLen;
  unsigned char *ids, *keys, *out;
  if (!f64_info(env, argv[1], &meta, &metaLen) || metaLen != (size_t)count * META_COLS) return type_error(env, items, job, "meta must be a Float64Array of 3 numbers per item");
  if (!u8_info(env, argv[2], &ids, &idsLen) || idsLen != (size_t)count * ID_SIZE) return type_error(env, items, job, "ids must be a Uint8Array of 32 bytes per item");
  if (!u8_info(env, argv[3], &keys, &keysLen) || keysLen == 0 || keysLen % KEY_SIZE != 0) return type_error(env, items, job, "keys must be a Uint8Array of 32-byte keys");
  int32_t level;
  if (napi_get_value_int32(env, argv[4], &level) != napi_ok || level < -7 || level > 22) return type_error(env, items, job, "level must be a zstd level from -7 to 22");
  if (!u8_info(env, argv[5], &out, &outLen)) return type_error(env, items, job, "out must be a Uint8Array");
  if (!f64_info(env, argv[6], &results, &resultsLen) || resultsLen != (size_t)count * RESULT_COLS) return type_error(env, items, job, "results must be a Float64Array of 3 numbers per item");
  napi_valuetype cbType;
  CHECK(napi_typeof(env, argv[7], &cbType));
  if (cbType != napi_function) return type_error(env, items, job, "callback must be a function");

  items = calloc(count ? count : 1, sizeof *items);
  job = calloc(1, sizeof *job);
  if (items == NULL || job == NULL) return type_error(env, items, job, "encodeBlobs: out of memory");
  size_t need = 0;
  for (uint32_t i = 0; i < count; i++) {
    napi_value v;
    CHECK(napi_get_element(env, argv[0], i, &v));
    enc_item *it = &items[i];
    unsigned char *raw;
    if (!u8_info(env, v, &raw, &it->rawLen)) return type_error(env, items, job, "raws must be an array of Uint8Array");
    if (it->rawLen > MAX_BLOB) return type_error(env, items, job, "a raw blob is over 4 GiB");
    it->raw = raw;
    double type = meta[i * META_COLS], key = meta[i * META_COLS + 1], nonce = meta[i * META_COLS + 2];
    if (!(type == 0 || type == 1)) return type_error(env, items, job, "a blob type code is not 0 or 1");
    if (!(key >= 0 && key < (double)(keysLen / KEY_SIZE)) || key != (double)(size_t)key) return type_error(env, items, job, "a key index is out of range");
    if (!(nonce >= 0 && nonce < (double)MAX_NONCE_INDEX) || nonce != (double)(uint64_t)nonce) return type_error(env, items, job, "a nonce index is out of range");
    it->type = (int)type;
    it->key = keys + (size_t)key * KEY_SIZE;
    it->nonceIndex = (uint64_t)nonce;
    it->id = ids + (size_t)i * ID_SIZE;
    need += it->rawLen + TAG_SIZE;
  }
  if (outLen < need) return type_error(env, items, job, "out is smaller than the sum of raw lengths + 16 per item");
  job->items = items;
  job->count = count;
  job->level = level;
  job->out = out;
  job->outCap = outLen;
  job->results = results;
  // Everything the job touches stays alive until it completes: one array holding it all.
  napi_value keep, name;
  CHECK(napi_create_array_with_length(env, 7, &keep));
  for (uint32_t i = 0; i < 7; i++) CHECK(napi_set_element(env, keep, i, argv[i]));
  CHECK(napi_create_reference(env, keep, 1, &job->keep));
  CHECK(napi_create_reference(env, argv[7], 1, &job->callback));
  CHECK(napi_create_string_utf8(env, "coffer:encodeBlobs", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_create_async_work(env, NULL, name, encode_execute, encode_complete, job, &job->work));
  CHECK(napi_queue_async_work(env, job->work));
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  return undefined;
}

static napi_value js_codecAvailable(napi_env env, napi_callback_info info) {
  napi_value v;
  if (napi_get_boolean(env, codec_present(), &v) != napi_ok) return NULL;
  return v;
}

int coffer_codec_init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    {"codecAvailable", NULL, js_codecAvailable, NULL, NULL, NULL, napi_enumerable, NULL},
    {"encodeBlobs", NULL, js_encodeBlobs, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props) == napi_ok;
}
