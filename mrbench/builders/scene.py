"""Scene graph, closed-world facts and the Pillow renderer of MRBench-Synth.

A :class:`Scene` is a background and 2–4 :class:`SceneObject` s. Every object has a shape (unique
within its scene, so "the circle" is unambiguous), a colour, a size, a pattern and a state, and sits
in one cell of a 3×3 grid with a small jitter. Everything is stored in *fractions of the image side*,
so the same scene renders at any image size and has the same facts at any size.

Facts (closed world)
--------------------
:meth:`Scene.facts` returns every fact string true in the scene; any fact of
:func:`fact_vocabulary` not in that set is false. The fact strings are::

    circle                        entity: the scene holds a circle
    circle.color=red              attribute (colour)
    circle.size=large             attribute (size)
    circle.pattern=striped        attribute (pattern)
    circle.state=cracked          action_or_state
    circle|left_of|square         relation (both directions are facts: square|right_of|circle)
    scene.background=gray         scene

Relations are derived from the object *centres* (not from the grid cells): ``a|left_of|b`` holds when
``x_b - x_a >= RELATION_MARGIN`` (fractions of the image side, y grows downwards; ``above`` /
``below`` likewise on y). Centres closer than ``ALIGN_TOLERANCE`` on an axis have no relation on that
axis; anything in between is ambiguous and :func:`relations_from_centres` refuses it. The grid
(column and row pitch 1/3, jitter at most ``JITTER``) keeps every pair of distinct cells on the clear
side of both thresholds, and every pair of objects holds at least one relation.

Rendering
---------
States are drawn so that every shape shows them (a rotation would not show on a circle):
``cracked`` cuts a zig-zag gap through the object, ``spinning`` adds two motion arcs around it,
``intact`` is plain. :func:`render_scene` draws at twice the requested size and downsamples with a
2×2 box filter (plain antialiasing, deterministic). A :class:`Nuisance` adds the NIGHTS-like changes used by the
image→image task: per-object shade jitter, a background shade shift and sparse Gaussian pixel noise
(luminance, ``NOISE_SHARE`` of the pixels) from a fixed seed. :func:`save_png` writes PNGs with fixed
options and no metadata chunks, so the bytes are a function of the pixels (and of the zlib that Pillow
was built with: a different Pillow/zlib build may compress the same pixels to other bytes).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mrbench.data.schema import ACTION_OR_STATE, ATTRIBUTE, ENTITY, RELATION, SCENE

# --------------------------------------------------------------------------- vocabulary
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross", "diamond", "heart")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (245, 215, 40),
    "green": (45, 165, 70),
    "blue": (45, 95, 215),
    "purple": (135, 65, 190),
    "pink": (245, 130, 195),
    "brown": (135, 85, 45),
}
SIZES: tuple[str, ...] = ("small", "large")
PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted")
STATES: tuple[str, ...] = ("intact", "cracked", "spinning")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (246, 246, 246),
    "gray": (150, 150, 150),
    "beige": (232, 218, 184),
    "black": (28, 28, 28),
}
RELATIONS: tuple[str, ...] = ("left_of", "right_of", "above", "below")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "size": SIZES,
    "pattern": PATTERNS,
    "state": STATES,
}
"""Per-object attribute name → allowed values (``state`` is the action-or-state grain)."""

CONVERSE: dict[str, str] = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}

RADIUS: dict[str, float] = {"small": 0.08, "large": 0.12}
"""Object radius (circumscribed circle) in fractions of the image side."""
SPIN_RADIUS = 1.2
"""Motion arcs of a spinning object are drawn at this multiple of its radius."""
JITTER = 0.02
"""Maximum jitter of an object centre from its cell centre, per axis, in fractions of the side."""
RELATION_MARGIN = 0.2
"""Minimum centre offset (fraction of the side) for a left/right/above/below relation."""
ALIGN_TOLERANCE = 0.08
"""Maximum centre offset (fraction of the side) for two objects to count as aligned on an axis."""
GRID = 3
CELLS: tuple[tuple[int, int], ...] = tuple((c, r) for r in range(GRID) for c in range(GRID))
"""Grid cells as ``(column, row)``."""

FACT_TYPES = (ENTITY, ATTRIBUTE, ACTION_OR_STATE, RELATION, SCENE)


class AmbiguousLayout(ValueError):
    """Two object centres are neither clearly apart nor aligned on an axis."""


# --------------------------------------------------------------------------- facts
def entity_fact(shape: str) -> str:
    return shape


def attr_fact(shape: str, attr: str, value: str) -> str:
    return f"{shape}.{attr}={value}"


def relation_fact(a: str, rel: str, b: str) -> str:
    return f"{a}|{rel}|{b}"


def background_fact(bg: str) -> str:
    return f"scene.background={bg}"


def parse_fact(fact: str) -> tuple[str, ...]:
    """Split a fact string into its parts.

    Returns ``("entity", shape)``, ``("attr", shape, attr, value)``, ``("relation", a, rel, b)`` or
    ``("scene", "background", value)``.
    """
    if "|" in fact:
        a, rel, b = fact.split("|")
        return ("relation", a, rel, b)
    if "=" in fact:
        lhs, value = fact.split("=", 1)
        subject, attr = lhs.split(".", 1)
        if subject == "scene":
            return ("scene", attr, value)
        return ("attr", subject, attr, value)
    return ("entity", fact)


def fact_type(fact: str) -> str:
    """Grain type of a fact: entity, attribute, action_or_state (``.state=``), relation or scene."""
    p = parse_fact(fact)
    if p[0] == "entity":
        return ENTITY
    if p[0] == "relation":
        return RELATION
    if p[0] == "scene":
        return SCENE
    return ACTION_OR_STATE if p[2] == "state" else ATTRIBUTE


def fact_shapes(fact: str) -> tuple[str, ...]:
    """Shapes a fact mentions (none for scene facts)."""
    p = parse_fact(fact)
    if p[0] == "entity":
        return (p[1],)
    if p[0] == "attr":
        return (p[1],)
    if p[0] == "relation":
        return (p[1], p[3])
    return ()


def converse_fact(fact: str) -> str | None:
    """The equivalent relation fact with subject and object swapped (``None`` for non-relations)."""
    p = parse_fact(fact)
    if p[0] != "relation":
        return None
    return relation_fact(p[3], CONVERSE[p[2]], p[1])


@lru_cache(maxsize=1)
def fact_vocabulary() -> tuple[str, ...]:
    """Every fact string the generator can ever produce, sorted."""
    facts: list[str] = [background_fact(b) for b in BACKGROUNDS]
    for s in SHAPES:
        facts.append(entity_fact(s))
        for attr, values in ATTRIBUTES.items():
            facts.extend(attr_fact(s, attr, v) for v in values)
        for t in SHAPES:
            if t != s:
                facts.extend(relation_fact(s, r, t) for r in RELATIONS)
    return tuple(sorted(facts))


@lru_cache(maxsize=1)
def fact_index() -> dict[str, int]:
    """Fact string → row of :func:`fact_vocabulary`."""
    return {f: i for i, f in enumerate(fact_vocabulary())}


def relations_from_centres(centres: dict[str, tuple[float, float]]) -> set[str]:
    """Relation facts implied by object centres (fractions of the side; y grows downwards).

    Raises :class:`AmbiguousLayout` when an offset lies between ``ALIGN_TOLERANCE`` and
    ``RELATION_MARGIN`` (neither clearly apart nor aligned).
    """
    facts: set[str] = set()
    names = sorted(centres)
    for a in names:
        for b in names:
            if a == b:
                continue
            (xa, ya), (xb, yb) = centres[a], centres[b]
            for delta, pos, neg in ((xb - xa, "left_of", "right_of"), (yb - ya, "above", "below")):
                if delta >= RELATION_MARGIN:
                    facts.add(relation_fact(a, pos, b))
                elif delta <= -RELATION_MARGIN:
                    facts.add(relation_fact(a, neg, b))
                elif abs(delta) > ALIGN_TOLERANCE:
                    raise AmbiguousLayout(f"{a} and {b} are {abs(delta):.3f} apart on an axis: neither aligned nor clearly apart")
    return facts


def scene_signature(facts: frozenset[str] | set[str] | list[str]) -> str:
    """sha256 hex of the canonical JSON of a sorted fact list: a scene's identity up to jitter."""
    blob = json.dumps(sorted(facts), separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


TRAIN_PERCENT = 30
"""Share (in %) of the scene space given to the train split."""


def split_of_signature(signature: str) -> str:
    """``"train"`` when ``int(signature[:8], 16) % 100 < TRAIN_PERCENT``, else ``"test"``."""
    return "train" if int(signature[:8], 16) % 100 < TRAIN_PERCENT else "test"


# --------------------------------------------------------------------------- scene graph
@dataclass(frozen=True)
class SceneObject:
    """One object. ``cell`` is ``(column, row)`` of the 3×3 grid; ``jx``/``jy`` its centre jitter."""

    shape: str
    color: str
    size: str
    pattern: str
    state: str
    cell: tuple[int, int]
    jx: float = 0.0
    jy: float = 0.0

    @property
    def centre(self) -> tuple[float, float]:
        """Centre in fractions of the image side (x right, y down)."""
        c, r = self.cell
        return ((c + 0.5) / GRID + self.jx, (r + 0.5) / GRID + self.jy)

    @property
    def radius(self) -> float:
        return RADIUS[self.size]

    def attr(self, name: str) -> str:
        return str(getattr(self, name))


@dataclass(frozen=True)
class Scene:
    """A background and its objects (shapes unique, cells distinct)."""

    background: str
    objects: tuple[SceneObject, ...]

    def __post_init__(self) -> None:
        shapes = [o.shape for o in self.objects]
        cells = [o.cell for o in self.objects]
        if len(set(shapes)) != len(shapes) or len(set(cells)) != len(cells):
            raise ValueError(f"scene objects need distinct shapes and cells: {shapes} {cells}")

    @cached_property
    def facts(self) -> frozenset[str]:
        """Closed-world set of facts true in this scene."""
        out: set[str] = {background_fact(self.background)}
        for o in self.objects:
            out.add(entity_fact(o.shape))
            for attr in ATTRIBUTES:
                out.add(attr_fact(o.shape, attr, o.attr(attr)))
        out |= relations_from_centres({o.shape: o.centre for o in self.objects})
        return frozenset(out)

    @property
    def signature(self) -> str:
        return scene_signature(self.facts)

    @property
    def shapes(self) -> tuple[str, ...]:
        return tuple(o.shape for o in self.objects)

    def obj(self, shape: str) -> SceneObject:
        for o in self.objects:
            if o.shape == shape:
                return o
        raise KeyError(shape)

    def index(self, shape: str) -> int:
        return self.shapes.index(shape)

    def with_object(self, which: str, /, **changes: object) -> "Scene":
        """A copy with the object whose shape is ``which`` changed (dataclass ``replace`` semantics)."""
        if which not in self.shapes:
            raise KeyError(which)
        return Scene(self.background, tuple(replace(o, **changes) if o.shape == which else o for o in self.objects))  # type: ignore[arg-type]

    def with_background(self, background: str) -> "Scene":
        return Scene(background, self.objects)

    def rejittered(self, rng: random.Random) -> "Scene":
        """Same cells and attributes, fresh centre jitter (facts unchanged)."""
        return Scene(self.background, tuple(replace(o, jx=_jitter(rng), jy=_jitter(rng)) for o in self.objects))

    def free_cells(self) -> list[tuple[int, int]]:
        used = {o.cell for o in self.objects}
        return [c for c in CELLS if c not in used]

    def to_dict(self, image_size: int) -> dict[str, object]:
        """JSON form with centres ``x``, ``y`` and radius ``r`` in pixels of the rendered image."""
        objs = []
        for o in self.objects:
            x, y = o.centre
            objs.append(
                {
                    "shape": o.shape,
                    "color": o.color,
                    "size": o.size,
                    "pattern": o.pattern,
                    "state": o.state,
                    "cell": list(o.cell),
                    "x": round(x * image_size, 3),
                    "y": round(y * image_size, 3),
                    "r": round(o.radius * image_size, 3),
                }
            )
        return {"background": self.background, "objects": objs}


def _jitter(rng: random.Random) -> float:
    return round(rng.uniform(-JITTER, JITTER), 4)


def random_object(rng: random.Random, shape: str, cell: tuple[int, int]) -> SceneObject:
    return SceneObject(
        shape=shape,
        color=rng.choice(tuple(COLORS)),
        size=rng.choice(SIZES),
        pattern=rng.choice(PATTERNS),
        state=rng.choice(STATES),
        cell=cell,
        jx=_jitter(rng),
        jy=_jitter(rng),
    )


def random_scene(rng: random.Random, n_objects: int | None = None) -> Scene:
    """A uniformly random scene with ``n_objects`` (default: 2, 3 or 4) objects."""
    n = n_objects if n_objects is not None else rng.choice((2, 3, 3, 4))
    shapes = rng.sample(SHAPES, n)
    cells = rng.sample(CELLS, n)
    return Scene(rng.choice(tuple(BACKGROUNDS)), tuple(random_object(rng, s, c) for s, c in zip(shapes, cells)))


# --------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class Nuisance:
    """Meaning-preserving rendering changes: colour shade offsets, background shift, pixel noise.

    ``shades[i]`` is added to the RGB colour of object ``i`` (by position in ``scene.objects``).
    """

    shades: tuple[tuple[int, int, int], ...] = ()
    background_shift: int = 0
    noise_sigma: float = 0.0
    noise_seed: int = 0

    @staticmethod
    def random(rng: random.Random, n_objects: int = 4, shade: int = 12, shift: int = 10, noise_sigma: float = 8.0) -> "Nuisance":
        return Nuisance(
            shades=tuple(tuple(rng.randint(-shade, shade) for _ in range(3)) for _ in range(n_objects)),  # type: ignore[misc]
            background_shift=rng.randint(-shift, shift),
            noise_sigma=noise_sigma,
            noise_seed=rng.getrandbits(63),
        )


def _clip(c: tuple[int, ...]) -> tuple[int, int, int]:
    return tuple(max(0, min(255, int(v))) for v in c)  # type: ignore[return-value]


def _unit_polygon(shape: str) -> list[tuple[float, float]] | None:
    """Outline of ``shape`` inside the unit circle (y down); ``None`` for the circle."""
    if shape == "circle":
        return None
    if shape == "square":
        s = 0.76
        return [(-s, -s), (s, -s), (s, s), (-s, s)]
    if shape == "triangle":
        return [(math.cos(math.radians(a)), -math.sin(math.radians(a))) for a in (90, 210, 330)]
    if shape == "star":
        pts = []
        for i in range(10):
            rad = 1.0 if i % 2 == 0 else 0.42
            a = math.radians(90 + 36 * i)
            pts.append((rad * math.cos(a), -rad * math.sin(a)))
        return pts
    if shape == "hexagon":
        return [(math.cos(math.radians(90 + 60 * i)), -math.sin(math.radians(90 + 60 * i))) for i in range(6)]
    if shape == "cross":
        a, b = 0.3, 0.85
        return [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
    if shape == "diamond":
        return [(0.0, -1.0), (0.68, 0.0), (0.0, 1.0), (-0.68, 0.0)]
    if shape == "heart":
        raw = []
        for i in range(48):
            t = 2 * math.pi * i / 48
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            raw.append((x, -y))
        ys = [p[1] for p in raw]
        cy = (max(ys) + min(ys)) / 2
        pts = [(x, y - cy) for x, y in raw]
        scale = max(math.hypot(x, y) for x, y in pts)
        return [(x / scale, y / scale) for x, y in pts]
    raise ValueError(f"unknown shape {shape!r}")


_UNIT_POLYGONS: dict[str, list[tuple[float, float]] | None] = {s: _unit_polygon(s) for s in SHAPES}


def _luminance(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, **kw: object) -> None:
    poly = _UNIT_POLYGONS[shape]
    if poly is None:
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), **kw)  # type: ignore[arg-type]
    else:
        draw.polygon([(cx + r * x, cy + r * y) for x, y in poly], **kw)  # type: ignore[arg-type]


_CRACK: tuple[tuple[float, float], ...] = ((0.0, -1.15), (0.28, -0.55), (-0.22, -0.05), (0.26, 0.45), (-0.05, 1.15))
"""Zig-zag of a cracked object, in units of its radius (cut out of fill and outline)."""


def _patch_half(r: float, line_w: int) -> int:
    return int(math.ceil(r * SPIN_RADIUS)) + line_w + 2


@lru_cache(maxsize=1024)
def _object_masks(shape: str, r: float, state: str, line_w: int) -> tuple[Image.Image, Image.Image]:
    """``(fill mask, ink mask)`` of one object on a square patch centred on the object's centre.

    The ink mask holds the outline and, for a spinning object, its two motion arcs; a crack is cut
    out of both masks, so the background shows through it.
    """
    half = _patch_half(r, line_w)
    P = 2 * half + 1
    c = float(half)
    fill = Image.new("L", (P, P), 0)
    ink = Image.new("L", (P, P), 0)
    _draw_shape(ImageDraw.Draw(fill), shape, c, c, r, fill=255)
    idraw = ImageDraw.Draw(ink)
    _draw_shape(idraw, shape, c, c, r, outline=255, width=line_w)
    if state == "spinning":
        R = r * SPIN_RADIUS
        box = (c - R, c - R, c + R, c + R)
        idraw.arc(box, 200, 255, fill=255, width=line_w + 1)
        idraw.arc(box, 20, 75, fill=255, width=line_w + 1)
    elif state == "cracked":
        zig = [(c + r * zx, c + r * zy) for zx, zy in _CRACK]
        w = max(3, round(r * 0.15))
        for m in (fill, ink):
            ImageDraw.Draw(m).line(zig, fill=0, width=w, joint="curve")
    return fill, ink


@lru_cache(maxsize=256)
def _pattern_mask(pattern: str, P: int, period: float) -> Image.Image:
    """Mask of the stripes / dots of a patch of side ``P`` whose centre is the object centre."""
    m = Image.new("L", (P, P), 0)
    d = ImageDraw.Draw(m)
    c = P // 2
    if pattern == "striped":
        w = max(2, round(period * 0.25))
        k = c - period * math.ceil(2 * P / period)
        while k < 2 * P:
            d.line((k, 0, k + P, P), fill=255, width=w)
            k += period
    elif pattern == "dotted":
        dr = max(1.2, period * 0.2)
        n = int(math.ceil(c / period)) + 1
        for row in range(-n, n + 1):
            off = period / 2 if row % 2 else 0.0
            for col in range(-n - 1, n + 1):
                x, y = c + col * period + off, c + row * period
                d.ellipse((x - dr, y - dr, x + dr, y + dr), fill=255)
    return m


def render_scene(scene: Scene, image_size: int = 128, nuisance: Nuisance | None = None) -> Image.Image:
    """Render ``scene`` as an RGB image of ``image_size``² pixels.

    Drawn at 2× and downsampled by a 2×2 box filter. Object centres are rounded to whole pixels of the
    2× canvas (at most a quarter pixel off in the output). Patterns are drawn in white (dark grey on
    yellow, see ``PATTERN_INK``); outlines are dark on light backgrounds and light on black.
    """
    S = 2 * image_size
    nz = nuisance or Nuisance()
    bg = _clip(tuple(v + nz.background_shift for v in BACKGROUNDS[scene.background]))
    ink_color = (30, 30, 30) if _luminance(bg) > 80 else (225, 225, 225)
    img = Image.new("RGB", (S, S), bg)
    line_w = max(2, round(S / 110))
    for i, o in enumerate(scene.objects):
        base = COLORS[o.color]
        shade = nz.shades[i] if i < len(nz.shades) else (0, 0, 0)
        color = _clip(tuple(c + d for c, d in zip(base, shade)))
        x, y = o.centre
        r = o.radius * S
        fill_mask, ink_mask = _object_masks(o.shape, r, o.state, line_w)
        P = fill_mask.size[0]
        half = P // 2
        x0, y0 = round(x * S) - half, round(y * S) - half
        fill = Image.new("RGB", (P, P), color)
        if o.pattern != "solid":
            pc = PATTERN_INK.get(o.color, (250, 250, 250))
            # pattern pitch: at least ~6 output pixels, so pure object colour stays between stripes
            fill.paste(pc, (0, 0, P, P), _pattern_mask(o.pattern, P, round(max(S * 0.047, r * 0.55), 2)))
        img.paste(fill, (x0, y0), fill_mask)
        img.paste(ink_color, (x0, y0, x0 + P, y0 + P), ink_mask)
    out = img.reduce(2)
    if nz.noise_sigma > 0:
        # sparse luminance noise: NOISE_SHARE of the pixels shift by N(0, sigma) on all channels
        arr = np.asarray(out, dtype=np.int16)
        g = np.random.default_rng(nz.noise_seed)
        noise = np.rint(g.normal(0.0, nz.noise_sigma, arr.shape[:2])) * (g.random(arr.shape[:2]) < NOISE_SHARE)
        arr = np.clip(arr + noise.astype(np.int16)[..., None], 0, 255).astype(np.uint8)
        out = Image.fromarray(arr, "RGB")
    return out


PATTERN_INK: dict[str, tuple[int, int, int]] = {"yellow": (70, 70, 70)}
"""Stripe / dot colour per object colour where it is not white (white on yellow is too faint; dark
ink on orange or red would blend into brown at the edges)."""

NOISE_SHARE = 0.12
"""Share of pixels a :class:`Nuisance` with ``noise_sigma > 0`` perturbs (sparse noise keeps PNGs small)."""


def save_png(img: Image.Image, path: Path) -> None:
    """Write ``img`` as PNG with fixed options (no metadata chunks): same pixels → same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)


PNG_COMPRESS_LEVEL = 3
"""zlib level of written PNGs (fixed: the bytes, hence the fingerprint, depend on it)."""


__all__ = [
    "ALIGN_TOLERANCE",
    "ATTRIBUTES",
    "BACKGROUNDS",
    "CELLS",
    "COLORS",
    "CONVERSE",
    "JITTER",
    "NOISE_SHARE",
    "PATTERNS",
    "PATTERN_INK",
    "PNG_COMPRESS_LEVEL",
    "RADIUS",
    "RELATIONS",
    "RELATION_MARGIN",
    "SHAPES",
    "SIZES",
    "STATES",
    "TRAIN_PERCENT",
    "AmbiguousLayout",
    "Nuisance",
    "Scene",
    "SceneObject",
    "attr_fact",
    "background_fact",
    "converse_fact",
    "entity_fact",
    "fact_index",
    "fact_shapes",
    "fact_type",
    "fact_vocabulary",
    "parse_fact",
    "random_scene",
    "relation_fact",
    "relations_from_centres",
    "render_scene",
    "save_png",
    "scene_signature",
    "split_of_signature",
]
