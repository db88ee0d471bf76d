/*
 * Decompression of trace.dat v7 blocks (zlib as written by trace-cmd's zlib plugin, zstd frames).
 * The caller sizes the output from the block header and checks it against the file's size first.
 */
#include "CKVMScope.h"

#include <zlib.h>
#include <zstd.h>

/**
 * ckvmscope_decompress - decompress one block
 * @algo: CKVMSCOPE_COMPRESS_ZLIB or CKVMSCOPE_COMPRESS_ZSTD
 * @src: the compressed bytes
 * @src_len: their number
 * @dst: room for the uncompressed bytes
 * @dst_len: the room's size
 *
 * Returns the number of bytes written to dst, or -1 when the block is corrupt or does not fit.
 */
long ckvmscope_decompress(int algo, const void *src, size_t src_len, void *dst, size_t dst_len)
{
    if (algo == CKVMSCOPE_COMPRESS_ZLIB) {
        uLongf out = (uLongf)dst_len;
        if (uncompress(dst, &out, src, (uLong)src_len) != Z_OK)
            goto error;
        return (long)out;
    }
    if (algo == CKVMSCOPE_COMPRESS_ZSTD) {
        size_t n = ZSTD_decompress(dst, dst_len, src, src_len);
        if (ZSTD_isError(n))
            goto error;
        return (long)n;
    }
error:
    return -1;
}

/**
 * ckvmscope_compress - compress one block
 * @algo: CKVMSCOPE_COMPRESS_ZLIB or CKVMSCOPE_COMPRESS_ZSTD
 * @src: the bytes
 * @src_len: their number
 * @dst: room for the compressed bytes, at least ckvmscope_compress_bound(src_len)
 * @dst_len: the room's size
 *
 * Returns the number of bytes written to dst, or -1 on failure.
 */
long ckvmscope_compress(int algo, const void *src, size_t src_len, void *dst, size_t dst_len)
{
    if (algo == CKVMSCOPE_COMPRESS_ZLIB) {
        uLongf out = (uLongf)dst_len;
        if (compress2(dst, &out, src, (uLong)src_len, Z_DEFAULT_COMPRESSION) != Z_OK)
            goto error;
        return (long)out;
    }
    if (algo == CKVMSCOPE_COMPRESS_ZSTD) {
        size_t n = ZSTD_compress(dst, dst_len, src, src_len, 3);
        if (ZSTD_isError(n))
            goto error;
        return (long)n;
    }
error:
    return -1;
}

size_t ckvmscope_compress_bound(size_t src_len)
{
    size_t z = compressBound((uLong)src_len);
    size_t s = ZSTD_compressBound(src_len);
    return z > s ? z : s;
}

/**
 * ckvmscope_zstd_version - the linked zstd's version ("1.5.4"), as trace-cmd writes it after "zstd"
 */
const char *ckvmscope_zstd_version(void)
{
    return ZSTD_versionString();
}
