# The native addon for full file-system fidelity and the engine's zstd contexts:
# ../src/native/coffer_native.c, plain C against node_api.h (N-API), loaded by
# src/engine/addon.ts from native/build/Release/coffer_native.node.
#
# How it gets built: this directory is a local package (package.json here) that the root
# package.json lists under optionalDependencies as `file:native`. `npm ci` links it into
# node_modules/coffer-native and runs its install script, `node-gyp rebuild`, with the node-gyp
# that ships inside npm; node-gyp takes Node's headers from npm's `nodedir` setting (/usr here,
# see ~/.npmrc) and otherwise downloads them. Because the dependency is optional, a failed build
# (no C compiler, no make, no python3) is only a warning: `npm ci` still succeeds and Coffer runs
# without the addon (one notice says what is missing). To (re)build after changing the C file or
# installing a compiler: `npm run build:native` at the repository root.
#
# Linux only: elsewhere the target builds nothing (and npm skips the package), and the loader
# says so.
{
  "targets": [
    {
      "target_name": "coffer_native",
      "conditions": [
        ["OS=='linux'", {
          "sources": ["../src/native/coffer_native.c", "../src/native/codec.c"],
          "cflags": ["-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter", "-O2"],
        }, {
          "type": "none",
        }],
      ],
    },
  ],
}
