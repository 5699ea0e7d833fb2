"""Built-in synthetic bitemporal data in SECOND layout, so everything runs without a download.

Each pair is an aerial-like scene: textured ground, fields with crop rows, tree canopies with shadows, rivers and
ponds with ripples and glints, roads, buildings with shaded roofs and cast shadows, and sports courts with line
markings. T2 is T1 with 1–3 changed regions (class transitions such as low vegetation → building or tree →
ground); about 60% of the pairs change two or more regions whose classes differ, so the same pair answers
different CRoIs. T2 also carries pseudo-changes a detector must ignore: illumination, gamma and colour balance,
a seasonal vegetation tint, a 0–2 px misregistration and sensor noise. Labels follow SECOND: white where
unchanged, the class colour of that date where changed.

Pair ``i`` depends only on ``(seed, i, size)``. Writing 100 pairs of 256×256 takes about 4 s on one CPU core
(measured: ≈ 28 ms to synthesise a pair and ≈ 14 ms to write its four PNGs; 5 s with the core shared), and
about 2.4 MB of disk.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from reasoncd.data.commands import Subcommand
from reasoncd.data.questions import CLASSES
from reasoncd.data.second import SECOND_COLOURS, UNCHANGED_COLOUR
from reasoncd.folder_lock import hold
from reasoncd.io import record_outputs, write_png_atomic

WATER, GROUND, LOW_VEGETATION, TREE, BUILDING, PLAYGROUND = range(len(CLASSES))
_INSTANCED = (BUILDING, PLAYGROUND)  # coloured per object, not from a class-wide texture

# Plausible transitions (T1 class → T2 classes).
_TRANSITIONS = {
    WATER: (GROUND, LOW_VEGETATION, BUILDING),
    GROUND: (WATER, LOW_VEGETATION, TREE, BUILDING, PLAYGROUND),
    LOW_VEGETATION: (WATER, GROUND, TREE, BUILDING, PLAYGROUND),
    TREE: (WATER, GROUND, LOW_VEGETATION, BUILDING),
    BUILDING: (GROUND, LOW_VEGETATION, TREE, PLAYGROUND),
    PLAYGROUND: (GROUND, LOW_VEGETATION, BUILDING),
}
_SOURCES = {to: tuple(c for c, targets in _TRANSITIONS.items() if to in targets) for to in range(len(CLASSES))}
_CHANGE_COUNT_WEIGHTS = (0.4, 0.4, 0.2)  # P(1, 2, 3 changed regions)

_ROOF_COLOURS = np.array(
    [(0.62, 0.62, 0.64), (0.78, 0.77, 0.75), (0.42, 0.42, 0.45), (0.64, 0.30, 0.24), (0.36, 0.46, 0.62),
     (0.30, 0.50, 0.52), (0.72, 0.55, 0.42)],
    dtype=np.float32,
)
_COURT_COLOURS = np.array([(0.64, 0.31, 0.26), (0.28, 0.52, 0.34), (0.26, 0.42, 0.64)], dtype=np.float32)
_TRACK_COLOUR = np.array((0.66, 0.33, 0.27), dtype=np.float32)
_PITCH_COLOUR = np.array((0.30, 0.56, 0.29), dtype=np.float32)
_LINE_COLOUR = np.array((0.93, 0.93, 0.90), dtype=np.float32)

_LABEL_LUT = np.array([*SECOND_COLOURS.values(), UNCHANGED_COLOUR], dtype=np.uint8)


@dataclass
class SyntheticPair:
    """One generated pair: uint8 RGB images and labels (H, W, 3), class maps (H, W) and the transitions."""

    image1: np.ndarray
    image2: np.ndarray
    label1: np.ndarray
    label2: np.ndarray
    classes1: np.ndarray
    classes2: np.ndarray
    transitions: list[tuple[str, str]]


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    return rows, cols


@lru_cache(maxsize=4)
def _index_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0:size, 0:size]
    return rows, cols


# ---------------------------------------------------------------- noise and filters


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth noise with features about ``cell`` pixels wide (separable smoothstep interpolation), std ≈ 0.7."""
    offset = rng.uniform(0, cell, 2)
    grid = rng.standard_normal((int(shape[0] / cell) + 3, int(shape[1] / cell) + 3)).astype(np.float32)
    weights, starts = [], []
    for axis in range(2):
        position = (np.arange(shape[axis], dtype=np.float32) + offset[axis]) / cell
        start = position.astype(np.int64)
        fraction = position - start
        weights.append(fraction * fraction * (3 - 2 * fraction))
        starts.append(start)
    rows = grid[starts[0]] * (1 - weights[0])[:, None] + grid[starts[0] + 1] * weights[0][:, None]
    return rows[:, starts[1]] * (1 - weights[1])[None, :] + rows[:, starts[1] + 1] * weights[1][None, :]


@lru_cache(maxsize=4)
def _crown_field(size: int) -> np.ndarray:
    """Tree crowns seen from above on a (2·size)² tile: overlapping domes (0 in gaps, ~1 at crown tops), one per
    jittered grid cell. Built once per size from a fixed seed; each pair crops it at a random place (far cheaper
    than building crowns per pair, and still deterministic)."""
    rng = np.random.default_rng(size)
    cell = 8 * size / 256
    extent = 2 * size
    count = int(extent / cell) + 2
    index = np.arange(count, dtype=np.float32)
    centre_rows = (index[:, None] + rng.uniform(0.15, 0.85, (count, count))) * cell
    centre_cols = (index[None, :] + rng.uniform(0.15, 0.85, (count, count))) * cell
    inverse_radius2 = 1 / (rng.uniform(0.6, 0.95, (count, count)) * cell) ** 2
    height = rng.uniform(0.8, 1.2, (count, count))
    rows, cols = np.mgrid[0:extent, 0:extent].astype(np.float32)
    cell_rows, cell_cols = (rows // cell).astype(np.int64), (cols // cell).astype(np.int64)
    domes = np.zeros((extent, extent), dtype=np.float32)
    for step_row in (-1, 0, 1):
        for step_col in (-1, 0, 1):
            i = np.clip(cell_rows + step_row, 0, count - 1)
            j = np.clip(cell_cols + step_col, 0, count - 1)
            distance2 = ((rows - centre_rows[i, j]) ** 2 + (cols - centre_cols[i, j]) ** 2) * inverse_radius2[i, j]
            np.maximum(domes, (1 - distance2) * height[i, j], out=domes)
    return domes


def _crowns(rng: np.random.Generator, size: int) -> np.ndarray:
    top, left = rng.integers(0, size, 2)
    return np.rot90(_crown_field(size)[top:top + size, left:left + size], int(rng.integers(4)))


def _box_blur(values: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)² window of a 2-D array, edges replicated (separable running sums of shifted views)."""
    height, width = values.shape
    padded = np.pad(values.astype(np.float32), radius, mode="edge")
    rows = padded[:height].copy()
    for step in range(1, 2 * radius + 1):
        rows += padded[step:step + height]
    total = rows[:, :width].copy()
    for step in range(1, 2 * radius + 1):
        total += rows[:, step:step + width]
    return total / (2 * radius + 1) ** 2


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    return _box_blur(mask, radius) > 1e-6


def _shift(values: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move an array by (dy, dx) pixels, filling with zeros."""
    height, width = values.shape[:2]
    out = np.zeros_like(values)
    out[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = values[
        max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)
    ]
    return out


# ---------------------------------------------------------------- shapes
# Shapes are computed inside a window around the object and embedded into a full-size array: most objects are
# small, and full-frame arithmetic per object would dominate the run time.


def _window(size: int, cy: float, cx: float, extent: float) -> tuple[slice, slice]:
    rows = slice(min(max(int(cy - extent), 0), size), min(max(int(cy + extent) + 2, 0), size))
    cols = slice(min(max(int(cx - extent), 0), size), min(max(int(cx + extent) + 2, 0), size))
    return rows, cols


def _embed(size: int, window: tuple[slice, slice], local: np.ndarray) -> np.ndarray:
    full = np.zeros((size, size) + local.shape[2:], dtype=local.dtype)
    full[window] = local
    return full


def _local_coords(size, cy, cx, angle, window=None) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in a frame centred at (cy, cx) and rotated by ``angle``: (along, across)."""
    rows, cols = _grid(size)
    if window is not None:
        rows, cols = rows[window], cols[window]
    dy, dx = rows - cy, cols - cx
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return dx * cos + dy * sin, -dx * sin + dy * cos


def _rectangle(size, cy, cx, half_length, half_width, angle):
    """Window, local mask and local (along, across) coordinates of a rotated rectangle."""
    window = _window(size, cy, cx, np.hypot(half_length, half_width) + 1)
    along, across = _local_coords(size, cy, cx, angle, window)
    return window, (np.abs(along) <= half_length) & (np.abs(across) <= half_width), along, across


def _polygon(rng, size, cy, cx, radius):
    """An irregular star-shaped polygon: a vertex every 2π/k with jittered radii."""
    vertices = int(rng.integers(5, 10))
    radii = radius * rng.uniform(0.7, 1.25, vertices).astype(np.float32)
    window = _window(size, cy, cx, 1.3 * radius)
    rows, cols = _grid(size)
    dy, dx = rows[window] - cy, cols[window] - cx
    position = (np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * vertices
    start = position.astype(np.int64) % vertices
    fraction = position - np.floor(position)
    boundary = radii[start] * (1 - fraction) + radii[(start + 1) % vertices] * fraction
    return _embed(size, window, np.hypot(dy, dx) <= boundary)


def _blob(rng, size, cy, cx, radius):
    """A rounded shape with a wobbly outline (distance field perturbed by smooth noise)."""
    window = _window(size, cy, cx, 1.8 * radius)
    rows, cols = _grid(size)
    distance = np.hypot(rows[window] - cy, cols[window] - cx) / radius
    wobble = _value_noise(rng, distance.shape, max(radius / 2, 4))
    # A majority filter drops specks and pixel-thin necks the noise leaves at the outline.
    return _embed(size, window, _box_blur(distance + 0.35 * wobble < 1, 2) > 0.5)


def _strip(rng, size, width, meander):
    """A meandering band across the image (river, channel or road)."""
    angle = rng.uniform(0, np.pi)
    cy, cx = rng.uniform(0.25, 0.75, 2) * size
    along, across = _local_coords(size, cy, cx, angle)
    wavelength = rng.uniform(1.0, 2.5) * size
    centre = meander * np.sin(2 * np.pi * along / wavelength + rng.uniform(0, 2 * np.pi))
    return np.abs(across - centre) <= width / 2


# ---------------------------------------------------------------- canvas: class map plus per-object colour


class _Canvas:
    """What one date shows: a class per pixel, a colour for building/playground pixels, a tint for the rest."""

    def __init__(self, size: int):
        self.classes = np.zeros((size, size), dtype=np.int8)
        self.colour = np.zeros((size, size, 3), dtype=np.float32)
        self.tint = np.ones((size, size, 3), dtype=np.float32)

    def copy(self) -> "_Canvas":
        other = _Canvas.__new__(_Canvas)
        other.classes, other.colour, other.tint = self.classes.copy(), self.colour.copy(), self.tint.copy()
        return other

    def paint(self, mask: np.ndarray, cls: int, colour: np.ndarray | None = None, tint=(1.0, 1.0, 1.0)) -> None:
        self.classes[mask] = cls
        if colour is not None:
            self.colour[mask] = colour[mask]
        self.tint[mask] = tint


def _building(rng, size, cy, cx, half_length, half_width, angle) -> tuple[np.ndarray, np.ndarray]:
    """Mask and roof colour of one building: gabled (two shaded halves and a ridge) or flat with a rooftop unit;
    lighter rim either way."""
    window, inside, along, across = _rectangle(size, cy, cx, half_length, half_width, angle)
    roof = _ROOF_COLOURS[rng.integers(len(_ROOF_COLOURS))] * np.float32(rng.uniform(0.9, 1.1))
    if rng.random() < 0.55:
        shade = np.where(across > 0, 1.08, 0.82) * np.where(np.abs(across) < 1.0, 1.12, 1.0)
    else:
        shade = 1 + 0.05 * _value_noise(rng, inside.shape, 3)
        unit_along, unit_across = rng.uniform(-0.5, 0.5, 2) * (half_length, half_width)
        unit = (np.abs(along - unit_along) < 0.25 * half_length) & (np.abs(across - unit_across) < 0.25 * half_width)
        shade = np.where(unit, shade * 0.8, shade)
    rim = np.minimum(half_length - np.abs(along), half_width - np.abs(across)) < 1.6
    colour = roof * shade[..., None].astype(np.float32)
    colour = np.where(rim[..., None], np.minimum(colour * 1.18 + 0.05, 1.0), colour)
    return _embed(size, window, inside), _embed(size, window, colour.astype(np.float32))


def _building_group(rng, size, cy, cx, angle, scale):
    """1–4 buildings in a row along ``angle``, each at least ~20 px wide (at 256 px)."""
    count = int(rng.integers(1, 5))
    half_length = rng.uniform(10, 20) * scale
    half_width = rng.uniform(10, 16) * scale
    step = 2 * half_length + rng.uniform(4, 10) * scale
    mask = np.zeros((size, size), dtype=bool)
    colour = np.zeros((size, size, 3), dtype=np.float32)
    for index in range(count):
        along = (index - (count - 1) / 2) * step
        part, part_colour = _building(
            rng, size, cy + along * np.sin(angle), cx + along * np.cos(angle), half_length, half_width, angle
        )
        colour[part] = part_colour[part]
        mask |= part
    return mask, colour


def _playground(rng, size, cy, cx, half_length, half_width, angle, scale, stadium=None):
    """A running track around a pitch (stadium) or a rectangular court; white line markings either way."""
    window, inside, along, across = _rectangle(size, cy, cx, half_length, half_width, angle)
    line = 1.1 * scale
    colour = np.empty(inside.shape + (3,), dtype=np.float32)
    if stadium is None:
        stadium = rng.random() < 0.5
    if stadium:
        # Rounded ends, a red track band with lanes, a green pitch inside.
        radius = half_width
        straight = half_length - radius
        distance = np.hypot(np.maximum(np.abs(along) - straight, 0), across)
        inside = distance <= radius
        band = 0.28 * radius
        colour[:] = _PITCH_COLOUR
        colour[distance > radius - band] = _TRACK_COLOUR
        lines = np.abs(distance - (radius - band)) < line
        for lane in (0.33, 0.66):
            lines |= np.abs(distance - (radius - band * lane)) < 0.5 * line
        pitch_half_length, pitch_half_width = straight * 0.9, (radius - band) * 0.75
    else:
        colour[:] = _COURT_COLOURS[rng.integers(len(_COURT_COLOURS))]
        pitch_half_length, pitch_half_width = half_length * 0.85, half_width * 0.8
        lines = np.zeros_like(inside)
    within = (np.abs(along) <= pitch_half_length + line) & (np.abs(across) <= pitch_half_width + line)
    border = (np.abs(np.abs(along) - pitch_half_length) < line) | (np.abs(np.abs(across) - pitch_half_width) < line)
    centre_line = np.abs(along) < 0.6 * line
    circle = np.abs(np.hypot(along, across) - 0.45 * pitch_half_width) < 0.6 * line
    lines |= (within & (border | centre_line)) | circle
    colour[lines] = _LINE_COLOUR
    return _embed(size, window, inside), _embed(size, window, colour)


# ---------------------------------------------------------------- textures


def _textures(rng, size) -> np.ndarray:
    """Class textures (6, H, W, 3). Building and playground rows are surface grain that multiplies the colour
    of each object; the other rows are the class's look, multiplied by a per-object tint."""
    shape = (size, size)
    large = _value_noise(rng, shape, size / 4)
    medium = _value_noise(rng, shape, 16)
    fine = _value_noise(rng, shape, 4)
    grain = rng.standard_normal(shape, dtype=np.float32)
    rows, cols = _grid(size)
    textures = np.zeros((len(CLASSES), size, size, 3), dtype=np.float32)

    def colour(*rgb):
        return np.array(rgb, dtype=np.float32)

    tan, grey = colour(0.72, 0.63, 0.49), colour(0.61, 0.60, 0.57)
    ground = (tan + (grey - tan) * rng.uniform(0, 1)) * np.float32(rng.uniform(0.9, 1.08))
    textures[GROUND] = ground * (1 + 0.10 * large + 0.07 * medium + 0.05 * fine + 0.035 * grain)[..., None]

    angle = rng.uniform(0, np.pi)
    furrows = np.sin((cols * float(np.cos(angle)) + rows * float(np.sin(angle))) * (2 * np.pi / rng.uniform(4, 7)))
    crop_rows = 0.05 * furrows * (medium > 0.2)
    grass = colour(0.50, 0.63, 0.33) + rng.uniform(-0.04, 0.04, 3).astype(np.float32)
    textures[LOW_VEGETATION] = grass * (1 + 0.09 * medium + 0.06 * fine + crop_rows + 0.04 * grain)[..., None]

    domes = _crowns(rng, size)
    # Light from the sun's side of each crown, shade on the other: a cheap relief effect.
    relief = domes - _shift(domes, 1, 1)
    canopy = colour(0.17, 0.31, 0.14) + rng.uniform(-0.02, 0.02, 3).astype(np.float32)
    crown_light = (0.35 + 0.75 * np.clip(domes, 0, 1) - 0.6 * relief) * (1 + 0.08 * large) + 0.05 * grain
    textures[TREE] = canopy * crown_light[..., None]

    clear, murky = colour(0.10, 0.21, 0.27), colour(0.20, 0.30, 0.27)
    turbidity = np.clip(0.5 + 0.6 * large + rng.uniform(-0.4, 0.4), 0, 1)[..., None]
    angle = rng.uniform(0, np.pi)
    across_waves = (cols * float(np.cos(angle)) + rows * float(np.sin(angle))) * (2 * np.pi / rng.uniform(6, 10))
    ripples = np.sin(across_waves + 2.5 * medium)
    glints = (grain > 2.6) * np.float32(0.35)
    textures[WATER] = clear + (murky - clear) * turbidity
    textures[WATER] += (0.025 * ripples + glints + 0.012 * grain)[..., None]

    surface = (1 + 0.04 * fine + 0.03 * grain)[..., None]
    textures[BUILDING] = surface
    textures[PLAYGROUND] = surface
    return textures


# ---------------------------------------------------------------- scene


def _natural_tint(rng) -> np.ndarray:
    return (1 + rng.normal(0, 0.05, 3)).astype(np.float32)


def _paint_base(rng, canvas: _Canvas, size: int, scale: float, angle: float) -> None:
    """Unchanged background: fields, tree stands, roads, water, buildings and maybe a sports ground."""
    canvas.paint(np.ones((size, size), bool), int(rng.choice([LOW_VEGETATION, GROUND, TREE], p=[0.45, 0.35, 0.2])))
    for _ in range(int(rng.integers(2, 6))):
        cls = int(rng.choice([LOW_VEGETATION, GROUND, TREE], p=[0.5, 0.3, 0.2]))
        cy, cx = rng.uniform(0, size, 2)
        if rng.random() < 0.5:
            mask = _polygon(rng, size, cy, cx, rng.uniform(30, 90) * scale)
        else:
            mask = _rectangle(size, cy, cx, rng.uniform(25, 80) * scale, rng.uniform(20, 60) * scale,
                              angle + rng.normal(0, 0.1))[0]
        canvas.paint(mask, cls, tint=_natural_tint(rng))
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0, size, 2)
        canvas.paint(_blob(rng, size, cy, cx, rng.uniform(12, 35) * scale), TREE, tint=_natural_tint(rng))
    if rng.random() < 0.35:
        if rng.random() < 0.5:
            mask = _strip(rng, size, rng.uniform(14, 30) * scale, rng.uniform(8, 25) * scale)
        else:
            cy, cx = rng.uniform(0.2, 0.8, 2) * size
            mask = _blob(rng, size, cy, cx, rng.uniform(18, 40) * scale)
        canvas.paint(mask, WATER)
    for _ in range(int(rng.integers(0, 3))):
        asphalt = np.array((0.72, 0.76, 0.86), np.float32) * rng.uniform(0.75, 1.0)
        canvas.paint(_strip(rng, size, rng.uniform(6, 12) * scale, rng.uniform(0, 6) * scale), GROUND, tint=asphalt)
    for _ in range(int(rng.integers(0, 9))):
        cy, cx = rng.uniform(0, size, 2)
        mask, colour = _building(rng, size, cy, cx, rng.uniform(7, 20) * scale, rng.uniform(6, 14) * scale, angle)
        if not (canvas.classes[mask] == BUILDING).any():
            canvas.paint(mask, BUILDING, colour)
    if rng.random() < 0.2:
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        mask, colour = _playground(rng, size, cy, cx, rng.uniform(25, 45) * scale, rng.uniform(16, 28) * scale,
                                   angle, scale)
        canvas.paint(mask, PLAYGROUND, colour)


def _choose_transitions(rng) -> list[tuple[int, int]]:
    """1–3 transitions; half are drawn by source class and half by target, so every class both grows and shrinks
    often. Later transitions avoid classes already used, so their CRoI masks differ."""
    count = int(rng.choice([1, 2, 3], p=_CHANGE_COUNT_WEIGHTS))
    chosen: list[tuple[int, int]] = []
    used: set[int] = set()
    for _ in range(count):
        for _attempt in range(20):
            if rng.random() < 0.5:
                source = int(rng.integers(len(CLASSES)))
                target = int(rng.choice(_TRANSITIONS[source]))
            else:
                target = int(rng.integers(len(CLASSES)))
                source = int(rng.choice(_SOURCES[target]))
            if source not in used and target not in used:
                break
        chosen.append((source, target))
        used |= {source, target}
    return chosen


def _change_shape(rng, size, scale, source, target, angle):
    """Region of one change and the object colours for T1 and T2 (None where the class is a texture)."""
    margin = 40 * scale
    cy, cx = rng.uniform(margin, size - margin, 2)
    if source in _INSTANCED and target in _INSTANCED:
        # Building ↔ sports court on one rectangle, so the whole footprint changes.
        half_length, half_width = rng.uniform(22, 36) * scale, rng.uniform(16, 24) * scale
        region, building = _building(rng, size, cy, cx, half_length, half_width, angle)
        _, court = _playground(rng, size, cy, cx, half_length, half_width, angle, scale, stadium=False)
        colours = {BUILDING: building, PLAYGROUND: court}
        return region, colours[source], colours[target]
    instanced = target if target in _INSTANCED else source if source in _INSTANCED else None
    if instanced == BUILDING:
        region, colour = _building_group(rng, size, cy, cx, angle, scale)
    elif instanced == PLAYGROUND:
        half_length, half_width = rng.uniform(26, 42) * scale, rng.uniform(18, 28) * scale
        region, colour = _playground(rng, size, cy, cx, half_length, half_width, angle, scale)
    else:
        radius = rng.uniform(18, 40) * scale
        if target == WATER and rng.random() < 0.3:
            region = _strip(rng, size, rng.uniform(14, 24) * scale, rng.uniform(5, 15) * scale)
        elif target in (WATER, TREE) or rng.random() < 0.4:
            region = _blob(rng, size, cy, cx, radius)
        else:
            region = _polygon(rng, size, cy, cx, radius)
        return region, None, None
    return (region, colour, None) if source == instanced else (region, None, colour)


def _surrounding_patch(rng, region: np.ndarray, size: int) -> np.ndarray:
    """A blob overlapping ``region`` and reaching beyond it on one side."""
    rows, cols = np.nonzero(region)
    radius = np.sqrt(rows.size / np.pi)
    direction = rng.uniform(0, 2 * np.pi)
    offset = rng.uniform(0.4, 0.9) * radius
    cy, cx = rows.mean() + offset * np.sin(direction), cols.mean() + offset * np.cos(direction)
    return _blob(rng, size, cy, cx, radius * rng.uniform(1.2, 1.7))


def _apply_changes(rng, canvas1: _Canvas, size, scale, angle) -> tuple[_Canvas, list[tuple[int, int]]]:
    """Paint each change's source class on T1 (with some surrounding context) and its target class on T2."""
    objects = np.isin(canvas1.classes, _INSTANCED)
    occupied = np.zeros((size, size), dtype=bool)
    plans = []
    for source, target in _choose_transitions(rng):
        # Prefer places that cut through no existing building or court; then any free place.
        for attempt in range(50):
            blocked = occupied | objects if attempt < 25 else occupied
            region, colour1, colour2 = _change_shape(rng, size, scale, source, target, angle)
            if region.sum() >= (20 * scale) ** 2 and not (region & blocked).any():
                break
        else:
            continue
        occupied |= _dilate(region, int(4 * scale))
        context = region
        if target in _INSTANCED and source in (GROUND, LOW_VEGETATION):
            # A plot of the old cover around the new object (a field where houses are built).
            context = region | (_dilate(region, int(rng.uniform(3, 12) * scale)) & ~objects)
        elif source not in _INSTANCED:
            # A larger patch of the old cover that the change eats into from one side (a pond filled in at
            # one shore, a wood cut at one edge).
            context = region | (_surrounding_patch(rng, region, size) & ~objects)
        plans.append((source, target, region, context, colour1, colour2))
    others = [plan[2] for plan in plans]
    for index, (source, _, region, context, colour1, _) in enumerate(plans):
        foreign = np.zeros_like(region)
        for other_index, other in enumerate(others):
            if other_index != index:
                foreign |= other
        canvas1.paint(context & ~foreign, source, colour1, tint=_natural_tint(rng))
    canvas2 = canvas1.copy()
    for _, target, region, _, _, colour2 in plans:
        canvas2.paint(region, target, colour2, tint=_natural_tint(rng))
    return canvas2, [(plan[0], plan[1]) for plan in plans]


# ---------------------------------------------------------------- rendering


def _render(canvas: _Canvas, textures: np.ndarray, shading: np.ndarray, sun: tuple[int, int]) -> np.ndarray:
    """Composite textures and objects, add cast shadows, canopy shading, vignetting and sensor blur."""
    classes = canvas.classes
    rows, cols = _index_grid(classes.shape[0])
    objects = np.isin(classes, _INSTANCED)
    image = textures[classes, rows, cols] * np.where(objects[..., None], canvas.colour, canvas.tint)

    buildings, trees = classes == BUILDING, classes == TREE
    building_shadow = _shift(buildings, *sun) & ~buildings
    tree_shadow = _shift(trees, sun[0] // 2, sun[1] // 2) & ~trees & ~buildings
    shadow = _box_blur(np.maximum(0.55 * building_shadow, 0.4 * tree_shadow), 1)
    image *= (1 - shadow)[..., None]
    # Crowns darken towards the stand's edge.
    image[trees] *= (0.7 + 0.3 * _box_blur(trees, 2)[trees])[:, None]
    image *= shading[..., None]
    blurred = np.stack([_box_blur(image[..., channel], 1) for channel in range(3)], axis=-1)
    return 0.55 * image + 0.45 * blurred


def _pseudo_changes(rng, image: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Changes that are not land-cover change: season, radiometry, misregistration, noise."""
    vegetation = ((classes == LOW_VEGETATION) | (classes == TREE))[..., None]
    season = 1 + rng.uniform(-1, 1) * np.array((0.06, 0.02, -0.05), np.float32)
    image = image * np.where(vegetation, season, np.float32(1))
    gain = rng.uniform(0.92, 1.08, 3).astype(np.float32)
    image = np.clip(image * gain + rng.uniform(-0.03, 0.03), 0, 1) ** np.float32(rng.uniform(0.85, 1.15))
    size = image.shape[0]
    dy, dx = rng.integers(-2, 3, 2)
    padded = np.pad(image, ((2, 2), (2, 2), (0, 0)), mode="edge")
    image = padded[2 + dy:2 + dy + size, 2 + dx:2 + dx + size]
    return image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(0.004, 0.012))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)


def synthesize_pair(index: int, *, seed: int = 0, size: int = 256) -> SyntheticPair:
    """Generate pair ``index``; depends only on ``(seed, index, size)``."""
    rng = np.random.default_rng([seed, index])
    scale = size / 256
    angle = rng.uniform(-0.5, 0.5) if rng.random() < 0.6 else 0.0  # street grid orientation
    textures = _textures(rng, size)
    shading = 1 + 0.06 * _value_noise(rng, (size, size), size / 2)
    sun_angle, sun_length = rng.uniform(0, 2 * np.pi), rng.uniform(4, 8) * scale
    sun = (int(round(sun_length * np.sin(sun_angle))), int(round(sun_length * np.cos(sun_angle))))

    canvas1 = _Canvas(size)
    _paint_base(rng, canvas1, size, scale, angle)
    canvas2, transitions = _apply_changes(rng, canvas1, size, scale, angle)

    image1 = _render(canvas1, textures, shading, sun)
    image2 = _pseudo_changes(rng, _render(canvas2, textures, shading, sun), canvas2.classes)
    changed = canvas1.classes != canvas2.classes
    classes1 = np.where(changed, canvas1.classes, -1).astype(np.int8)
    classes2 = np.where(changed, canvas2.classes, -1).astype(np.int8)
    return SyntheticPair(
        image1=_to_uint8(image1),
        image2=_to_uint8(image2),
        label1=_LABEL_LUT[classes1],
        label2=_LABEL_LUT[classes2],
        classes1=classes1,
        classes2=classes2,
        transitions=[(CLASSES[a], CLASSES[b]) for a, b in transitions],
    )


# How folders record that this generator wrote them (benchmarks/bench.py deletes only such folders).
GENERATOR = "reasoncd synthetic generator"


def generate_second_layout(out_dir, n_pairs: int, *, seed: int = 0, size: int = 256, progress: bool = True) -> Path:
    """Write ``n_pairs`` synthetic pairs as ``out_dir/{im1,im2,label1,label2}/NNNNN.png``.

    Pairs whose four files already exist are skipped (resume); each file is written under a temporary name and
    renamed, so an interrupted run leaves no partial files.
    """
    out_dir = Path(out_dir)
    folders = {name: out_dir / name for name in ("im1", "im2", "label1", "label2")}
    lock = hold(out_dir, GENERATOR)  # one generator per folder; released however this ends
    try:
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        record_outputs(out_dir, GENERATOR, folders)  # so a clean-up can tell this folder from a user's
        indices = range(n_pairs)
        if progress:
            try:
                from tqdm.auto import tqdm

                indices = tqdm(indices, desc="synthetic pairs")
            except ImportError:
                pass
        for index in indices:
            name = f"{index:05d}.png"
            if all((folder / name).is_file() for folder in folders.values()):
                continue
            pair = synthesize_pair(index, seed=seed, size=size)
            for key, array in (("im1", pair.image1), ("im2", pair.image2), ("label1", pair.label1),
                               ("label2", pair.label2)):
                write_png_atomic(folders[key] / name, array, compress_level=1)
    finally:
        lock.release()
    return out_dir


# ---------------------------------------------------------------------------------------- prepare_data.py command


def _arguments(parser) -> None:
    parser.add_argument("--output_dir", required=True, type=Path, help="where im1/ im2/ label1/ label2/ go")
    parser.add_argument("--n_pairs", type=int, default=200, help="how many pairs (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generator (default 0)")
    parser.add_argument("--size", type=int, default=256, help="side of each image in pixels (default 256)")


def _run(args) -> dict:
    generate_second_layout(args.output_dir, args.n_pairs, seed=args.seed, size=args.size)
    return {"pairs": args.n_pairs, "size": f"{args.size} x {args.size} px",
            "layout": "SECOND (im1/ im2/ label1/ label2/)"}


SYNTHETIC = Subcommand("synthetic", "write synthetic pairs in SECOND's layout (then: second --root OUTPUT_DIR)",
                       _arguments, _run)
