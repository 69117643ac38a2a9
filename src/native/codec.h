// The blob encoder of codec.c, registered on the addon's exports by coffer_native.c.
#ifndef COFFER_CODEC_H
#define COFFER_CODEC_H
#include <node_api.h>
/** Defines codecAvailable() and encodeBlobs() on `exports`; 0 on failure (exception pending). */
int coffer_codec_init(napi_env env, napi_value exports);
#endif
