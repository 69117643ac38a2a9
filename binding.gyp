# The native addon for full file-system fidelity: src/native/coffer_native.c, plain C against
# node_api.h (N-API), loaded by src/sources/native.ts from build/Release/coffer_native.node.
#
# How it gets built: because this file exists and package.json has no install script of its
# own, npm gives the root package the implicit install script `node-gyp rebuild`, which
# `npm ci` and `npm install` run after the dependencies are in (so with the pinned Node 24 from
# node_modules/.bin on PATH) using the node-gyp that ships inside npm. node-gyp takes Node's
# headers from npm's `nodedir` setting (/usr here, see ~/.npmrc) and otherwise downloads them.
# To rebuild after changing the C file: `npm run build:native`. `npm ci --ignore-scripts` skips
# the build; the features that need the addon then fail with UNSUPPORTED.
#
# Linux only: elsewhere the target builds nothing, and native.ts says so.
{
  "targets": [
    {
      "target_name": "coffer_native",
      "conditions": [
        ["OS=='linux'", {
          "sources": ["src/native/coffer_native.c", "src/native/codec.c"],
          "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-O2"],
        }, {
          "type": "none",
        }],
      ],
    },
  ],
}
