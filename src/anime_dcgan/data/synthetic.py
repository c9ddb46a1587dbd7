"""The built-in data source: anime-style faces drawn procedurally with Pillow (works offline).

A face is described by categorical attributes (hair colour, eye colour, fringe style, ...), each
sampled uniformly so every class is equally common, plus continuous jitter (position, scale, tilt,
proportions, shades). It is drawn with ``PIL.ImageDraw`` at ``SUPERSAMPLE`` times the final size and
downsampled with a Lanczos filter, which antialiases the hard polygon edges.

Reproducibility: image ``index`` of dataset ``seed`` depends only on ``(seed, index, size)``. Its
attributes come from a random stream seeded by ``(seed, index, 0)`` and its jitter from an
independent stream seeded by ``(seed, index, 1)``, so the same face can be redrawn with one attribute
changed (``render_face``) and nothing else moves.

Geometry is written in *frame units*: (0, 0) is the top-left corner of the final image and (1, 1)
the bottom-right one; ``_Frame`` maps those to supersampled pixels and applies the face's jitter.
"""

from __future__ import annotations

import csv
import math
import os
import random
import re
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageChops, ImageDraw
from tqdm import tqdm

from anime_dcgan.util.parallel import default_workers, ordered_map

RGB = tuple[int, int, int]
Point = tuple[float, float]
T = TypeVar("T")

SUPERSAMPLE = 4          # draw at 4x and downsample: antialiased edges at a fraction of the cost of 8x
MIN_SIZE = 16            # below this the eyes are a few pixels and the attributes stop being visible
IMAGES_SUBDIR = "images"
ATTRIBUTES_FILE = "attributes.csv"
_IMAGE_NAME = re.compile(r"^(\d{6,})\.png(\.partial)?$")  # ours, finished or interrupted
_CHUNK_IMAGES = 64       # images per worker task: amortises pickling, still a smooth progress bar

# Base colours per class. Shades are jittered per image only within a narrow band, so that classes
# stay separable at 64x64 (a classifier is trained on these labels).
HAIR_COLORS: dict[str, RGB] = {
    "black": (44, 40, 56),
    "brown": (122, 76, 44),
    "blonde": (246, 216, 118),
    "orange": (244, 134, 44),
    "red": (206, 38, 52),
    "pink": (250, 150, 196),
    "purple": (142, 88, 204),
    "blue": (52, 96, 212),
    "green": (56, 162, 82),
    "silver": (214, 218, 232),
}
EYE_COLORS: dict[str, RGB] = {
    "blue": (48, 112, 232),
    "aqua": (28, 192, 200),
    "green": (40, 172, 76),
    "gold": (236, 176, 28),
    "brown": (132, 78, 38),
    "red": (214, 34, 44),
    "purple": (152, 70, 214),
}
SKIN_TONES: dict[str, RGB] = {
    "porcelain": (255, 240, 232),
    "fair": (255, 228, 212),
    "peach": (252, 212, 184),
    "tan": (228, 178, 138),
    "brown": (172, 118, 84),
}
# Backgrounds and clothes are picked among these, minus any too close to the hair colour.
_BACKGROUND_COLORS: tuple[RGB, ...] = (
    (250, 250, 250), (250, 240, 214), (250, 214, 226), (204, 226, 250), (210, 240, 220),
    (226, 214, 246), (250, 246, 188), (198, 198, 206), (150, 196, 236), (250, 198, 168),
    (118, 170, 212), (230, 160, 162), (160, 202, 140), (88, 90, 112), (60, 70, 110), (240, 226, 200),
)
_CLOTHES_COLORS: tuple[RGB, ...] = (
    (248, 248, 248), (40, 46, 76), (30, 30, 34), (196, 40, 48), (70, 110, 190), (236, 206, 96),
    (120, 150, 110), (150, 110, 170), (210, 130, 150), (110, 90, 80),
)
_ACCESSORY_COLORS: tuple[RGB, ...] = (
    (230, 40, 60), (250, 250, 250), (250, 210, 60), (60, 110, 230), (40, 40, 44), (250, 130, 190),
)
_MIN_COLOR_DISTANCE = 120.0  # RGB distance below which a background could pass for hair

ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {
    "hair_color": tuple(HAIR_COLORS),
    "eye_color": tuple(EYE_COLORS),
    "bangs": ("blunt", "side_swept", "parted", "spiky", "hime"),
    "hair_length": ("short", "medium", "long"),
    "face_shape": ("round", "oval", "pointed"),
    "skin_tone": tuple(SKIN_TONES),
    "mouth": ("smile", "grin", "neutral", "cat", "surprised"),
    "blush": ("none", "soft", "lines"),
    "background": ("solid", "gradient", "stripes", "dots"),
    "accessory": ("none", "ribbon", "hairclip", "headband"),
}

_LINE_DARK: RGB = (52, 30, 34)   # eye lash line and mouth: the dark brown-black of anime line art
_OUTLINE = 0.011                 # width of the outlines around hair, face and clothes, in frame units


# ----------------------------------------------------------------------------------------- helpers

def _rng(seed: int, index: int, stream: int) -> random.Random:
    # SeedSequence mixes (seed, index, stream) into well-separated states; random.Random is then
    # used for its cheap scalar draws (a few hundred per face)
    state = np.random.SeedSequence([seed, index, stream]).generate_state(4, dtype=np.uint32)
    return random.Random(int.from_bytes(state.tobytes(), "little"))


def _pick(rng: random.Random, options: Sequence[T]) -> T:
    # one draw whatever len(options) is, so later draws do not shift when the options change
    return options[min(int(rng.random() * len(options)), len(options) - 1)]


def _scale(color: RGB, factor: float) -> RGB:
    r, g, b = (max(0, min(255, round(channel * factor))) for channel in color)
    return r, g, b


def _mix(color: RGB, other: RGB, t: float) -> RGB:
    r, g, b = (round(a + (b - a) * t) for a, b in zip(color, other))
    return r, g, b


def _distance(color: RGB, other: RGB) -> float:
    return math.dist(color, other)


def _bezier(p0: Point, p1: Point, p2: Point, p3: Point, n: int = 12) -> list[Point]:
    points = []
    for i in range(n):
        t = i / (n - 1)
        a, b, c, d = (1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t * t, t ** 3
        points.append((a * p0[0] + b * p1[0] + c * p2[0] + d * p3[0],
                       a * p0[1] + b * p1[1] + c * p2[1] + d * p3[1]))
    return points


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 28) -> list[Point]:
    return [(cx + rx * math.cos(2 * math.pi * i / n), cy + ry * math.sin(2 * math.pi * i / n))
            for i in range(n)]


class _Frame:
    """Maps frame units to supersampled pixels, applying the face's shift, zoom and tilt."""

    def __init__(self, pixels: int, shift: Point, zoom: float, tilt_deg: float,
                 pivot: Point = (0.5, 0.6)):
        self.pixels = pixels
        self.zoom = zoom
        self.pivot = pivot
        self.shift = shift
        self.cos = math.cos(math.radians(tilt_deg))
        self.sin = math.sin(math.radians(tilt_deg))

    def px(self, points: Sequence[Point]) -> list[Point]:
        px, py = self.pivot
        sx, sy = self.shift
        k = self.pixels * self.zoom
        c, s = self.cos, self.sin
        return [(self.pixels * (px + sx) + k * (c * (x - px) - s * (y - py)),
                 self.pixels * (py + sy) + k * (s * (x - px) + c * (y - py))) for x, y in points]

    def width(self, units: float) -> int:
        return max(1, round(units * self.pixels * self.zoom))


# ----------------------------------------------------------------------------------------- drawing

def _draw_background(image: Image.Image, kind: str, hair: RGB, rng: random.Random) -> None:
    allowed = [c for c in _BACKGROUND_COLORS if _distance(c, hair) >= _MIN_COLOR_DISTANCE]
    base = _pick(rng, allowed)
    second = _pick(rng, allowed)
    if second == base:
        second = _mix(base, (255, 255, 255) if sum(base) < 450 else (90, 90, 110), 0.3)
    angle = rng.uniform(-0.6, 0.6)
    spacing = rng.uniform(0.12, 0.22)
    pixels = image.width
    draw = ImageDraw.Draw(image)
    if kind == "solid":
        draw.rectangle((0, 0, pixels, pixels), fill=base)
    elif kind == "gradient":
        t = np.linspace(0.0, 1.0, pixels, dtype=np.float32)[:, None, None]  # (H, 1, 1)
        column = (1 - t) * np.array(base, np.float32) + t * np.array(second, np.float32)  # (H, 1, 3)
        # stretching a one-pixel column sideways is far cheaper than building the full array
        image.paste(Image.fromarray(column.round().astype(np.uint8)).resize((pixels, pixels),
                                                                          Image.Resampling.NEAREST))
    elif kind == "stripes":
        draw.rectangle((0, 0, pixels, pixels), fill=base)
        soft = _mix(base, second, 0.6)
        slope = math.tan(angle)
        x = -1.0
        while x < 2.0:
            band = [(x, 0.0), (x + spacing / 2, 0.0), (x + spacing / 2 + slope, 1.0), (x + slope, 1.0)]
            draw.polygon([(u * pixels, v * pixels) for u, v in band], fill=soft)
            x += spacing
    else:  # dots
        draw.rectangle((0, 0, pixels, pixels), fill=base)
        soft = _mix(base, second, 0.6)
        radius = spacing * 0.22 * pixels
        for row in range(int(1 / spacing) + 2):
            for col in range(int(1 / spacing) + 2):
                cx = (col + 0.5 * (row % 2)) * spacing * pixels
                cy = row * spacing * pixels
                draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=soft)


def _face_outline(shape: str, half_width: float, cheek_y: float, chin_y: float) -> list[Point]:
    top_y = 0.16
    upper = [(0.5 + half_width * math.cos(math.pi + math.pi * i / 16),
              cheek_y + (cheek_y - top_y) * math.sin(math.pi + math.pi * i / 16)) for i in range(17)]
    # half width along the jaw, u = 0 at the cheek and 1 at the chin
    profile = {
        "round": lambda u: (1 - u ** 2.2) ** 0.55,
        "oval": lambda u: (1 - u ** 1.8) ** 0.7,
        "pointed": lambda u: (1 - u ** 1.25) ** 0.9,
    }[shape]
    right = [(0.5 + half_width * profile(i / 12), cheek_y + (chin_y - cheek_y) * i / 12)
             for i in range(1, 13)]
    left = [(1.0 - x, y) for x, y in reversed(right[:-1])]
    return upper + right + left


def _fringe_edge(style: str, rng: random.Random, left: float, right: float,
                 hairline_y: float, tip_y: float) -> list[Point]:
    """Lower edge of the bangs from the right temple to the left one: strand notches and tips."""
    edge: list[Point] = []
    if style in ("blunt", "hime"):
        strands = rng.randint(8, 11)
        depth = 0.035 if style == "blunt" else 0.02
        tips = [tip_y + rng.uniform(-0.008, 0.008) for _ in range(strands)]
        sweeps = [0.0] * strands
    elif style == "spiky":
        strands = rng.randint(5, 7)
        depth = 0.13
        tips = [tip_y + rng.uniform(-0.03, 0.04) for _ in range(strands)]
        sweeps = [rng.uniform(-0.025, 0.025) for _ in range(strands)]
    elif style == "side_swept":
        strands = rng.randint(5, 7)
        depth = 0.09
        direction = _pick(rng, (-1.0, 1.0))
        tips = [tip_y + direction * 0.07 * (2 * i / (strands - 1) - 1) + rng.uniform(-0.01, 0.01)
                for i in range(strands)]
        sweeps = [-direction * 0.05] * strands
    else:  # parted: two curtains that part in the middle and reveal the forehead
        part_x = 0.5 + rng.uniform(-0.04, 0.04)
        part_y = hairline_y + 0.05
        per_side = rng.randint(3, 4)
        for side_left, side_right, outward in ((part_x, right, 1.0), (left, part_x, -1.0)):
            bounds = [side_right - (side_right - side_left) * i / per_side for i in range(per_side + 1)]
            for i in range(per_side):
                a, b = bounds[i], bounds[i + 1]
                mid = (a + b) / 2
                # tips drop lower the further they are from the parting
                reach = abs(mid - part_x) / max(abs(side_right - side_left), 1e-6)
                tip = part_y + (tip_y + 0.03 - part_y) * min(1.0, 0.35 + reach)
                edge.append((a, tip - 0.06 if edge else tip - 0.02))
                edge.append((mid + outward * 0.03, tip + rng.uniform(-0.01, 0.01)))
            if outward > 0:
                edge.append((part_x, part_y))
        return edge
    bounds = [right - (right - left) * i / strands for i in range(strands + 1)]
    for i in range(strands):
        a, b = bounds[i], bounds[i + 1]
        edge.append((a, min(tips[i], tips[i - 1] if i else tips[i]) - depth))
        edge.append(((a + b) / 2 + sweeps[i], tips[i]))
    edge.append((left, tips[-1] - depth))
    return edge


def _draw_eye(draw: ImageDraw.ImageDraw, eye_draw: ImageDraw.ImageDraw, mask_draw: ImageDraw.ImageDraw,
              frame: _Frame, cx: float, cy: float, outward: float, scale: float, iris: RGB,
              lash: RGB, slant: float) -> list[Point]:
    """Draw one eye: sclera + iris on the eye layer (clipped by the mask), lashes on the face.

    ``outward`` is +1 for the eye on the right of the image, -1 for the left one; ``slant`` raises
    the outer corner (upturned "tsurime" eyes when positive, drooping "tareme" when negative).
    Returns the iris centre and radii so highlights can be added after the layer is pasted."""
    def at(u: float, v: float) -> Point:
        return (cx + outward * u * scale, cy + v * scale)

    inner, outer = at(-0.075, 0.0), at(0.085, -0.03 - slant)
    top = _bezier(inner, at(-0.055, -0.085), at(0.045, -0.095), outer, 14)
    bottom = _bezier(outer, at(0.075, 0.055), at(-0.03, 0.085), inner, 12)
    sclera = top + bottom[1:-1]
    mask_draw.polygon(frame.px(sclera), fill=255)
    eye_draw.polygon(frame.px(sclera), fill=(255, 255, 255))
    # iris: dark top fading to a light bottom, a pupil, and a dark rim
    icx, icy, irx, iry = cx + outward * 0.008 * scale, cy + 0.012 * scale, 0.052 * scale, 0.078 * scale
    eye_draw.polygon(frame.px(_ellipse(icx, icy, irx, iry)), fill=_scale(iris, 0.55),
                     outline=_scale(iris, 0.35), width=frame.width(0.006))
    eye_draw.polygon(frame.px(_ellipse(icx, icy + 0.012 * scale, irx * 0.8, iry * 0.8)), fill=iris)
    eye_draw.polygon(frame.px(_ellipse(icx, icy + 0.04 * scale, irx * 0.6, iry * 0.4)),
                     fill=_mix(iris, (255, 255, 255), 0.35))
    eye_draw.polygon(frame.px(_ellipse(icx, icy - 0.008 * scale, irx * 0.42, iry * 0.45)),
                     fill=_scale(iris, 0.25))
    # upper lash line: thick, thickest at the outer corner, with a flick past it
    thickness = [0.012 + 0.022 * (i / (len(top) - 1)) ** 1.5 for i in range(len(top))]
    upper = [(x, y - t * scale) for (x, y), t in zip(top, thickness)]
    flick = at(0.11, -0.06 - slant)
    draw.polygon(frame.px(top + [flick] + list(reversed(upper))), fill=lash)
    # a short lower lash under the outer part, and the crease of the eyelid above
    draw.line(frame.px(bottom[:5]), fill=_scale(lash, 1.4), width=frame.width(0.009 * scale))
    crease = _bezier(at(-0.04, -0.115), at(0.0, -0.13), at(0.05, -0.13), at(0.08, -0.1), 6)
    draw.line(frame.px(crease), fill=_scale(lash, 1.6), width=frame.width(0.006 * scale))
    return [(icx, icy), (irx, iry)]


@dataclass(frozen=True)
class _Colors:
    """One face's palette: each base colour with the shades anime cel shading uses."""

    hair: RGB
    hair_shadow: RGB
    hair_line: RGB
    hair_light: RGB
    skin: RGB
    skin_shadow: RGB
    skin_line: RGB
    iris: RGB

    @classmethod
    def sample(cls, attributes: dict[str, str], rng: random.Random) -> _Colors:
        hair = _scale(HAIR_COLORS[attributes["hair_color"]], rng.uniform(0.92, 1.06))
        skin = _scale(SKIN_TONES[attributes["skin_tone"]], rng.uniform(0.97, 1.02))
        iris = _scale(EYE_COLORS[attributes["eye_color"]], rng.uniform(0.92, 1.06))
        return cls(hair=hair,
                   hair_shadow=_mix(_scale(hair, 0.72), (60, 30, 110), 0.07),  # shadows lean cool
                   hair_line=_mix(_scale(hair, 0.42), (40, 20, 50), 0.3),
                   hair_light=_mix(hair, (255, 255, 255), 0.42),
                   skin=skin,
                   skin_shadow=_mix(_scale(skin, 0.88), (230, 110, 120), 0.12),   # warm, rosy shade
                   skin_line=_mix(_scale(skin, 0.55), (120, 40, 40), 0.25),
                   iris=iris)


@dataclass(frozen=True)
class _Head:
    """One face's proportions, in frame units before the frame's zoom and tilt."""

    half_width: float   # of the face at the cheeks
    cheek_y: float      # where the face is widest
    chin_y: float
    eye_y: float
    eye_gap: float      # from the middle of the face to each eye's centre
    eye_scale: float
    eye_slant: float
    crown_rx: float     # the hair volume around the skull, an ellipse
    crown_ry: float
    crown_cy: float = 0.46

    @classmethod
    def sample(cls, face_shape: str, rng: random.Random) -> _Head:
        half_width = rng.uniform(0.25, 0.285)
        cheek_y = rng.uniform(0.58, 0.61)
        chin_y = {"round": 0.87, "oval": 0.9, "pointed": 0.92}[face_shape] + rng.uniform(-0.01, 0.01)
        return cls(half_width=half_width, cheek_y=cheek_y, chin_y=chin_y,
                   eye_y=cheek_y + rng.uniform(0.0, 0.025), eye_gap=rng.uniform(0.125, 0.145),
                   eye_scale=rng.uniform(1.0, 1.15), eye_slant=rng.uniform(-0.02, 0.025),
                   crown_rx=half_width + rng.uniform(0.08, 0.11), crown_ry=rng.uniform(0.4, 0.44))

    @property
    def temple_y(self) -> float:
        return self.crown_cy + 0.06

    @property
    def hairline_y(self) -> float:
        return self.crown_cy - self.crown_ry * 0.55


def _draw_back_hair(draw: ImageDraw.ImageDraw, frame: _Frame, head: _Head, colors: _Colors,
                    length: str, rng: random.Random) -> None:
    """The crown plus the length that falls behind the face, in the hair's shadow colour."""
    hem_y = {"short": 0.7, "medium": 0.9, "long": 1.15}[length] + rng.uniform(-0.03, 0.03)
    flare = {"short": -0.02, "medium": 0.02, "long": 0.06}[length]
    draw.polygon(frame.px(_ellipse(0.5, head.crown_cy, head.crown_rx, head.crown_ry, 32)),
                 fill=colors.hair_shadow)
    hem_tips = rng.randint(4, 6)
    left, right = 0.5 - head.crown_rx, 0.5 + head.crown_rx
    body = [(left, head.temple_y - 0.1), (right, head.temple_y - 0.1)]
    low_right, low_left = right + flare, left - flare
    for i in range(2 * hem_tips + 1):  # a zigzag hem of strand tips
        x = low_right - (low_right - low_left) * i / (2 * hem_tips)
        body.append((x, hem_y - (0.0 if i % 2 else 0.06) + rng.uniform(-0.015, 0.015)))
    draw.polygon(frame.px(body), fill=colors.hair_shadow)


def _draw_neck_and_clothes(draw: ImageDraw.ImageDraw, frame: _Frame, head: _Head, colors: _Colors,
                           length: str, rng: random.Random) -> None:
    draw.polygon(frame.px([(0.43, head.chin_y - 0.1), (0.57, head.chin_y - 0.1), (0.58, 1.2),
                           (0.42, 1.2)]), fill=colors.skin_shadow)
    allowed = [c for c in _CLOTHES_COLORS if _distance(c, colors.hair) >= _MIN_COLOR_DISTANCE * 0.75]
    clothes = _pick(rng, allowed)
    collar_y = head.chin_y + rng.uniform(0.06, 0.1)
    shirt = [(-0.1, 1.3), (-0.05, collar_y + 0.09), (0.3, collar_y), (0.5, collar_y + 0.1),
             (0.7, collar_y), (1.05, collar_y + 0.09), (1.1, 1.3)]
    draw.polygon(frame.px(shirt), fill=clothes, outline=_scale(clothes, 0.6),
                 width=frame.width(_OUTLINE))
    if length == "long":  # long hair falls in front of the shoulders
        for side in (1.0, -1.0):
            lock = [(0.5 + side * (head.crown_rx - 0.02), head.temple_y),
                    (0.5 + side * (head.crown_rx + 0.06), 1.2),
                    (0.5 + side * (head.half_width - 0.02), 1.2),
                    (0.5 + side * (head.half_width - 0.01), head.temple_y)]
            draw.polygon(frame.px(lock), fill=_mix(colors.hair, colors.hair_shadow, 0.5))


def _bangs_outline(style: str, head: _Head, rng: random.Random) -> tuple[list[Point], list[Point]]:
    """The front hair (crown arc + fringe) as a polygon, and the fringe's lower edge alone."""
    left_temple, right_temple = 0.5 - head.crown_rx, 0.5 + head.crown_rx
    tip_y = head.eye_y - rng.uniform(0.13, 0.155)
    fringe_edge = _fringe_edge(style, rng, left_temple + 0.06, right_temple - 0.06, head.hairline_y,
                               tip_y)
    crown_arc = [(0.5 + head.crown_rx * math.cos(math.pi + math.pi * i / 20),
                  head.crown_cy + head.crown_ry * math.sin(math.pi + math.pi * i / 20))
                 for i in range(21)]
    bangs = ([(left_temple + 0.01, head.temple_y + 0.02)] + crown_arc
             + [(right_temple - 0.01, head.temple_y + 0.02)] + fringe_edge)
    return bangs, fringe_edge


def _draw_fringe_shadow(image: Image.Image, frame: _Frame, face_px: list[Point], bangs: list[Point],
                        shadow: RGB) -> None:
    """The bangs cast a shadow a little below themselves, only on the skin."""
    face_mask = Image.new("L", image.size)
    ImageDraw.Draw(face_mask).polygon(face_px, fill=255)
    shadow_mask = Image.new("L", image.size)
    ImageDraw.Draw(shadow_mask).polygon(frame.px([(x, y + 0.035) for x, y in bangs]), fill=255)
    _paste_within_mask(image, shadow, ImageChops.multiply(face_mask, shadow_mask))


def _draw_eyes(image: Image.Image, draw: ImageDraw.ImageDraw, frame: _Frame, head: _Head,
               iris: RGB) -> None:
    # the white and the iris are drawn on a layer pasted through the sclera mask, which clips the iris
    eye_layer = Image.new("RGB", image.size)
    eye_mask = Image.new("L", image.size)
    eye_draw, mask_draw = ImageDraw.Draw(eye_layer), ImageDraw.Draw(eye_mask)
    irises = [_draw_eye(draw, eye_draw, mask_draw, frame, 0.5 + side * head.eye_gap, head.eye_y, side,
                        head.eye_scale, iris, _LINE_DARK, head.eye_slant) for side in (1.0, -1.0)]
    _paste_within_mask(image, eye_layer, eye_mask)
    for (icx, icy), (irx, iry) in irises:
        # the light comes from the same side for both eyes
        draw.polygon(frame.px(_ellipse(icx - irx * 0.35, icy - iry * 0.35, irx * 0.4, iry * 0.3, 16)),
                     fill=(255, 255, 255))
        draw.polygon(frame.px(_ellipse(icx + irx * 0.35, icy + iry * 0.4, irx * 0.18, iry * 0.12, 12)),
                     fill=(255, 255, 255))


def _draw_brows(draw: ImageDraw.ImageDraw, frame: _Frame, head: _Head, color: RGB) -> None:
    brow_y = head.eye_y - 0.125 * head.eye_scale
    for side in (1.0, -1.0):
        brow = _bezier((0.5 + side * (head.eye_gap - 0.06), brow_y + 0.01),
                       (0.5 + side * (head.eye_gap - 0.02), brow_y - 0.012),
                       (0.5 + side * (head.eye_gap + 0.04), brow_y - 0.012),
                       (0.5 + side * (head.eye_gap + 0.075), brow_y + 0.012), 6)
        draw.line(frame.px(brow), fill=color, width=frame.width(0.012))


def _draw_blush(image: Image.Image, draw: ImageDraw.ImageDraw, frame: _Frame, head: _Head,
                blush: str) -> None:
    overlay = ImageDraw.Draw(image, "RGBA")  # blends the translucent fill onto the skin
    for side in (1.0, -1.0):
        cx, cy = 0.5 + side * (head.eye_gap + 0.01), head.eye_y + 0.1
        overlay.polygon(frame.px(_ellipse(cx, cy, 0.055, 0.024, 20)), fill=(255, 110, 130, 90))
        if blush == "lines":
            for k in (-1, 0, 1):
                dash = [(cx + k * 0.022 + 0.008, cy - 0.012), (cx + k * 0.022 - 0.008, cy + 0.012)]
                draw.line(frame.px(dash), fill=(226, 90, 110), width=frame.width(0.007))


def _draw_side_locks(draw: ImageDraw.ImageDraw, frame: _Frame, head: _Head, colors: _Colors,
                     bangs_style: str, length: str, rng: random.Random) -> None:
    """Locks falling from the temples in front of the face's sides."""
    lock_end = {"short": 0.66, "medium": 0.8, "long": 0.9}[length] + rng.uniform(-0.03, 0.03)
    temple_y = head.temple_y
    for side in (1.0, -1.0):
        outer, inner = 0.5 + side * (head.crown_rx - 0.04), 0.5 + side * (head.half_width - 0.07)
        if bangs_style == "hime":  # straight, bluntly cut locks at cheek height
            lock = [(outer, temple_y - 0.08), (inner, temple_y - 0.08), (inner + side * 0.005, 0.73),
                    (outer - side * 0.01, 0.73)]
        else:  # a tapering lock that splits into two strand tips
            bend = side * rng.uniform(0.0, 0.03)
            tip = inner + side * 0.03 + bend
            notch = (tip + side * 0.025, lock_end - 0.08)
            second_tip = (tip + side * 0.045, lock_end - rng.uniform(0.02, 0.05))
            lock = ([(outer, temple_y - 0.1), (inner, temple_y - 0.1)]
                    + _bezier((inner, temple_y - 0.1), (inner + bend, temple_y + 0.1),
                              (tip - side * 0.01, lock_end - 0.08), (tip, lock_end), 8)
                    + [notch, second_tip]
                    + _bezier(second_tip, (outer - side * 0.005, lock_end - 0.14),
                              (outer, temple_y + 0.1), (outer, temple_y - 0.1), 8))
        draw.polygon(frame.px(lock), fill=colors.hair, outline=colors.hair_line,
                     width=frame.width(_OUTLINE))


def _draw_bangs(draw: ImageDraw.ImageDraw, frame: _Frame, head: _Head, colors: _Colors,
                bangs: list[Point], fringe_edge: list[Point]) -> None:
    draw.polygon(frame.px(bangs), fill=colors.hair, outline=colors.hair_line,
                 width=frame.width(_OUTLINE))
    # the "angel ring" highlight across the crown: a thin band with a jagged lower edge
    ring_y = head.crown_cy - head.crown_ry * 0.62
    angles = [math.pi * (1.2 + 0.6 * i / 12) for i in range(13)]
    ring = [(0.5 + head.crown_rx * 0.82 * math.cos(angle),
             ring_y + 0.09 * head.crown_ry * math.sin(angle)) for angle in angles]
    lower = [(x, y + (0.035 if i % 2 else 0.02)) for i, (x, y) in enumerate(ring)]
    draw.polygon(frame.px(ring + list(reversed(lower))), fill=colors.hair_light)
    # strand lines from the hairline down to the fringe's notches
    for x_edge, y_edge in fringe_edge[::2][1:-1]:
        strand = _bezier((0.5 + (x_edge - 0.5) * 0.7, head.hairline_y + 0.02),
                         (0.5 + (x_edge - 0.5) * 0.8, head.hairline_y + 0.08),
                         (x_edge, y_edge - 0.08), (x_edge, y_edge - 0.01), 6)
        draw.line(frame.px(strand), fill=colors.hair_shadow, width=frame.width(0.007))


def render_face(attributes: dict[str, str], seed: int, index: int, size: int = 64) -> Image.Image:
    """Draw the face with these attributes; jitter comes from the (seed, index) jitter stream only."""
    _check_attributes(attributes)
    _check_ids(seed, index)
    if size < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE} pixels (got {size}): the face's "
                         "features would be smaller than a pixel")
    rng = _rng(seed, index, 1)
    pixels = size * SUPERSAMPLE
    colors = _Colors.sample(attributes, rng)
    image = Image.new("RGB", (pixels, pixels))
    _draw_background(image, attributes["background"], colors.hair, rng)
    # zoomed in so the face fills most of the frame and the crown is cropped, as in dataset crops
    frame = _Frame(pixels, shift=(rng.uniform(-0.035, 0.035), rng.uniform(-0.06, 0.0)),
                   zoom=rng.uniform(1.1, 1.24), tilt_deg=rng.uniform(-8.0, 8.0))
    head = _Head.sample(attributes["face_shape"], rng)
    draw = ImageDraw.Draw(image)

    # back to front: hair behind the head, body, face, features, then the hair in front
    _draw_back_hair(draw, frame, head, colors, attributes["hair_length"], rng)
    _draw_neck_and_clothes(draw, frame, head, colors, attributes["hair_length"], rng)
    face_px = frame.px(_face_outline(attributes["face_shape"], head.half_width, head.cheek_y,
                                     head.chin_y))
    draw.polygon(face_px, fill=colors.skin, outline=colors.skin_line, width=frame.width(_OUTLINE))
    bangs, fringe_edge = _bangs_outline(attributes["bangs"], head, rng)
    _draw_fringe_shadow(image, frame, face_px, bangs, colors.skin_shadow)
    _draw_brows(draw, frame, head, colors.hair_line)  # before the bangs, which may cover them
    _draw_eyes(image, draw, frame, head, colors.iris)
    nose_y = head.eye_y + rng.uniform(0.1, 0.12)
    draw.line(frame.px([(0.505, nose_y - 0.012), (0.512, nose_y + 0.006), (0.5, nose_y + 0.01)]),
              fill=colors.skin_line, width=frame.width(0.008))
    _draw_mouth(draw, frame, attributes["mouth"], 0.5, nose_y + rng.uniform(0.075, 0.09),
                colors.skin_line)
    if attributes["blush"] != "none":
        _draw_blush(image, draw, frame, head, attributes["blush"])
    _draw_side_locks(draw, frame, head, colors, attributes["bangs"], attributes["hair_length"], rng)
    _draw_bangs(draw, frame, head, colors, bangs, fringe_edge)
    _draw_accessory(draw, frame, attributes["accessory"], rng, colors.hair, head)
    # reducing_gap: a box reduction to 2x first, then Lanczos; faster than Lanczos alone and
    # indistinguishable at this scale
    return image.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)


def _paste_within_mask(image: Image.Image, source: Image.Image | RGB, mask: Image.Image) -> None:
    # pasting only the mask's bounding box: the masks cover a small part of the canvas
    box = mask.getbbox()
    if box is None:
        return
    if isinstance(source, Image.Image):
        source = source.crop(box)
    image.paste(source, box, mask.crop(box))


def _draw_mouth(draw: ImageDraw.ImageDraw, frame: _Frame, mouth: str, cx: float, cy: float,
                line: RGB) -> None:
    width = frame.width(0.011)
    inside = (170, 50, 60)
    if mouth == "smile":
        draw.line(frame.px(_bezier((cx - 0.04, cy - 0.008), (cx - 0.02, cy + 0.016),
                                   (cx + 0.02, cy + 0.016), (cx + 0.04, cy - 0.008), 8)),
                  fill=_LINE_DARK, width=width)
    elif mouth == "grin":
        shape = [(cx - 0.04, cy - 0.01), (cx + 0.04, cy - 0.01)] + _bezier(
            (cx + 0.04, cy - 0.01), (cx + 0.03, cy + 0.04), (cx - 0.03, cy + 0.04),
            (cx - 0.04, cy - 0.01), 8)
        draw.polygon(frame.px(shape), fill=inside, outline=_LINE_DARK, width=width)
        draw.polygon(frame.px(_ellipse(cx, cy + 0.02, 0.02, 0.01, 12)), fill=(240, 130, 140))
    elif mouth == "neutral":
        draw.line(frame.px([(cx - 0.025, cy), (cx + 0.025, cy)]), fill=line, width=width)
    elif mouth == "cat":
        cat = (_bezier((cx - 0.04, cy - 0.01), (cx - 0.035, cy + 0.015), (cx - 0.005, cy + 0.015),
                       (cx, cy - 0.004), 6)
               + _bezier((cx, cy - 0.004), (cx + 0.005, cy + 0.015), (cx + 0.035, cy + 0.015),
                         (cx + 0.04, cy - 0.01), 6))
        draw.line(frame.px(cat), fill=_LINE_DARK, width=width)
    else:  # surprised
        draw.polygon(frame.px(_ellipse(cx, cy + 0.01, 0.018, 0.024, 16)), fill=inside,
                     outline=_LINE_DARK, width=width)


def _draw_accessory(draw: ImageDraw.ImageDraw, frame: _Frame, accessory: str, rng: random.Random,
                    hair: RGB, head: _Head) -> None:
    allowed = [c for c in _ACCESSORY_COLORS if _distance(c, hair) >= _MIN_COLOR_DISTANCE]
    color = _pick(rng, allowed)
    side = _pick(rng, (-1.0, 1.0))
    outline = _scale(color, 0.55)
    width = frame.width(0.008)
    crown_rx, crown_cy, crown_ry = head.crown_rx, head.crown_cy, head.crown_ry
    if accessory == "ribbon":
        cx, cy = 0.5 + side * crown_rx * 0.62, crown_cy - crown_ry * 0.78
        for wing in (-1.0, 1.0):
            wing_shape = [(cx, cy), (cx + wing * 0.1, cy - 0.06), (cx + wing * 0.11, cy + 0.05)]
            draw.polygon(frame.px(wing_shape), fill=color, outline=outline, width=width)
        draw.polygon(frame.px(_ellipse(cx, cy, 0.022, 0.022, 12)), fill=color, outline=outline,
                     width=width)
    elif accessory == "hairclip":
        cx, cy = 0.5 + side * crown_rx * 0.55, crown_cy - crown_ry * 0.3
        for tilt in (-1.0, 1.0):
            draw.line(frame.px([(cx - 0.035, cy - tilt * 0.025), (cx + 0.035, cy + tilt * 0.025)]),
                      fill=color, width=frame.width(0.016))
    elif accessory == "headband":
        band = [(0.5 + crown_rx * 0.98 * math.cos(math.pi * (1.05 + 0.9 * i / 16)),
                 crown_cy - 0.02 + crown_ry * 0.85 * math.sin(math.pi * (1.05 + 0.9 * i / 16)))
                for i in range(17)]
        inner = [(0.5 + (x - 0.5) * 0.97, y + 0.035) for x, y in band]
        draw.polygon(frame.px(band + list(reversed(inner))), fill=color, outline=outline, width=width)


# ----------------------------------------------------------------------------------------- public API

def _check_ids(seed: int, index: int) -> None:
    for name, value in (("seed", seed), ("index", index)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer (got {value!r})")


def _check_attributes(attributes: dict[str, str]) -> None:
    for key, allowed in ATTRIBUTE_VALUES.items():
        if attributes.get(key) not in allowed:
            raise ValueError(f"attribute {key!r} must be one of {', '.join(allowed)} "
                             f"(got {attributes.get(key)!r})")


def sample_attributes(seed: int, index: int) -> dict[str, str]:
    """The attributes of face ``index``: each drawn uniformly and independently of the others."""
    _check_ids(seed, index)
    rng = _rng(seed, index, 0)
    return {key: _pick(rng, values) for key, values in ATTRIBUTE_VALUES.items()}


def draw_face(seed: int, index: int, size: int = 64) -> tuple[Image.Image, dict[str, str]]:
    """Face ``index`` of dataset ``seed`` as an RGB ``size`` x ``size`` image, with its attributes."""
    attributes = sample_attributes(seed, index)
    return render_face(attributes, seed, index, size), attributes


def _write_images(images_dir: Path, seed: int, span: tuple[int, int]) -> list[dict[str, str]]:
    """Draw and save faces span[0]..span[1]-1 (one worker task); returns their attribute rows."""
    rows = []
    for index in range(*span):
        image, attributes = draw_face(seed, index)
        name = f"{index:06d}.png"
        unfinished = images_dir / f"{name}.partial"
        # fixed encoder options and no metadata: the bytes depend only on the pixels
        image.save(unfinished, format="PNG", compress_level=6, optimize=False)
        os.replace(unfinished, images_dir / name)
        rows.append({"file": f"{IMAGES_SUBDIR}/{name}", **attributes})
    return rows


def write_synthetic_dataset(out_dir: Path, count: int, seed: int, workers: int = 0,
                            progress: bool = True) -> int:
    """Draw ``count`` faces into ``out_dir/images/NNNNNN.png`` and list them in ``attributes.csv``.

    ``workers`` processes draw in parallel (0: one per available core); the files are byte-identical
    whatever the worker count. PNGs left over from an earlier, larger (or interrupted) run are
    removed; the CSV is written last, under a temporary name then renamed, so it only ever lists a
    complete set.
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"count must be a positive number of images (got {count!r}); "
                         "set data.synthetic_count in params.yaml to 1 or more")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise ValueError(f"workers must be 0 (one per core) or a positive number of processes "
                         f"(got {workers!r}); check data.workers in params.yaml")
    _check_ids(seed, 0)
    out_dir = Path(out_dir)
    images_dir = out_dir / IMAGES_SUBDIR
    images_dir.mkdir(parents=True, exist_ok=True)

    spans = [(start, min(start + _CHUNK_IMAGES, count)) for start in range(0, count, _CHUNK_IMAGES)]
    processes = min(workers or default_workers(), len(spans))
    rows: list[dict[str, str]] = []
    # the platform's default start method (fork on Linux up to Python 3.13; spawn/forkserver elsewhere,
    # which need the caller's `if __name__ == "__main__":` guard, as the stage scripts have); the
    # workers start before tqdm starts its monitor thread
    chunks = ordered_map(partial(_write_images, images_dir, seed), spans, processes)
    with closing(chunks), tqdm(total=count, unit="img", desc="drawing synthetic faces",
                               disable=not progress) as bar:
        for chunk_rows in chunks:
            rows.extend(chunk_rows)
            bar.update(len(chunk_rows))

    for stale in images_dir.iterdir():
        match = _IMAGE_NAME.match(stale.name)
        if match and (match.group(2) or int(match.group(1)) >= count):
            stale.unlink()
    csv_path = out_dir / ATTRIBUTES_FILE
    partial_csv = out_dir / f"{ATTRIBUTES_FILE}.partial"
    with open(partial_csv, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", *ATTRIBUTE_VALUES], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial_csv, csv_path)
    return count
