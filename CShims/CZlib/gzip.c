/*
 * gzip of one buffer with zlib's deflate: windowBits 15 + 16 asks deflate for the gzip wrapper (a 10-byte
 * header without name or time, the deflate data, CRC-32 and length), as Go's compress/gzip writes for
 * client_golang and node_exporter.
 */
#include "CZlib.h"

#include <limits.h>
#include <zlib.h>

size_t ckvmscope_gzip_bound(size_t len)
{
    return (size_t)compressBound((uLong)len) + 12;
}

int ckvmscope_gzip(const void *in, size_t len, int level, void *out, size_t *out_len)
{
    z_stream s = {0};
    int rc;

    if (len > UINT_MAX || *out_len > UINT_MAX)
        return Z_BUF_ERROR;
    rc = deflateInit2(&s, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
    if (rc != Z_OK)
        return rc;
    s.next_in = (Bytef *)in;
    s.avail_in = (uInt)len;
    s.next_out = out;
    s.avail_out = (uInt)*out_len;
    rc = deflate(&s, Z_FINISH);
    *out_len = s.total_out;
    deflateEnd(&s);
    /* Z_FINISH with room for the whole bound ends the stream in one call; Z_OK means `out` was too small. */
    return rc == Z_STREAM_END ? 0 : (rc == Z_OK ? Z_BUF_ERROR : rc);
}
