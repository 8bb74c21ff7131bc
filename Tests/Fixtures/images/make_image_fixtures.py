#!/usr/bin/env python3
"""Generates the image fixtures of ImageTests.swift and PIL/torchvision's answers for them.

Run from anywhere (needs numpy, pillow, torch, torchvision):

    python3 Tests/Fixtures/images/make_image_fixtures.py
    python3 Tests/Fixtures/images/make_image_fixtures.py --external ~/photos /tmp/photo-fixtures

It rewrites this folder: the images, `reference/` (raw little-endian arrays) and
`manifest.json`. Everything is seeded, so a rerun with the same Pillow gives
the same files. The references are what the Swift pipeline must reproduce:

- `decoded`: uint8 HWC of `Image.open(f).convert("RGB")` (large images: only its zlib CRC-32)
- `preprocess[].pixels`: uint8 HWC after `Resize(resize)` and `CenterCrop(crop)`
- `preprocess[].tensor`: float32 CHW after ToTensor and Normalize(mean, std)
- `resize[].pixels`: uint8 HWC of `convert("RGB").resize((w, h), Image.BILINEAR)`

Bad files must make PIL raise; their messages are recorded for reference.
"""

import io
import json
import shutil
import struct
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import PIL
import torch
import torchvision
from PIL import Image, ImageDraw
from torchvision import transforms as T

HERE = Path(__file__).resolve().parent
BAD = HERE / "bad"
# convert("RGB") of a palette image with per-entry alpha warns; dropping alpha is the point here.
warnings.filterwarnings("ignore", message="Palette images with Transparency")
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


# ---- synthetic content ----------------------------------------------------

def synthetic_rgb(width, height, seed, smooth=False):
    """Gradients and waves, hard-edged shapes, then noise: both the smooth areas
    and the sharp edges a resampler can round differently."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = []
    for _ in range(3):
        wave = np.sin(x / max(width, 1) * rng.uniform(1, 6) * np.pi + rng.uniform(0, 6))
        wave *= np.cos(y / max(height, 1) * rng.uniform(1, 6) * np.pi + rng.uniform(0, 6))
        ramp = (x * rng.uniform(-1, 1) + y * rng.uniform(-1, 1)) / max(width + height, 1)
        channels.append(128 + 90 * wave + 60 * ramp)
    image = Image.fromarray(np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(3 if smooth else 8):
        box = sorted(rng.integers(0, width, 2)), sorted(rng.integers(0, height, 2))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = [box[0][0], box[1][0], box[0][1], box[1][1]]
        if rng.random() < 0.5:
            draw.ellipse(shape, fill=color)
        else:
            draw.rectangle(shape, outline=color, width=int(rng.integers(1, 4)))
    pixels = np.asarray(image).astype(np.float64)
    pixels += rng.normal(0, 2 if smooth else 14, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def synthetic_photo(width, height, seed):
    """Photo-like: soft blobs of colour and a little sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    pixels = np.zeros((height, width, 3)) + rng.uniform(40, 200, 3)
    for _ in range(40):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        radius = rng.uniform(0.03, 0.3) * width
        weight = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius ** 2))[..., None]
        pixels += weight * rng.uniform(-90, 90, 3)
    pixels += rng.normal(0, 3, pixels.shape)
    return np.clip(pixels, 0, 255).astype(np.uint8)


# ---- a minimal PNG writer, for what Pillow cannot save -------------------
# (16-bit RGB/LA/RGBA, 2-bit gray, Adam7 interlacing, a broken image-data CRC)

def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def pack_rows(samples, bit_depth):
    """samples: (rows, values per row) unsigned ints -> list of packed row bytes."""
    rows = []
    for row in samples:
        if bit_depth == 16:
            rows.append(row.astype(">u2").tobytes())
        elif bit_depth == 8:
            rows.append(row.astype(np.uint8).tobytes())
        else:
            per_byte = 8 // bit_depth
            padded = np.zeros(-(-len(row) // per_byte) * per_byte, dtype=np.uint8)
            padded[:len(row)] = row
            packed = np.zeros(len(padded) // per_byte, dtype=np.uint8)
            for index in range(per_byte):
                packed |= padded[index::per_byte] << (8 - bit_depth * (index + 1))
            rows.append(packed.tobytes())
    return rows


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def write_png(path, samples, bit_depth, color_type, interlaced=False, palette=None, transparency=None):
    """samples: (height, width, channels) array of values for that bit depth."""
    height, width, _ = samples.shape
    raw = b""
    passes = ADAM7 if interlaced else [(0, 0, 1, 1)]
    for x0, y0, dx, dy in passes:
        sub = samples[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        for row in pack_rows(sub.reshape(sub.shape[0], -1), bit_depth):
            raw += b"\0" + row
    data = b"\x89PNG\r\n\x1a\n"
    data += png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, int(interlaced)))
    if palette is not None:
        data += png_chunk(b"PLTE", bytes(palette))
    if transparency is not None:
        data += png_chunk(b"tRNS", bytes(transparency))
    data += png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b"")
    path.write_bytes(data)


# ---- the fixtures ------------------------------------------------------------

def jpeg(name, pixels, mode="RGB", **options):
    Image.fromarray(pixels).convert(mode).save(HERE / name, "JPEG", **options)


def make_good_images():
    """Writes the images; returns [(file name, description, preprocess cases, resize cases)]."""
    small = [(73, 64, False)]
    small_with_tensor = [(73, 64, True)]
    images = []

    jpeg("rgb_q90_420_300x200.jpg", synthetic_rgb(300, 200, 1), quality=90)
    images.append(("rgb_q90_420_300x200.jpg", "RGB JPEG, quality 90, 4:2:0 (Pillow's default)",
                   [(73, 64, True)], [(97, 55), (300, 31), (41, 200)]))
    jpeg("rgb_q90_444_97x131.jpg", synthetic_rgb(97, 131, 2), quality=90, subsampling=0)
    images.append(("rgb_q90_444_97x131.jpg", "RGB JPEG, 4:4:4", small, []))
    jpeg("rgb_q85_422_257x256.jpg", synthetic_rgb(257, 256, 3), quality=85, subsampling=1)
    images.append(("rgb_q85_422_257x256.jpg", "RGB JPEG, 4:2:2; Resize(256) keeps it, crop offset rounds half to even",
                   [(73, 64, False), (256, 224, False)], []))
    jpeg("rgb_q75_420_101x67.jpg", synthetic_rgb(101, 67, 4), quality=75)
    images.append(("rgb_q75_420_101x67.jpg", "RGB JPEG, 4:2:0 with odd sizes", small, []))
    jpeg("rgb_progressive_131x97.jpg", synthetic_rgb(131, 97, 5), quality=90, progressive=True)
    images.append(("rgb_progressive_131x97.jpg", "progressive RGB JPEG", small, []))
    jpeg("rgb_17x23.jpg", synthetic_rgb(17, 23, 6), quality=95)
    images.append(("rgb_17x23.jpg", "tiny RGB JPEG: every resize upscales",
                   [(73, 64, True), (256, 224, False)], [(50, 41), (17, 40), (5, 23)]))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW on display; Image.open does not apply it
    jpeg("rgb_exif_rotated_48x32.jpg", synthetic_rgb(48, 32, 7), quality=90, exif=exif.tobytes())
    images.append(("rgb_exif_rotated_48x32.jpg", "EXIF orientation 6, which PIL does not apply", small, []))
    jpeg("gray_64x64.jpg", synthetic_rgb(64, 64, 8), mode="L", quality=90)
    images.append(("gray_64x64.jpg", "grayscale JPEG", [(73, 64, True), (50, 64, True)], [(64, 31), (20, 64)]))
    jpeg("cmyk_40x500.jpg", synthetic_rgb(40, 500, 9), mode="CMYK", quality=90)
    images.append(("cmyk_40x500.jpg", "CMYK JPEG (Adobe, inverted)", small_with_tensor + [(20, 16, False)], [(7, 300)]))
    jpeg("rgb_restart_markers_61x45.jpg", synthetic_rgb(61, 45, 32), quality=90, restart_marker_rows=1)
    images.append(("rgb_restart_markers_61x45.jpg", "JPEG with a restart marker every MCU row", small, []))
    (HERE / "rgb_trailing_bytes_32x24.jpg").write_bytes(
        encoded(synthetic_rgb(32, 24, 10), "JPEG", quality=90) + b"trailing bytes after the end marker")
    images.append(("rgb_trailing_bytes_32x24.jpg", "JPEG followed by junk, which PIL ignores", small, []))

    Image.fromarray(synthetic_rgb(97, 131, 11)).save(HERE / "rgb_97x131.png")
    images.append(("rgb_97x131.png", "RGB PNG", small, []))
    rgba = np.dstack([synthetic_rgb(64, 64, 12), synthetic_rgb(64, 64, 13)[..., 0]])
    Image.fromarray(rgba, "RGBA").save(HERE / "rgba_64x64.png")
    images.append(("rgba_64x64.png", "RGBA PNG: alpha dropped, not composited", small, []))
    Image.fromarray(synthetic_rgb(40, 500, 14)[..., :2].copy(), "LA").save(HERE / "la_40x500.png")
    images.append(("la_40x500.png", "gray+alpha PNG; Resize(20) downsizes a tall image: vertical pass first",
                   small + [(20, 16, False)], [(30, 100)]))
    Image.fromarray(synthetic_rgb(131, 97, 15)[..., 1].copy(), "L").save(HERE / "l_131x97.png")
    images.append(("l_131x97.png", "grayscale PNG", small, []))
    palette_image = Image.fromarray(synthetic_rgb(64, 64, 16)).quantize(colors=200, dither=Image.Dither.NONE)
    palette_image.save(HERE / "p_trns_64x64.png", transparency=bytes(np.arange(200) % 256))
    images.append(("p_trns_64x64.png", "palette PNG with per-entry transparency", small_with_tensor, []))
    four_bit = Image.fromarray(synthetic_rgb(37, 29, 17)).quantize(colors=16, dither=Image.Dither.NONE)
    four_bit.save(HERE / "p4_37x29.png", bits=4)
    images.append(("p4_37x29.png", "4-bit palette PNG", small, []))
    Image.fromarray(synthetic_rgb(17, 23, 18)[..., 0] > 128).save(HERE / "bilevel_17x23.png")
    images.append(("bilevel_17x23.png", "1-bit PNG", small, []))
    gray16 = (synthetic_rgb(64, 64, 19)[..., 0].astype(np.uint16) * 4).astype(np.uint16)
    Image.fromarray(gray16).save(HERE / "gray16_64x64.png")
    images.append(("gray16_64x64.png", "16-bit grayscale PNG: PIL's I;16 -> RGB clips at 255", small_with_tensor, []))

    rng = np.random.default_rng(20)
    rgb16 = synthetic_rgb(97, 131, 21).astype(np.uint16) * 257 + rng.integers(0, 257, (131, 97, 3)).astype(np.uint16)
    write_png(HERE / "rgb16_97x131.png", rgb16, 16, 2)
    images.append(("rgb16_97x131.png", "16-bit RGB PNG: PIL keeps the high byte", small, []))
    la16 = np.dstack([synthetic_rgb(23, 17, 22)[..., 0].astype(np.uint16) * 257 + 99, np.full((17, 23), 3000)])
    write_png(HERE / "la16_23x17.png", la16, 16, 4)
    images.append(("la16_23x17.png", "16-bit gray+alpha PNG", small, []))
    rgba16 = np.dstack([rgb16[:40, :50], np.full((40, 50), 12345)])
    write_png(HERE / "rgba16_50x40.png", rgba16, 16, 6)
    images.append(("rgba16_50x40.png", "16-bit RGBA PNG", small, []))
    write_png(HERE / "gray2_trns_19x13.png", (synthetic_rgb(19, 13, 23)[..., :1] // 64), 2, 0,
              transparency=struct.pack(">H", 2))
    images.append(("gray2_trns_19x13.png", "2-bit grayscale PNG with a transparent gray level", small, []))
    write_png(HERE / "gray16_trns_interlaced_19x13.png", synthetic_rgb(19, 13, 30)[..., :1].astype(np.uint16) * 3, 16, 0,
              interlaced=True, transparency=struct.pack(">H", 300))
    images.append(("gray16_trns_interlaced_19x13.png", "interlaced 16-bit grayscale PNG with tRNS", small, []))
    write_png(HERE / "rgb_trns_19x13.png", synthetic_rgb(19, 13, 31), 8, 2, transparency=struct.pack(">HHH", 1, 2, 3))
    images.append(("rgb_trns_19x13.png", "RGB PNG with a transparent colour", small, []))
    write_png(HERE / "rgb_interlaced_37x29.png", synthetic_rgb(37, 29, 24), 8, 2, interlaced=True)
    images.append(("rgb_interlaced_37x29.png", "Adam7-interlaced RGB PNG", small, []))
    write_png(HERE / "p_interlaced_trns_33x21.png", (synthetic_rgb(33, 21, 25)[..., :1] // 16), 4, 3, interlaced=True,
              palette=np.random.default_rng(26).integers(0, 256, 48).astype(np.uint8),
              transparency=[0, 128, 255])
    images.append(("p_interlaced_trns_33x21.png", "interlaced 4-bit palette PNG with tRNS", small, []))
    write_png(HERE / "rgb_bad_idat_crc_23x17.png", synthetic_rgb(23, 17, 27), 8, 2)
    data = bytearray((HERE / "rgb_bad_idat_crc_23x17.png").read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 4 + struct.unpack(">I", data[idat - 4:idat])[0]] ^= 0xFF
    (HERE / "rgb_bad_idat_crc_23x17.png").write_bytes(bytes(data))
    images.append(("rgb_bad_idat_crc_23x17.png", "PNG whose image-data CRC is wrong: PIL never checks it", small, []))
    whole = encoded(synthetic_rgb(29, 21, 33), "PNG")
    idat = whole.index(b"IDAT")
    idat_end = idat + 4 + struct.unpack(">I", whole[idat - 4:idat])[0]
    (HERE / "rgb_cut_in_zlib_trailer_29x21.png").write_bytes(whole[:idat_end - 2])
    images.append(("rgb_cut_in_zlib_trailer_29x21.png", "PNG cut inside the zlib checksum: every row is there, PIL reads it",
                   small, []))

    jpeg("photo_1024x768_q95.jpg", synthetic_photo(1024, 768, 28), quality=95)
    images.append(("photo_1024x768_q95.jpg", "large smooth photo-like JPEG, quality 95",
                   [(256, 224, False)], []))
    jpeg("photo_500x375_q90.jpg", synthetic_photo(500, 375, 29), quality=90)
    images.append(("photo_500x375_q90.jpg", "photo-like JPEG at a typical dataset size",
                   [(256, 224, False), (73, 64, False)], []))
    return images


def encoded(pixels, fmt, **options):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


def make_bad_images():
    """Writes files PIL refuses to read; returns [(file name, what is wrong)]."""
    BAD.mkdir(exist_ok=True)
    jpeg_bytes = encoded(synthetic_rgb(80, 60, 40), "JPEG", quality=90)
    progressive = encoded(synthetic_rgb(80, 60, 41), "JPEG", quality=90, progressive=True)
    png_bytes = encoded(synthetic_rgb(80, 60, 42), "PNG")
    bad = {
        "empty.jpg": (b"", "zero-byte file"),
        "truncated.jpg": (jpeg_bytes[: len(jpeg_bytes) * 6 // 10], "JPEG cut inside the scan data"),
        "no_end_marker.jpg": (jpeg_bytes[:-2], "JPEG missing only its end marker (PIL reports it truncated)"),
        "truncated_progressive.jpg": (progressive[: len(progressive) * 8 // 10], "progressive JPEG cut short"),
        "text.png": (b"This is a text file, not an image.\n" * 3, "text renamed .png"),
        "truncated.png": (png_bytes[: len(png_bytes) // 2], "PNG cut inside the image data"),
    }
    crc = bytearray(png_bytes)
    crc[29] ^= 0x01  # last byte of the IHDR checksum
    bad["bad_crc.png"] = (bytes(crc), "PNG whose IHDR checksum is wrong")
    comment = png_chunk(b"tEXt", b"Comment\0checksum below is wrong")
    bad["bad_text_crc.png"] = (png_bytes[:33] + comment[:-1] + bytes([comment[-1] ^ 1]) + png_bytes[33:],
                               "PNG with a text chunk before the image data whose checksum is wrong")
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    bad["huge.png"] = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
                       + png_chunk(b"IEND", b""), "PNG header claiming 60000x60000")
    huge_jpeg = bytearray(jpeg_bytes)
    sof = huge_jpeg.index(b"\xff\xc0")
    huge_jpeg[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    bad["huge.jpg"] = (bytes(huge_jpeg), "JPEG header claiming 60000x60000")

    results = []
    for name, (data, description) in bad.items():
        (BAD / name).write_bytes(data)
        try:
            with Image.open(BAD / name) as image:
                image.load()
        except Exception as error:  # noqa: BLE001 - any PIL failure is the expected outcome
            results.append({"file": f"bad/{name}", "description": description,
                            "pil_error": f"{type(error).__name__}: {error}".replace(str(BAD / name), name)})
        else:
            raise SystemExit(f"PIL unexpectedly reads bad/{name}")
    return results


def save_array(array, folder, name):
    (folder / "reference").mkdir(exist_ok=True)
    (folder / "reference" / name).write_bytes(array.astype("<f4" if array.dtype == np.float32 else np.uint8).tobytes())
    return f"reference/{name}"


def reference_entry(folder, file, description, preprocess_cases, resize_cases):
    """PIL's and torchvision's answers for one image in `folder`, written under folder/reference."""
    stem = Path(file).stem
    with Image.open(folder / file) as opened:
        source_mode = opened.mode
        rgb = opened.convert("RGB")
    decoded = np.asarray(rgb)
    entry = {"file": file, "description": description, "pil_mode": source_mode,
             "width": rgb.width, "height": rgb.height, "decoded_crc32": zlib.crc32(decoded.tobytes())}
    # Raw decoded pixels only for the small ones; larger images are checked by checksum.
    if decoded.size <= 200_000:
        entry["decoded"] = save_array(decoded, folder, f"{stem}.decoded.u8")
    entry["preprocess"] = []
    for resize, crop, with_tensor in preprocess_cases:
        cropped = T.CenterCrop(crop)(T.Resize(resize)(rgb))
        case = {"resize": resize, "crop": crop,
                "pixels": save_array(np.asarray(cropped), folder, f"{stem}.r{resize}c{crop}.u8")}
        if with_tensor:
            tensor = T.Normalize(MEAN, STD)(T.ToTensor()(cropped)).numpy()
            case["tensor"] = save_array(tensor, folder, f"{stem}.r{resize}c{crop}.f32")
        entry["preprocess"].append(case)
    entry["resize"] = [
        {"width": width, "height": height,
         "pixels": save_array(np.asarray(rgb.resize((width, height), Image.BILINEAR)), folder,
                              f"{stem}.{width}x{height}.u8")}
        for width, height in resize_cases
    ]
    return entry


def write_manifest(folder, entries, bad):
    manifest = {
        "generator": "make_image_fixtures.py",
        "versions": {"pillow": PIL.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__},
        "mean": MEAN, "std": STD,
        "images": entries,
        "bad": bad,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    print(f"{len(entries)} images, {len(bad)} bad files, {total / 1e6:.2f} MB in {folder}")


def make_committed_fixtures():
    (HERE / "reference").mkdir(exist_ok=True)
    for old in list(HERE.glob("*.jpg")) + list(HERE.glob("*.png")) + list((HERE / "reference").iterdir()):
        old.unlink()
    entries = [reference_entry(HERE, *image) for image in make_good_images()]
    write_manifest(HERE, entries, make_bad_images())


def make_external_fixtures(source, folder):
    """Your own photos as a fixture folder; check them with
    BOTTLENECK_IMAGE_FIXTURES=folder swift test --filter ImageTests"""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for path in sorted(source.rglob("*")):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png") or not path.is_file():
            continue
        name = f"{len(entries):04d}_{path.name}"
        shutil.copyfile(path, folder / name)
        try:
            entries.append(reference_entry(folder, name, str(path), [(256, 224, True)], []))
        except Exception as error:  # noqa: BLE001 - PIL cannot read it: not a parity case
            print(f"skipped {path}: {error}")
            (folder / name).unlink()
    write_manifest(folder, entries, [])


if __name__ == "__main__":
    arguments = sys.argv[1:]
    if arguments[:1] == ["--external"] and len(arguments) == 3:
        make_external_fixtures(Path(arguments[1]), Path(arguments[2]))
    elif not arguments:
        make_committed_fixtures()
    else:
        raise SystemExit("usage: make_image_fixtures.py [--external SOURCE_FOLDER FIXTURE_FOLDER]")
