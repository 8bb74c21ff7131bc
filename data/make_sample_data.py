"""Makes data/shapes: the small labelled sample dataset the demo and README run on.

Three classes of synthetic pictures (no photos can be shipped): discs, stripes and
checkerboards, with random colours, sizes, positions, aspect ratios, blur and noise,
split into train/ (20 per class) and val/ (8 per class), saved as JPEG and PNG in
the modes people's folders really hold (RGB, grayscale, palette, RGBA).

    python3 data/make_sample_data.py        # needs Pillow; deterministic (seeded)
"""
import math
import os
import random
import shutil

from PIL import Image, ImageDraw, ImageFilter

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "shapes")
CLASSES = ["checkerboard", "discs", "stripes"]
COUNTS = {"train": 20, "val": 8}


def random_colour(rng):
    return tuple(rng.randrange(256) for _ in range(3))


def background(rng, size):
    top, bottom = random_colour(rng), random_colour(rng)
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(size[1]):
        t = y / max(1, size[1] - 1)
        draw.line([(0, y), (size[0], y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)))
    return image


def discs(rng, size):
    image = background(rng, size)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(3, 9)):
        r = rng.randint(min(size) // 12, min(size) // 4)
        x, y = rng.randrange(size[0]), rng.randrange(size[1])
        draw.ellipse([x - r, y - r, x + r, y + r], fill=random_colour(rng), outline=random_colour(rng), width=2)
    return image


def stripes(rng, size):
    image = background(rng, size)
    draw = ImageDraw.Draw(image)
    angle = rng.uniform(0, math.pi)
    period = rng.randint(10, 40)
    colour = random_colour(rng)
    dx, dy = math.cos(angle), math.sin(angle)
    diagonal = int(math.hypot(*size))
    for offset in range(-diagonal, diagonal, period):
        cx, cy = size[0] / 2 + offset * dx, size[1] / 2 + offset * dy
        draw.line([(cx - dy * diagonal, cy + dx * diagonal), (cx + dy * diagonal, cy - dx * diagonal)],
                  fill=colour, width=max(2, period // 3))
    return image


def checkerboard(rng, size):
    image = background(rng, size)
    draw = ImageDraw.Draw(image)
    cell = rng.randint(12, 48)
    colour = random_colour(rng)
    for row in range(0, size[1], cell):
        for column in range(0, size[0], cell):
            if (row // cell + column // cell) % 2 == 0:
                draw.rectangle([column, row, column + cell - 1, row + cell - 1], fill=colour)
    return image.rotate(rng.uniform(-20, 20), resample=Image.BILINEAR, fillcolor=colour)


def finish(rng, image):
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
    noise = Image.effect_noise(image.size, rng.uniform(5, 25)).convert("RGB")
    return Image.blend(image, noise, 0.12)


def save(rng, image, path_without_extension, index):
    """Mostly RGB JPEG, with the other modes ImageFolders really contain."""
    kind = index % 10
    if kind == 3:
        image.convert("L").save(path_without_extension + ".jpg", quality=88)
    elif kind == 5:
        image.save(path_without_extension + ".png")
    elif kind == 7:
        image.convert("P", palette=Image.ADAPTIVE, colors=64).save(path_without_extension + ".png")
    elif kind == 9:
        rgba = image.convert("RGBA")
        rgba.putalpha(rng.randint(120, 255))
        rgba.save(path_without_extension + ".png")
    else:
        image.save(path_without_extension + (".JPG" if kind == 1 else ".jpg"), quality=rng.randint(80, 95))


def main():
    rng = random.Random(2026)
    shutil.rmtree(ROOT, ignore_errors=True)
    makers = {"discs": discs, "stripes": stripes, "checkerboard": checkerboard}
    for split, count in COUNTS.items():
        for name in CLASSES:
            folder = os.path.join(ROOT, split, name)
            os.makedirs(folder)
            for index in range(count):
                width = rng.randint(180, 420)
                height = int(width * rng.choice([0.6, 0.75, 1.0, 1.33]))
                image = finish(rng, makers[name](rng, (width, height)))
                save(rng, image, os.path.join(folder, f"{name}_{index:03d}"), index)


if __name__ == "__main__":
    main()
