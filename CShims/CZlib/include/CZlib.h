/*
 * CZlib — gzip (RFC 1952) through the system's zlib, for serve's compressed /metrics (Prometheus asks for
 * `Accept-Encoding: gzip` on every scrape). deflateInit2 is a macro Swift cannot call, and the stream is
 * easier driven whole in C: one call compresses a buffer. Every exported symbol is prefixed `ckvmscope_`.
 * Imported by the Swift module KVMServe.
 */
#ifndef CZLIB_H
#define CZLIB_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The most bytes ckvmscope_gzip can write for `len` input bytes (zlib's compressBound plus the gzip wrapper's
 * 12 bytes more than the zlib wrapper's). */
size_t ckvmscope_gzip_bound(size_t len);

/* Compresses `len` bytes at `in` as one gzip member (no file name, no time, OS unknown) at zlib level `level`
 * (1 fastest … 9 smallest, -1 zlib's default) into `out`, which holds `*out_len` bytes (at least
 * ckvmscope_gzip_bound(len)); `*out_len` becomes the bytes written. 0, or zlib's error (Z_MEM_ERROR,
 * Z_BUF_ERROR when `out` is too small or `len` exceeds 4 GiB, Z_STREAM_ERROR for a bad level). */
int ckvmscope_gzip(const void *in, size_t len, int level, void *out, size_t *out_len);

#ifdef __cplusplus
}
#endif

#endif
