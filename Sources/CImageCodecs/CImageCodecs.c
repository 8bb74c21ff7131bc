#include "CImageCodecs.h"

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>

enum image_format { FORMAT_UNKNOWN, FORMAT_JPEG, FORMAT_PNG };

struct jpeg_error_state {
    struct jpeg_error_mgr pub;
    jmp_buf recovery;
    CImageDecoder *decoder;
};

struct CImageDecoder {
    const uint8_t *data;
    size_t size;
    uint8_t *owned_data;
    int open_failed;
    char error[256];

    enum image_format format;
    int width, height;

    struct jpeg_decompress_struct jpeg;
    struct jpeg_error_state jpeg_error;
    int jpeg_created;
    /* libjpeg's memory source pads a short file with a fake end marker and
       only warns; Pillow calls any file that ends before the last scanline
       truncated, so the warning is remembered and judged after decoding. */
    int jpeg_ran_out_of_data;

    png_structp png;
    png_infop png_info;
    size_t png_offset;
    /* Pillow opens 16-bit grayscale PNG as "I;16" and convert("RGB") clips
       those values at 255 instead of scaling them, so they are read at full
       depth and clipped here; libpng has no transform for that. */
    int png_gray16;
    uint8_t *png_gray16_pixels;
    png_bytep *png_rows;
    /* Pillow stops reading a PNG as soon as it holds every row, so damage
       after the last row (a file cut inside the zlib trailer or the last
       checksum, a missing end chunk) never reaches it. Counting finished rows
       tells such late failures from real ones. */
    long png_rows_expected;
    long png_rows_finished;
    uint8_t *png_with_closed_idat;
};

static void set_error(CImageDecoder *decoder, const char *format, ...) {
    va_list arguments;
    va_start(arguments, format);
    vsnprintf(decoder->error, sizeof decoder->error, format, arguments);
    va_end(arguments);
}

/* ---- opening -------------------------------------------------------- */

CImageDecoder *cimage_decoder_open_memory(const uint8_t *data, size_t size) {
    CImageDecoder *decoder = calloc(1, sizeof *decoder);
    if (decoder == NULL) {
        return NULL;
    }
    decoder->data = data;
    decoder->size = size;
    return decoder;
}

CImageDecoder *cimage_decoder_open_file(const char *path) {
    CImageDecoder *decoder = cimage_decoder_open_memory(NULL, 0);
    if (decoder == NULL) {
        return NULL;
    }
    /* O_NONBLOCK: a FIFO named like an image must not block the open; it is refused below. */
    int descriptor = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (descriptor < 0) {
        set_error(decoder, "cannot open file (%s)", strerror(errno));
        decoder->open_failed = 1;
        return decoder;
    }
    struct stat status;
    if (fstat(descriptor, &status) != 0) {
        set_error(decoder, "cannot read file (%s)", strerror(errno));
        decoder->open_failed = 1;
    } else if (S_ISDIR(status.st_mode)) {
        set_error(decoder, "is a directory, not an image file");
        decoder->open_failed = 1;
    } else if (!S_ISREG(status.st_mode)) {
        set_error(decoder, "not a regular file (a FIFO, device or socket), skipped");
        decoder->open_failed = 1;
    } else if (status.st_size > 0) {
        size_t size = (size_t)status.st_size;
        decoder->owned_data = malloc(size);
        if (decoder->owned_data == NULL) {
            set_error(decoder, "out of memory reading a %zu-byte file", size);
            decoder->open_failed = 1;
            size = 0;
        }
        size_t filled = 0;
        while (filled < size) {
            ssize_t count = read(descriptor, decoder->owned_data + filled, size - filled);
            if (count < 0 && errno == EINTR) {
                continue;
            }
            if (count < 0) {
                set_error(decoder, "cannot read file (%s)", strerror(errno));
                decoder->open_failed = 1;
                break;
            }
            if (count == 0) {
                break; /* the file shrank while being read: decode what is there */
            }
            filled += (size_t)count;
        }
        decoder->data = decoder->owned_data;
        decoder->size = filled;
    }
    close(descriptor);
    return decoder;
}

static enum image_format detect_format(CImageDecoder *decoder) {
    const uint8_t *bytes = decoder->data;
    size_t size = decoder->size;
    static const uint8_t png_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (size >= 3 && bytes[0] == 0xff && bytes[1] == 0xd8 && bytes[2] == 0xff) {
        return FORMAT_JPEG;
    }
    if (size >= 8 && memcmp(bytes, png_signature, 8) == 0) {
        return FORMAT_PNG;
    }
    const char *other = NULL;
    if (size >= 4 && (memcmp(bytes, "GIF8", 4) == 0)) {
        other = "GIF";
    } else if (size >= 12 && memcmp(bytes, "RIFF", 4) == 0 && memcmp(bytes + 8, "WEBP", 4) == 0) {
        other = "WebP";
    } else if (size >= 4 && (memcmp(bytes, "II*\0", 4) == 0 || memcmp(bytes, "MM\0*", 4) == 0)) {
        other = "TIFF";
    } else if (size >= 2 && memcmp(bytes, "BM", 2) == 0) {
        other = "BMP";
    }
    if (size == 0) {
        set_error(decoder, "empty file (0 bytes)");
    } else if (other != NULL) {
        set_error(decoder, "%s images are not supported (only JPEG and PNG)", other);
    } else {
        set_error(decoder, "not a JPEG or PNG file");
    }
    return FORMAT_UNKNOWN;
}

/* ---- JPEG ----------------------------------------------------------- */

static void jpeg_fail(j_common_ptr info) {
    struct jpeg_error_state *state = (struct jpeg_error_state *)info->err;
    char message[JMSG_LENGTH_MAX];
    (*info->err->format_message)(info, message);
    if (state->decoder->jpeg_ran_out_of_data) {
        set_error(state->decoder, "truncated JPEG data");
    } else {
        set_error(state->decoder, "corrupt JPEG data (%s)", message);
    }
    longjmp(state->recovery, 1);
}

/* Pillow silences libjpeg's warnings (corrupt data it can decode past);
   only running out of data matters. */
static void jpeg_note_message(j_common_ptr info, int level) {
    struct jpeg_error_state *state = (struct jpeg_error_state *)info->err;
    if (level < 0 && info->err->msg_code == JWRN_JPEG_EOF) {
        state->decoder->jpeg_ran_out_of_data = 1;
    }
}

static int jpeg_read_header_info(CImageDecoder *decoder) {
    struct jpeg_decompress_struct *jpeg = &decoder->jpeg;
    jpeg->err = jpeg_std_error(&decoder->jpeg_error.pub);
    decoder->jpeg_error.pub.error_exit = jpeg_fail;
    decoder->jpeg_error.pub.emit_message = jpeg_note_message;
    decoder->jpeg_error.decoder = decoder;
    if (setjmp(decoder->jpeg_error.recovery)) {
        return -1;
    }
    decoder->jpeg_created = 1;
    jpeg_create_decompress(jpeg);
    jpeg_mem_src(jpeg, decoder->data, (unsigned long)decoder->size);
    jpeg_read_header(jpeg, TRUE);
    if (decoder->jpeg_ran_out_of_data) {
        set_error(decoder, "truncated JPEG data");
        return -1;
    }
    /* The colour handling mirrors Pillow's JPEG plugin: 1 layer is "L",
       3 are "RGB" (libjpeg converts YCbCr), 4 are "CMYK"; nothing else. */
    switch (jpeg->num_components) {
        case 1: jpeg->out_color_space = JCS_GRAYSCALE; break;
        case 3: jpeg->out_color_space = JCS_RGB; break;
        case 4: jpeg->out_color_space = JCS_CMYK; break;
        default:
            set_error(decoder, "JPEG with %d colour components is not supported", jpeg->num_components);
            return -1;
    }
    decoder->width = (int)jpeg->image_width;
    decoder->height = (int)jpeg->image_height;
    return 0;
}

/* Pillow's (a * b + 127) / 255 approximation, reproduced for its rounding. */
static inline int pillow_muldiv255(int a, int b) {
    int product = a * b + 128;
    return ((product >> 8) + product) >> 8;
}

/* Pillow reads every 4-component JPEG as Adobe-inverted CMYK ("CMYK;I"),
   then converts CMYK to RGB without undercolour handling. */
static void cmyk_row_to_rgb(const JSAMPLE *inverted_cmyk, uint8_t *rgb, int width) {
    for (int x = 0; x < width; x++, inverted_cmyk += 4, rgb += 3) {
        int ink_free = inverted_cmyk[3]; /* 255 - K */
        for (int channel = 0; channel < 3; channel++) {
            int ink = 255 - inverted_cmyk[channel];
            rgb[channel] = (uint8_t)(ink_free - pillow_muldiv255(ink, ink_free));
        }
    }
}

static void gray_row_to_rgb(const JSAMPLE *gray, uint8_t *rgb, int width) {
    for (int x = 0; x < width; x++, rgb += 3) {
        rgb[0] = rgb[1] = rgb[2] = gray[x];
    }
}

static int jpeg_read_pixels(CImageDecoder *decoder, uint8_t *rgb) {
    struct jpeg_decompress_struct *jpeg = &decoder->jpeg;
    if (setjmp(decoder->jpeg_error.recovery)) {
        return -1;
    }
    jpeg_start_decompress(jpeg);
    size_t rgb_row_bytes = (size_t)jpeg->output_width * 3;
    int components = jpeg->output_components;
    JSAMPARRAY converted_row = NULL;
    if (components != 3) {
        /* Allocated from libjpeg's pool so an error longjmp cannot leak it. */
        converted_row = (*jpeg->mem->alloc_sarray)(
            (j_common_ptr)jpeg, JPOOL_IMAGE, jpeg->output_width * (JDIMENSION)components, 1);
    }
    while (jpeg->output_scanline < jpeg->output_height) {
        uint8_t *target = rgb + (size_t)jpeg->output_scanline * rgb_row_bytes;
        if (components == 3) {
            JSAMPROW row = target;
            jpeg_read_scanlines(jpeg, &row, 1);
        } else {
            jpeg_read_scanlines(jpeg, converted_row, 1);
            if (components == 1) {
                gray_row_to_rgb(converted_row[0], target, (int)jpeg->output_width);
            } else {
                cmyk_row_to_rgb(converted_row[0], target, (int)jpeg->output_width);
            }
        }
    }
    if (decoder->jpeg_ran_out_of_data) {
        set_error(decoder, "truncated JPEG data");
        return -1;
    }
    /* Pillow tolerates a missing end marker once every scanline is decoded. */
    jpeg_finish_decompress(jpeg);
    return 0;
}

/* ---- PNG ------------------------------------------------------------ */

static void png_fail(png_structp png, png_const_charp message) {
    CImageDecoder *decoder = png_get_error_ptr(png);
    if (decoder->error[0] == '\0') {
        set_error(decoder, "corrupt PNG data (%s)", message);
    }
    png_longjmp(png, 1);
}

static void png_ignore_warning(png_structp png, png_const_charp message) {
    (void)png;
    (void)message;
}

static void png_read_from_memory(png_structp png, png_bytep target, size_t length) {
    CImageDecoder *decoder = png_get_io_ptr(png);
    if (length > decoder->size - decoder->png_offset) {
        set_error(decoder, "truncated PNG data");
        png_error(png, "truncated");
    }
    memcpy(target, decoder->data + decoder->png_offset, length);
    decoder->png_offset += length;
}

/* Called by libpng once a row's data is complete, before it is stored. */
static void png_count_finished_row(png_structp png, png_row_infop row, png_bytep data) {
    (void)row;
    (void)data;
    CImageDecoder *decoder = png_get_io_ptr(png);
    decoder->png_rows_finished++;
}

/* Rows carrying data: all of them, or for Adam7 those of each pass that has columns. */
static long png_data_rows(png_uint_32 width, png_uint_32 height, int interlaced) {
    if (!interlaced) {
        return (long)height;
    }
    long rows = 0;
    for (int pass = 0; pass < 7; pass++) {
        if (PNG_PASS_COLS(width, pass) != 0) {
            rows += (long)PNG_PASS_ROWS(height, pass);
        }
    }
    return rows;
}

/* A file cut inside its last image-data chunk still holds every row when
   only the zlib trailer or the checksum is missing, and Pillow reads it.
   libpng reads whole chunks, so such a chunk is handed to it as a complete,
   shorter one (its made-up checksum goes unchecked, as Pillow's does). */
static int png_close_cut_idat(CImageDecoder *decoder) {
    const uint8_t *data = decoder->data;
    size_t offset = 8;
    while (offset + 8 <= decoder->size) {
        size_t length = ((size_t)data[offset] << 24) | ((size_t)data[offset + 1] << 16) |
                        ((size_t)data[offset + 2] << 8) | data[offset + 3];
        size_t available = decoder->size - offset - 8;
        if (length + 4 <= available) {
            offset += 12 + length;
            continue;
        }
        if (memcmp(data + offset + 4, "IDAT", 4) != 0) {
            return 0;
        }
        if (available > length) {
            available = length;
        }
        uint8_t *copy = malloc(offset + 8 + available + 4);
        if (copy == NULL) {
            set_error(decoder, "out of memory reading a truncated PNG");
            return -1;
        }
        memcpy(copy, data, offset + 8 + available);
        copy[offset] = (uint8_t)(available >> 24);
        copy[offset + 1] = (uint8_t)(available >> 16);
        copy[offset + 2] = (uint8_t)(available >> 8);
        copy[offset + 3] = (uint8_t)available;
        memset(copy + offset + 8 + available, 0, 4);
        decoder->png_with_closed_idat = copy;
        decoder->data = copy;
        decoder->size = offset + 8 + available + 4;
        return 0;
    }
    return 0;
}

static int png_read_header_info(CImageDecoder *decoder) {
    if (png_close_cut_idat(decoder) != 0) {
        return -1;
    }
    decoder->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, decoder, png_fail, png_ignore_warning);
    if (decoder->png != NULL) {
        decoder->png_info = png_create_info_struct(decoder->png);
    }
    if (decoder->png_info == NULL) {
        set_error(decoder, "out of memory starting the PNG decoder");
        return -1;
    }
    png_structp png = decoder->png;
    png_infop info = decoder->png_info;
    if (setjmp(png_jmpbuf(png))) {
        return -1;
    }
    png_set_read_fn(png, decoder, png_read_from_memory);
    /* Pillow verifies the checksum of every chunk before the image data,
       ancillary ones included; libpng would only warn about those. */
    png_set_crc_action(png, PNG_CRC_DEFAULT, PNG_CRC_ERROR_QUIT);
    png_read_info(png, info);

    int color_type = png_get_color_type(png, info);
    int bit_depth = png_get_bit_depth(png, info);
    decoder->png_gray16 = color_type == PNG_COLOR_TYPE_GRAY && bit_depth == 16;
    if (color_type == PNG_COLOR_TYPE_PALETTE) {
        png_set_palette_to_rgb(png);
    }
    if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) {
        png_set_expand_gray_1_2_4_to_8(png);
    }
    /* Pillow unpacks 16-bit samples by keeping the high byte (no rounding),
       which is what strip_16 does. */
    if (bit_depth == 16 && !decoder->png_gray16) {
        png_set_strip_16(png);
    }
    /* convert("RGB") drops alpha and transparency without compositing. */
    png_set_strip_alpha(png);
    if ((color_type & PNG_COLOR_MASK_COLOR) == 0 && !decoder->png_gray16) {
        png_set_gray_to_rgb(png);
    }
    png_set_interlace_handling(png);
    png_set_read_user_transform_fn(png, png_count_finished_row);

    decoder->width = (int)png_get_image_width(png, info);
    decoder->height = (int)png_get_image_height(png, info);
    decoder->png_rows_expected = png_data_rows(png_get_image_width(png, info), png_get_image_height(png, info),
                                               png_get_interlace_type(png, info) != PNG_INTERLACE_NONE);
    return 0;
}

/* 16-bit gray was read at full depth into its own buffer; Pillow clips it into RGB. */
static int png_finish_pixels(CImageDecoder *decoder, uint8_t *rgb) {
    if (decoder->png_gray16) {
        const uint8_t *big_endian = decoder->png_gray16_pixels;
        size_t count = (size_t)decoder->width * (size_t)decoder->height;
        for (size_t index = 0; index < count; index++, big_endian += 2, rgb += 3) {
            unsigned value = ((unsigned)big_endian[0] << 8) | big_endian[1];
            rgb[0] = rgb[1] = rgb[2] = (uint8_t)(value > 255 ? 255 : value);
        }
    }
    return 0;
}

static int png_read_pixels(CImageDecoder *decoder, uint8_t *rgb) {
    png_structp png = decoder->png;
    png_infop info = decoder->png_info;
    if (setjmp(png_jmpbuf(png))) {
        if (decoder->png_rows_finished != decoder->png_rows_expected) {
            return -1;
        }
        decoder->error[0] = '\0';
        return png_finish_pixels(decoder, rgb);
    }
    png_read_update_info(png, info);
    size_t width = (size_t)decoder->width;
    size_t height = (size_t)decoder->height;
    size_t row_bytes = png_get_rowbytes(png, info);
    size_t expected_row_bytes = width * (decoder->png_gray16 ? 2 : 3);
    if (row_bytes != expected_row_bytes) {
        set_error(decoder, "unsupported PNG layout (%zu bytes per row after conversion, expected %zu)",
                  row_bytes, expected_row_bytes);
        return -1;
    }
    uint8_t *target = rgb;
    if (decoder->png_gray16) {
        decoder->png_gray16_pixels = malloc(row_bytes * height);
        target = decoder->png_gray16_pixels;
    }
    decoder->png_rows = malloc(height * sizeof(png_bytep));
    if (target == NULL || decoder->png_rows == NULL) {
        set_error(decoder, "out of memory decoding a %zux%zu PNG", width, height);
        return -1;
    }
    for (size_t y = 0; y < height; y++) {
        decoder->png_rows[y] = target + y * row_bytes;
    }
    /* Pillow never checks the checksums of the image data chunks. */
    png_set_crc_action(png, PNG_CRC_QUIET_USE, PNG_CRC_QUIET_USE);
    png_read_image(png, decoder->png_rows);
    return png_finish_pixels(decoder, rgb);
}

/* ---- public entry points --------------------------------------------- */

int cimage_decoder_read_header(CImageDecoder *decoder, uint64_t max_pixels, int *width, int *height) {
    if (decoder->open_failed) {
        return -1;
    }
    decoder->format = detect_format(decoder);
    int status = -1;
    switch (decoder->format) {
        case FORMAT_JPEG: status = jpeg_read_header_info(decoder); break;
        case FORMAT_PNG: status = png_read_header_info(decoder); break;
        case FORMAT_UNKNOWN: break;
    }
    if (status != 0) {
        return -1;
    }
    uint64_t pixels = (uint64_t)decoder->width * (uint64_t)decoder->height;
    if (pixels > max_pixels) {
        set_error(decoder,
                  "image is %dx%d = %llu pixels, over the limit of %llu (decompression-bomb guard)",
                  decoder->width, decoder->height, (unsigned long long)pixels,
                  (unsigned long long)max_pixels);
        return -1;
    }
    *width = decoder->width;
    *height = decoder->height;
    return 0;
}

int cimage_decoder_read_rgb(CImageDecoder *decoder, uint8_t *rgb) {
    switch (decoder->format) {
        case FORMAT_JPEG: return jpeg_read_pixels(decoder, rgb);
        case FORMAT_PNG: return png_read_pixels(decoder, rgb);
        case FORMAT_UNKNOWN: break;
    }
    set_error(decoder, "read_rgb called before a successful read_header");
    return -1;
}

const char *cimage_decoder_error(const CImageDecoder *decoder) {
    return decoder->error[0] != '\0' ? decoder->error : "unknown decoding error";
}

void cimage_decoder_close(CImageDecoder *decoder) {
    if (decoder == NULL) {
        return;
    }
    if (decoder->jpeg_created) {
        jpeg_destroy_decompress(&decoder->jpeg);
    }
    if (decoder->png != NULL) {
        png_destroy_read_struct(&decoder->png, decoder->png_info != NULL ? &decoder->png_info : NULL, NULL);
    }
    free(decoder->png_gray16_pixels);
    free(decoder->png_rows);
    free(decoder->png_with_closed_idat);
    free(decoder->owned_data);
    free(decoder);
}
