#!/usr/bin/env python3
"""Draw Baton's icons from one source drawing: a relay baton in flight.

Every icon the app ships comes from `glyph()` below, so the app icon and
the menu-bar icons are the same shape:

- `icons/icon.png`, `32x32.png`, `128x128.png`, `128x128@2x.png`,
  `icon.icns`, `icon.ico`: the app icon (white baton on a rounded square).
- `icons/tray-<look>.png` (18 px) and `tray-<look>@2x.png` (36 px): the
  menu-bar icon (macOS shows it 18 points tall), black on transparent (a macOS template image, so the menu
  bar tints it for light and dark), in four looks: `stopped` (an outline,
  not moving), `serving` (solid, with speed lines), `degraded` (serving with
  a dot: a studio is down) and `error` (with a cross: nothing can serve).

Run from anywhere: `python3 src-tauri/tools/make_icons.py` (needs Pillow).
"""

import math
import os

from PIL import Image, ImageChops, ImageDraw

HERE = os.path.dirname(os.path.abspath(__file__))
ICONS = os.path.join(HERE, "..", "icons")

# Supersampling: draw big, shrink with a good filter, for smooth edges.
SS = 8

# The drawing, in a unit square (y down). The baton runs from its tail at
# the lower left to its head at the upper right; speed lines trail it.
TAIL = (0.42, 0.74)
HEAD = (0.86, 0.30)
RADIUS = 0.12
SPEED_LINES = [  # (y, x from, x to): horizontal, clear of the baton
    (0.34, 0.22, 0.46),
    (0.49, 0.08, 0.32),
    (0.64, 0.14, 0.20),
]
LINE = 0.075
BADGE = (0.79, 0.79)
BADGE_R = 0.19


def capsule(draw, p0, p1, r, fill, scale):
    """A rounded bar from p0 to p1 of radius r (unit coordinates)."""
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    n = math.hypot(dx, dy)
    nx, ny = -dy / n * r, dx / n * r
    pts = [(x0 + nx, y0 + ny), (x1 + nx, y1 + ny), (x1 - nx, y1 - ny), (x0 - nx, y0 - ny)]
    draw.polygon([(x * scale, y * scale) for x, y in pts], fill=fill)
    for cx, cy in (p0, p1):
        draw.ellipse([(cx - r) * scale, (cy - r) * scale, (cx + r) * scale, (cy + r) * scale], fill=fill)


def glyph(size, look="serving", bands=False):
    """The baton as an 8-bit mask of `size` px (255 = ink)."""
    s = size * SS
    mask = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(mask)
    capsule(d, TAIL, HEAD, RADIUS, 255, s)
    if look == "stopped":
        # An outline: the same bar with its inside taken out.
        capsule(d, TAIL, HEAD, RADIUS - 0.07, 0, s)
    elif bands:
        # The grip bands of a real baton, only where there are pixels for them.
        for t in (0.3, 0.7):
            cx = TAIL[0] + (HEAD[0] - TAIL[0]) * t
            cy = TAIL[1] + (HEAD[1] - TAIL[1]) * t
            ux, uy = (HEAD[0] - TAIL[0]), (HEAD[1] - TAIL[1])
            n = math.hypot(ux, uy)
            ux, uy = ux / n * 0.012, uy / n * 0.012
            capsule(d, (cx - ux - uy * 12, cy - uy + ux * 12), (cx - ux + uy * 12, cy - uy - ux * 12), 0.012, 0, s)
    if look != "stopped":
        for y, xa, xb in SPEED_LINES:
            capsule(d, (xa, y), (xb, y), LINE / 2, 255, s)
    if look in ("degraded", "error"):
        # Clear a ring around the badge so it reads as separate at 18 px.
        gap = BADGE_R + 0.07
        d.ellipse([(BADGE[0] - gap) * s, (BADGE[1] - gap) * s, (BADGE[0] + gap) * s, (BADGE[1] + gap) * s], fill=0)
        if look == "degraded":
            d.ellipse(
                [(BADGE[0] - BADGE_R) * s, (BADGE[1] - BADGE_R) * s, (BADGE[0] + BADGE_R) * s, (BADGE[1] + BADGE_R) * s],
                fill=255,
            )
        else:
            k = BADGE_R * 0.8
            w = LINE / 2 * 1.1
            capsule(d, (BADGE[0] - k, BADGE[1] - k), (BADGE[0] + k, BADGE[1] + k), w, 255, s)
            capsule(d, (BADGE[0] - k, BADGE[1] + k), (BADGE[0] + k, BADGE[1] - k), w, 255, s)
    return mask.resize((size, size), Image.LANCZOS)


def tray(size, look):
    """Black ink on transparency: what a template image must be."""
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    img.putalpha(glyph(size, look))
    return img


def rounded_square(size):
    """The macOS app-icon plate: a rounded square with a margin, as a mask."""
    s = size * SS
    m = Image.new("L", (s, s), 0)
    inset = 0.09 * s  # Apple's grid leaves ~10% around the plate
    ImageDraw.Draw(m).rounded_rectangle([inset, inset, s - inset, s - inset], radius=0.2 * s, fill=255)
    return m.resize((size, size), Image.LANCZOS)


def app_icon(size):
    """White baton on a deep blue to teal plate."""
    top, bottom = (37, 56, 140), (14, 148, 136)
    grad = Image.new("RGBA", (1, 256))
    for y in range(256):
        t = y / 255
        grad.putpixel((0, y), tuple(round(a + (b - a) * t) for a, b in zip(top, bottom)) + (255,))
    plate = grad.resize((size, size), Image.BICUBIC)
    plate.putalpha(rounded_square(size))
    # The glyph sits inside the plate's margin.
    inner = round(size * 0.62)
    g = glyph(inner, "serving", bands=size >= 128)
    ink = Image.new("RGBA", (inner, inner), (255, 255, 255, 255))
    ink.putalpha(g)
    # A soft shadow under the baton gives it some lift on the plate.
    shadow = Image.new("RGBA", (inner, inner), (0, 0, 0, 90))
    shadow.putalpha(ImageChops.multiply(g, Image.new("L", g.size, 90)))
    off = (size - inner) // 2
    out = plate.copy()
    out.alpha_composite(shadow, (off, off + max(1, size // 128)))
    out.alpha_composite(ink, (off, off))
    return out


def main():
    os.makedirs(ICONS, exist_ok=True)
    for look in ("stopped", "serving", "degraded", "error"):
        # 18 points tall in the menu bar: 18 px at 1x, 36 px on Retina.
        tray(18, look).save(os.path.join(ICONS, f"tray-{look}.png"))
        tray(36, look).save(os.path.join(ICONS, f"tray-{look}@2x.png"))
    big = app_icon(1024)
    big.save(os.path.join(ICONS, "icon.png"))
    for name, px in (("32x32.png", 32), ("128x128.png", 128), ("128x128@2x.png", 256)):
        app_icon(px).save(os.path.join(ICONS, name))
    # Each size drawn on its own (not shrunk from 1024), so small ones stay crisp.
    icns_sizes = [16, 32, 64, 128, 256, 512, 1024]
    big.save(
        os.path.join(ICONS, "icon.icns"),
        append_images=[app_icon(px) for px in icns_sizes if px != 1024],
    )
    app_icon(256).save(
        os.path.join(ICONS, "icon.ico"),
        sizes=[(16, 16), (24, 24), (32, 32), (48, 48), (64, 64), (128, 128), (256, 256)],
    )


if __name__ == "__main__":
    main()
