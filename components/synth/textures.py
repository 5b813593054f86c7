"""Procedural appearance: one colour function per surface, shared by the mesh vertices and the rendered pixels.

The exported mesh (vertex colours) and the RGB frames (colour at the exact ray hit) call the same functions,
so a 3D point and the pixel that sees it agree. Patterns are smooth at the scale of the mesh spacing their
objects use (the `*_VERTEX_SPACING_M` constants), so interpolating vertex colours reproduces them within a
few grey levels.

Texture coordinates: `points (N, 3)` in a box's own frame measured from its minimum corner (metres), and
`face_axis (N,)` the box axis (0 = x, 1 = y, 2 = z) that the surface is normal to. Colours are float RGB
in [0, 255] before shading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

# A light fixed in the room frame: shading depends on the face normal only, never on the camera.
LIGHT_DIRECTION_ROOM = np.array([0.4, 0.25, 1.0]) / np.linalg.norm([0.4, 0.25, 1.0])
AMBIENT = 0.55

PLAIN_WAVELENGTH_M = 1.2
# Mesh spacings that keep linear interpolation of vertex colours within a few grey levels of each pattern.
PLAIN_VERTEX_SPACING_M = 0.1
FLOOR_VERTEX_SPACING_M = 0.05
BOARD_VERTEX_SPACING_M = 0.01  # picture gratings and whiteboard strokes (an appearance pair: one spacing)
BIN_VERTEX_SPACING_M = 0.0125  # crate slats / recycling-bin bands, and their plain twins
STRIPE_SHARPNESS = 1.5  # 0 -> sine, large -> square wave; soft edges keep vertex colours faithful
STROKE_SIGMA_M = 0.02  # Gaussian half-width of a whiteboard marker stroke


class Texture(Protocol):
    def colors(self, points: np.ndarray, face_axis: np.ndarray) -> np.ndarray:
        """RGB (N, 3) float of the surface at `points (N, 3)` on faces normal to `face_axis (N,)`."""
        ...


def lambert_shading(normals_room: np.ndarray) -> np.ndarray:
    """Brightness factor (N,) of surfaces with unit `normals_room (N, 3)` (room frame) under the fixed light."""
    return AMBIENT + (1.0 - AMBIENT) * np.clip(normals_room @ LIGHT_DIRECTION_ROOM, 0.0, None)


def _soft_square(coordinate: np.ndarray, period_m: float, phase: float) -> np.ndarray:
    """Weight in [0, 1] alternating with `period_m` along `coordinate`, with smooth edges."""
    wave = np.sin(2.0 * math.pi * coordinate / period_m + phase)
    return 0.5 + 0.5 * np.tanh(STRIPE_SHARPNESS * wave) / math.tanh(STRIPE_SHARPNESS)


def _front_coordinates(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) on faces normal to the box's y axis: s along its width (x), t up (z)."""
    return points[:, 0], points[:, 2]


@dataclass(frozen=True)
class Plain:
    """One colour with a gentle large-scale brightness variation (paint, wood, fabric, cardboard, plastic)."""

    rgb: tuple[float, float, float]
    variation: float  # relative brightness amplitude
    phase: tuple[float, float, float]

    def colors(self, points: np.ndarray, face_axis: np.ndarray) -> np.ndarray:
        wave = np.sin(2.0 * math.pi * points / PLAIN_WAVELENGTH_M + np.asarray(self.phase)).mean(axis=1)
        return np.asarray(self.rgb) * (1.0 + self.variation * wave)[:, None]


@dataclass(frozen=True)
class Stripes:
    """Two colours alternating in soft bands along one box axis (slats, bin bands, floor planks); faces normal
    to that axis have no band coordinate and show the base colour."""

    rgb: tuple[float, float, float]
    stripe_rgb: tuple[float, float, float]
    period_m: float
    axis: int
    phase: float

    def colors(self, points: np.ndarray, face_axis: np.ndarray) -> np.ndarray:
        weight = _soft_square(points[:, self.axis], self.period_m, self.phase)
        weight = np.where(face_axis == self.axis, 0.0, weight)[:, None]
        return (1.0 - weight) * np.asarray(self.rgb) + weight * np.asarray(self.stripe_rgb)


@dataclass(frozen=True)
class Gratings:
    """A picture: coloured sine gratings summed on the faces normal to the box's y axis, a frame colour on the
    thin edges. `wave_vectors (K, 2)` in cycles per metre over (s, t), `amplitudes (K, 3)` RGB."""

    base_rgb: tuple[float, float, float]
    frame_rgb: tuple[float, float, float]
    wave_vectors: tuple[tuple[float, float], ...]
    phases: tuple[float, ...]
    amplitudes: tuple[tuple[float, float, float], ...]

    def colors(self, points: np.ndarray, face_axis: np.ndarray) -> np.ndarray:
        s, t = _front_coordinates(points)
        waves = np.asarray(self.wave_vectors)
        argument = 2.0 * math.pi * (np.outer(s, waves[:, 0]) + np.outer(t, waves[:, 1])) + np.asarray(self.phases)
        waves_rgb = np.sin(argument)[:, :, None] * np.asarray(self.amplitudes)[None, :, :]
        picture = np.asarray(self.base_rgb) + waves_rgb.sum(axis=1)
        return np.where((face_axis == 1)[:, None], picture, np.asarray(self.frame_rgb))


@dataclass(frozen=True)
class Strokes:
    """A whiteboard: near-white with a few dark marker strokes on the faces normal to the box's y axis.

    Each stroke is a wavy line t = center + amplitude * sin(2 pi s / wavelength + phase) for s in [start, end],
    drawn with a Gaussian profile of `STROKE_SIGMA_M` across it and smooth ends."""

    board_rgb: tuple[float, float, float]
    frame_rgb: tuple[float, float, float]
    ink_rgb: tuple[float, float, float]
    # (start, end, center, amplitude, wavelength, phase) per stroke, metres and radians
    strokes: tuple[tuple[float, float, float, float, float, float], ...]

    def colors(self, points: np.ndarray, face_axis: np.ndarray) -> np.ndarray:
        s, t = _front_coordinates(points)
        # Strokes blend multiplicatively (the uncovered share is a product): smooth where they cross, unlike max.
        uncovered = np.ones(len(points))
        for start, end, center, amplitude, wavelength, phase in self.strokes:
            line = center + amplitude * np.sin(2.0 * math.pi * s / wavelength + phase)
            across = np.exp(-0.5 * ((t - line) / STROKE_SIGMA_M) ** 2)
            along = np.clip(np.minimum(s - start, end - s) / (2.0 * STROKE_SIGMA_M) + 0.5, 0.0, 1.0)
            uncovered *= 1.0 - across * along * along * (3.0 - 2.0 * along)
        board = uncovered[:, None] * np.asarray(self.board_rgb) + (1.0 - uncovered)[:, None] * np.asarray(self.ink_rgb)
        return np.where((face_axis == 1)[:, None], board, np.asarray(self.frame_rgb))


def _jitter(rng: np.random.Generator, rgb: tuple[float, float, float], spread: float) -> tuple[float, float, float]:
    r, g, b = np.clip(np.asarray(rgb) + rng.uniform(-spread, spread, 3), 0.0, 255.0)
    return float(r), float(g), float(b)


def _phase3(rng: np.random.Generator) -> tuple[float, float, float]:
    a, b, c = rng.uniform(0.0, 2.0 * math.pi, 3)
    return float(a), float(b), float(c)


def plain(
    rng: np.random.Generator, rgb: tuple[float, float, float], spread: float = 12.0, variation: float = 0.05
) -> Plain:
    """`rgb` jittered by up to `spread` per channel, with a random phase for the brightness variation."""
    return Plain(_jitter(rng, rgb, spread), variation, _phase3(rng))


def wall_paint(rng: np.random.Generator) -> Plain:
    return plain(rng, (225.0, 220.0, 208.0), spread=18.0, variation=0.04)


def floor_planks(rng: np.random.Generator) -> Stripes:
    """Wide planks (or carpet tiles) in two close tones, so the floor is not one flat colour."""
    base = _jitter(rng, (150.0, 115.0, 80.0), 40.0)
    stripe = tuple(float(c) * 0.85 for c in base)
    period, axis, phase = float(rng.uniform(0.8, 1.2)), int(rng.integers(0, 2)), float(rng.uniform(0, 2 * math.pi))
    return Stripes(base, stripe, period, axis, phase)


def wood(rng: np.random.Generator) -> Plain:
    tones = ((160.0, 115.0, 70.0), (110.0, 75.0, 45.0), (200.0, 170.0, 125.0), (90.0, 60.0, 40.0))
    return plain(rng, tones[int(rng.integers(len(tones)))])


def fabric(rng: np.random.Generator) -> Plain:
    tones = ((70.0, 90.0, 130.0), (130.0, 60.0, 55.0), (95.0, 110.0, 80.0), (150.0, 140.0, 125.0), (60.0, 60.0, 65.0))
    return plain(rng, tones[int(rng.integers(len(tones)))], spread=15.0)


def painted(rng: np.random.Generator) -> Plain:
    """Painted or laminated furniture panels: white, grey or a muted colour."""
    tones = ((230.0, 230.0, 225.0), (160.0, 160.0, 158.0), (180.0, 150.0, 110.0), (90.0, 110.0, 120.0))
    return plain(rng, tones[int(rng.integers(len(tones)))])


def bedding(rng: np.random.Generator) -> Plain:
    return plain(rng, (225.0, 225.0, 230.0), spread=25.0)


def window_glass(rng: np.random.Generator) -> Plain:
    return plain(rng, (175.0, 205.0, 230.0), spread=15.0, variation=0.08)


def cardboard(rng: np.random.Generator) -> Plain:
    """Box: plain cardboard brown."""
    return plain(rng, (175.0, 135.0, 90.0), spread=10.0, variation=0.03)


def crate_slats(rng: np.random.Generator) -> Stripes:
    """Crate: light wooden slats with dark gaps, horizontal bands on its sides."""
    slat = _jitter(rng, (195.0, 155.0, 105.0), 12.0)
    gap = _jitter(rng, (95.0, 70.0, 45.0), 10.0)
    return Stripes(slat, gap, float(rng.uniform(0.14, 0.18)), 2, float(rng.uniform(0, 2 * math.pi)))


def trash_can_grey(rng: np.random.Generator) -> Plain:
    """Trash can: plain grey plastic."""
    grey = float(rng.uniform(110.0, 150.0))
    return Plain((grey, grey, grey + 4.0), 0.03, _phase3(rng))


def recycling_bands(rng: np.random.Generator) -> Stripes:
    """Recycling bin: blue with horizontal white bands."""
    blue = _jitter(rng, (40.0, 90.0, 190.0), 15.0)
    white = _jitter(rng, (238.0, 238.0, 238.0), 8.0)
    return Stripes(blue, white, float(rng.uniform(0.14, 0.18)), 2, float(rng.uniform(0, 2 * math.pi)))


def picture_gratings(rng: np.random.Generator) -> Gratings:
    """Picture: a colourful high-frequency pattern (wavelengths 8-16 cm) in a dark frame."""
    count = 3
    wavelengths = rng.uniform(0.08, 0.16, count)
    angles = rng.uniform(0.0, math.pi, count)
    waves = tuple((float(math.cos(a) / w), float(math.sin(a) / w)) for a, w in zip(angles, wavelengths))
    amplitudes = tuple(tuple(float(v) for v in rng.uniform(-60.0, 60.0, 3)) for _ in range(count))
    base = _jitter(rng, (128.0, 128.0, 128.0), 30.0)
    phases = tuple(float(p) for p in rng.uniform(0.0, 2.0 * math.pi, count))
    return Gratings(base, _jitter(rng, (45.0, 38.0, 32.0), 10.0), waves, phases, amplitudes)


def whiteboard_strokes(rng: np.random.Generator, width: float, height: float) -> Strokes:
    """Whiteboard of `width` x `height` metres: near-white with two to four dark strokes inside its margins."""
    inks = ((25.0, 25.0, 30.0), (20.0, 40.0, 120.0), (140.0, 25.0, 25.0))
    margin = 0.1 * min(width, height)
    strokes = []
    for _ in range(int(rng.integers(2, 5))):
        start = float(rng.uniform(margin, 0.45 * width))
        end = min(start + float(rng.uniform(0.25, 0.5)) * width, width - margin)
        # Gentle slopes keep the stroke width (measured vertically) close to its true width.
        amplitude, wavelength = float(rng.uniform(0.005, 0.03)), float(rng.uniform(0.15, 0.3))
        center = float(rng.uniform(margin + amplitude, height - margin - amplitude))
        strokes.append((start, end, center, amplitude, wavelength, float(rng.uniform(0, 2 * math.pi))))
    return Strokes(
        _jitter(rng, (240.0, 240.0, 236.0), 6.0),
        _jitter(rng, (175.0, 175.0, 180.0), 10.0),
        inks[int(rng.integers(len(inks)))],
        tuple(strokes),
    )
