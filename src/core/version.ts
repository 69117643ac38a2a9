// The Coffer release this code is: shown by --version, sent by agents in their hello.
export const VERSION = '0.1.0';
