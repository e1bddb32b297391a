"""Scripted handwriting: each digit 0-9 as polylines, drawn with jitter, for the browser test.

A digit is a list of strokes; a stroke is a list of ``(x, y)`` points in [0, 1] (y grows
downwards), roughly as a person writes it with a mouse. :func:`jittered` draws a variant:
every point moved a little, the whole digit scaled, slanted and moved off-centre, so that
no two drawings are alike and none sits where MNIST's would.
"""

from __future__ import annotations

import math
import random


def arc(
    cx: float, cy: float, rx: float, ry: float, start: float, stop: float, n: int = 12
) -> list[tuple[float, float]]:
    """Points of an ellipse from angle ``start`` to ``stop`` (degrees; 0 = right, 90 = down)."""
    return [
        (cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
        for a in (start + (stop - start) * i / n for i in range(n + 1))
    ]


DIGITS: dict[int, list[list[tuple[float, float]]]] = {
    0: [arc(0.5, 0.5, 0.24, 0.36, -90, 275, 18)],
    1: [[(0.42, 0.25), (0.54, 0.14), (0.54, 0.86)]],
    2: [arc(0.5, 0.33, 0.22, 0.18, 190, 370, 10) + [(0.68, 0.45), (0.28, 0.85), (0.76, 0.85)]],
    3: [arc(0.48, 0.32, 0.22, 0.17, 200, 450, 10) + arc(0.48, 0.67, 0.25, 0.19, -90, 160, 10)],
    4: [[(0.6, 0.14), (0.24, 0.62), (0.78, 0.62)], [(0.62, 0.36), (0.62, 0.88)]],
    5: [[(0.72, 0.15), (0.36, 0.15), (0.32, 0.47)] + arc(0.48, 0.64, 0.24, 0.21, -130, 150, 12)],
    6: [[(0.66, 0.14), (0.4, 0.4)] + arc(0.5, 0.66, 0.21, 0.2, 200, 560, 16)],
    7: [[(0.25, 0.16), (0.76, 0.16), (0.44, 0.87)]],
    8: [arc(0.5, 0.31, 0.19, 0.17, 90, 450, 14) + arc(0.5, 0.67, 0.23, 0.19, -90, 270, 14)],
    9: [arc(0.48, 0.33, 0.2, 0.18, 0, 360, 14) + [(0.68, 0.33), (0.62, 0.86)]],
}


def jittered(digit: int, rng: random.Random) -> list[list[tuple[float, float]]]:
    """A variant of ``digit``'s strokes: per point noise of 0.015, size 0.6-1.05, slant
    up to 0.15, and the centre moved up to 0.12 (in units of the canvas)."""
    size, slant = rng.uniform(0.6, 1.05), rng.uniform(-0.15, 0.15)
    dx, dy = rng.uniform(-0.12, 0.12), rng.uniform(-0.12, 0.12)
    out = []
    for stroke in DIGITS[digit]:
        points = []
        for x, y in stroke:
            x, y = x + rng.gauss(0, 0.015), y + rng.gauss(0, 0.015)
            x = 0.5 + (x - 0.5) * size - slant * (y - 0.5) * size + dx
            y = 0.5 + (y - 0.5) * size + dy
            points.append((min(max(x, 0.02), 0.98), min(max(y, 0.02), 0.98)))
        out.append(points)
    return out
