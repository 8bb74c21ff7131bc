#ifndef BOTTLENECK_CIMAGECODECS_H
#define BOTTLENECK_CIMAGECODECS_H

#include <stddef.h>
#include <stdint.h>

/*
 * JPEG and PNG decoding into interleaved RGB8, pixel for pixel what Pillow's
 * `Image.open(f).convert("RGB")` returns.
 *
 * libjpeg and libpng report errors by longjmp, which Swift cannot survive, so
 * every call that enters either library sets its own recovery point here and
 * comes back with a status code and a one-line message instead.
 *
 * Use: open (file or memory) -> read_header -> read_rgb -> close. Any call may
 * fail; `cimage_decoder_error` then says why, and only `close` is still valid.
 */

typedef struct CImageDecoder CImageDecoder;

/// Reads the whole file into a buffer the decoder owns. Never returns NULL
/// unless out of memory; an unreadable file is reported by `read_header`.
CImageDecoder *cimage_decoder_open_file(const char *path);

/// Decodes `size` bytes at `data`, which must stay valid until `close`.
CImageDecoder *cimage_decoder_open_memory(const uint8_t *data, size_t size);

/// Identifies the format from its signature and parses the header. Refuses
/// images of more than `max_pixels` pixels before any pixel memory is
/// allocated (Pillow's decompression-bomb guard). Returns 0 on success.
int cimage_decoder_read_header(CImageDecoder *decoder, uint64_t max_pixels, int *width, int *height);

/// Writes width * height * 3 bytes (R, G, B per pixel, rows top to bottom).
/// Returns 0 on success.
int cimage_decoder_read_rgb(CImageDecoder *decoder, uint8_t *rgb);

/// Why the last call failed, one line, never NULL.
const char *cimage_decoder_error(const CImageDecoder *decoder);

void cimage_decoder_close(CImageDecoder *decoder);

#endif
