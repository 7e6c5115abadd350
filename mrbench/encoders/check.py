"""``check-encoder``: run an encoder through tiny probe tasks and report what is wrong, one line each.

The probe benchmark is built here, in memory plus a temporary directory of small PNGs drawn with
Pillow (it does not depend on any benchmark builder): ``n_items`` scenes of a coloured shape, each
available as a caption (text), a picture (image) and both (image+text). Items carry the scene
graph (``meta["facts"]``, ``meta["asserts"]`` and the benchmark's ``fact_vocabulary``) so the
``oracle`` encoder passes too. Tasks are made for the modalities the encoder claims:

* text and image: ``probe-t2i`` (with a query instruction), ``probe-i2t``, ``probe-it2i``;
* text only: ``probe-t2t``; image only: ``probe-i2i``.

Checks, in order (each a :class:`CheckResult`; encoder faults never raise):
``protocol`` (``meta`` is an ``EncoderMeta``, ``encode`` accepts ``role``/``task``), ``meta``
(sane field values), ``encode`` (calls succeed), ``dtype``, ``shape`` (``[n, D]``), ``finite``
(no NaN/Inf), ``dimension`` (one ``D`` for every task and role, query and candidate equal, equal
to ``meta.dim`` when set), ``normalisation`` (informative: for cosine, whether raw rows were already
unit-norm; a zero row fails), ``determinism`` (same input twice, max |Δ| ≤ 1e-5 after the
harness's normalisation), ``batch invariance`` (up to 8 items one at a time vs in one batch,
max |Δ| ≤ 1e-4), ``harness`` (the real :func:`~mrbench.encoders.harness.encode_items` path with
several batches) and ``speed`` (seconds per item; above ``slow_seconds`` it is flagged with
``warning=True`` but stays ``ok`` — slow is not wrong).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mrbench.data.schema import Benchmark, Candidate, Query, Task
from mrbench.encoders.base import EncodeInput, Encoder

DETERMINISM_TOL = 1e-5
BATCH_TOL = 1e-4
BATCH_PROBE_ITEMS = 8

_SHAPES = ("circle", "square", "triangle")
_COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
_SIZES = ("small", "large")
_POSITIONS = ("left", "right")


@dataclass(frozen=True)
class CheckResult:
    """One check: ``ok`` is whether it passed; ``detail`` one line; ``warning`` flags a concern
    that is not a failure (e.g. slow)."""

    name: str
    ok: bool
    detail: str
    warning: bool = False


def passed(results: Sequence[CheckResult]) -> bool:
    """Whether every check passed (warnings do not count as failures)."""
    return all(r.ok for r in results)


# ----------------------------------------------------------------------------------------------------
# probe benchmark


def _scene(i: int) -> dict[str, str]:
    colours = list(_COLOURS)
    return {
        "shape": _SHAPES[i % 3],
        "color": colours[(i // 3) % 4],
        "size": _SIZES[(i // 12) % 2],
        "position": _POSITIONS[(i // 24) % 2],
    }


def _draw(scene: dict[str, str], path: Path, variant: int) -> None:
    from PIL import Image, ImageDraw

    w = 64
    bg = (245 - 3 * (variant % 8), 245, 240)
    im = Image.new("RGB", (w, w), bg)
    d = ImageDraw.Draw(im)
    r = 10 if scene["size"] == "small" else 18
    cx = 18 if scene["position"] == "left" else 46
    cy = 32
    fill = _COLOURS[scene["color"]]
    if scene["shape"] == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif scene["shape"] == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    im.save(path, format="PNG")


def probe_benchmark(root: Path, modalities: Sequence[str], n_items: int = 16) -> Benchmark:
    """Build the probe benchmark under ``root`` (PNGs in ``root/images``) for the claimed modalities."""
    n = max(2, int(n_items))
    (root / "images").mkdir(parents=True, exist_ok=True)
    vocab = sorted(
        [f"shape={s}" for s in _SHAPES]
        + [f"color={c}" for c in _COLOURS]
        + [f"size={z}" for z in _SIZES]
        + [f"position={p}" for p in _POSITIONS]
    )
    texts, images, composed = [], [], []
    for i in range(n):
        sc = _scene(i)
        facts = [f"{k}={v}" for k, v in sc.items()]
        caption = f"a {sc['size']} {sc['color']} {sc['shape']} on the {sc['position']}"
        rel = f"images/p{i:04d}.png"
        _draw(sc, root / rel, i)
        meta = {"facts": facts, "asserts": facts}
        texts.append((f"t{i}", caption, None, meta))
        images.append((f"i{i}", None, rel, meta))
        composed.append((f"m{i}", f"the same picture: {caption}", rel, meta))

    def queries(rows: list[tuple[str, Any, Any, dict]]) -> list[Query]:
        return [Query(id=f"q-{r[0]}", text=r[1], image=r[2], meta=dict(r[3])) for r in rows]

    def candidates(rows: list[tuple[str, Any, Any, dict]]) -> list[Candidate]:
        return [Candidate(id=f"c-{r[0]}", text=r[1], image=r[2], meta=dict(r[3])) for r in rows]

    def task(name: str, qm: str, cm: str, q_rows: list, c_rows: list, instruction: str | None = None) -> Task:
        qrels = {f"q-{q[0]}": {f"c-{c[0]}": 1} for q, c in zip(q_rows, c_rows)}
        return Task(name=name, query_modality=qm, candidate_modality=cm, queries=queries(q_rows),
                    candidates=candidates(c_rows), qrels=qrels, query_instruction=instruction)

    tasks: list[Task] = []
    has_t, has_i = "text" in modalities, "image" in modalities
    if has_t and has_i:
        tasks.append(task("probe-t2i", "text", "image", texts, images, "Find the picture that matches the caption."))
        tasks.append(task("probe-i2t", "image", "text", images, texts))
        tasks.append(task("probe-it2i", "image+text", "image", composed, images))
    elif has_t:
        tasks.append(task("probe-t2t", "text", "text", texts, texts))
    elif has_i:
        tasks.append(task("probe-i2i", "image", "image", images, images))
    return Benchmark(name="probe", version="1", tasks=tasks, root=root, metadata={"fact_vocabulary": vocab})


# ----------------------------------------------------------------------------------------------------
# checks


def _err(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0]}" if s else type(e).__name__


@dataclass
class _Unit:
    task: Task
    role: str
    inputs: list[EncodeInput]
    info: Any
    raw: Any = None
    arr: np.ndarray | None = None  # float32 view of the raw output once shape/dtype are fine
    seconds: float = 0.0
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.task.name}/{self.role}"


def _meta_problems(meta: Any) -> list[str]:
    p = []
    if not isinstance(meta.name, str) or not meta.name:
        p.append("name must be a non-empty string")
    if meta.similarity not in ("cosine", "dot"):
        p.append(f"similarity {meta.similarity!r} is not 'cosine' or 'dot'")
    mods = tuple(meta.modalities) if isinstance(meta.modalities, (tuple, list)) else ()
    if not mods or any(m not in ("text", "image") for m in mods):
        p.append(f"modalities {meta.modalities!r} must be a non-empty subset of ('text', 'image')")
    if meta.dim is not None and (isinstance(meta.dim, bool) or not isinstance(meta.dim, int) or meta.dim < 1):
        p.append(f"dim {meta.dim!r} must be None or a positive integer")
    if isinstance(meta.batch_size, bool) or not isinstance(meta.batch_size, int) or meta.batch_size < 1:
        p.append(f"batch_size {meta.batch_size!r} must be a positive integer")
    return p


def _to_float(raw: Any) -> tuple[np.ndarray | None, str]:
    """(float32 array or None, description of the raw type)."""
    from mrbench.encoders.harness import as_array

    is_torch = hasattr(raw, "detach") and hasattr(raw, "cpu") and not isinstance(raw, np.ndarray)
    try:
        arr = as_array(raw)
    except Exception as e:
        return None, f"{type(raw).__name__} not convertible to an array ({_err(e)})"
    desc = f"torch tensor {raw.dtype}" if is_torch else (
        f"{arr.dtype}" if isinstance(raw, np.ndarray) else f"{type(raw).__name__} → {arr.dtype}")
    if arr.dtype.kind not in "fiu":
        return None, desc
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(arr, dtype=np.float32), desc


def _post(arr: np.ndarray, cosine: bool) -> np.ndarray:
    """What the harness would store: rows L2-normalised for cosine (zero rows left as is)."""
    if not cosine:
        return arr.astype(np.float64)
    x = arr.astype(np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def check_encoder(
    encoder: Encoder,
    *,
    n_items: int = 16,
    tmp_dir: Path | None = None,
    slow_seconds: float = 1.0,
) -> list[CheckResult]:
    """Probe ``encoder`` on tiny tasks (see the module docstring); never raises for encoder faults."""
    from mrbench.encoders.registry import protocol_problem

    problem = protocol_problem(encoder)
    if problem is not None:
        return [CheckResult("protocol", False, f"{type(encoder).__name__}: {problem}")]
    meta = encoder.meta
    results = [CheckResult("protocol", True, f"{type(encoder).__name__} with meta {meta.name!r} rev {meta.revision!r}")]
    mp = _meta_problems(meta)
    results.append(CheckResult("meta", not mp, "; ".join(mp) if mp else (
        f"similarity {meta.similarity}, dim {meta.dim if meta.dim is not None else 'unset'}, modalities "
        f"{'+'.join(meta.modalities)}, needs_pixels {meta.needs_pixels}, batch_size {meta.batch_size}")))
    if mp and not [m for m in ("text", "image") if m in (meta.modalities or ())]:
        return results
    if tmp_dir is not None:
        Path(tmp_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mrbench-check-", dir=tmp_dir) as td:
        results += _run_checks(encoder, Path(td), n_items, slow_seconds)
    return results


def _run_checks(encoder: Encoder, root: Path, n_items: int, slow_seconds: float) -> list[CheckResult]:
    from mrbench.encoders.harness import build_inputs, check_dims, encode_items

    meta = encoder.meta
    cosine = meta.similarity == "cosine"
    bench = probe_benchmark(root, [m for m in ("text", "image") if m in meta.modalities], n_items)
    units: list[_Unit] = []
    for task in bench.tasks:
        for role, items in (("query", task.queries), ("candidate", task.candidates)):
            inputs, info = build_inputs(encoder, items, role=role, task=task, bench=bench)
            units.append(_Unit(task=task, role=role, inputs=inputs, info=info))

    def call(u: _Unit, inputs: list[EncodeInput]) -> tuple[Any, float]:
        t0 = time.perf_counter()
        raw = encoder.encode(inputs, role=u.role, task=u.info)  # type: ignore[arg-type]
        return raw, time.perf_counter() - t0

    out: list[CheckResult] = []
    # encode ------------------------------------------------------------------------------------
    for u in units:
        try:
            u.raw, u.seconds = call(u, u.inputs)
        except Exception as e:
            u.error = _err(e)
    failed = [u for u in units if u.error]
    out.append(CheckResult("encode", not failed, (
        f"{failed[0].label}: {failed[0].error}" + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else "")
    ) if failed else f"{len(units)} calls ({', '.join(u.label for u in units)})"))
    live = [u for u in units if not u.error]
    if not live:
        return out + [CheckResult(n, False, "not run: every encode call failed") for n in
                      ("dtype", "shape", "finite", "dimension", "normalisation", "determinism",
                       "batch invariance", "harness", "speed")]

    # dtype / shape / finite ----------------------------------------------------------------------
    dtype_bad, descs, shape_bad, finite_bad = [], set(), [], []
    for u in live:
        arr, desc = _to_float(u.raw)
        descs.add(desc)
        if arr is None:
            dtype_bad.append(f"{u.label}: {desc}")
            continue
        n = len(u.inputs)
        if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] < 1:
            shape_bad.append(f"{u.label}: shape {tuple(arr.shape)} for {n} items, expected ({n}, D)")
            continue
        fin = np.isfinite(arr)
        if not fin.all():
            r = int(np.argwhere(~fin)[0][0])
            finite_bad.append(f"{u.label}: {'NaN' if np.isnan(arr[r]).any() else 'Inf'} for item {u.inputs[r].id!r}")
            continue
        u.arr = arr
    out.append(CheckResult("dtype", not dtype_bad, dtype_bad[0] if dtype_bad else (
        ", ".join(sorted(descs)) + ("" if descs == {"float32"} else " (the harness converts to float32)"))))
    out.append(CheckResult("shape", not shape_bad, shape_bad[0] if shape_bad else
                           "; ".join(sorted({f"{tuple(u.arr.shape)}" for u in live if u.arr is not None})) or "not run"))
    out.append(CheckResult("finite", not finite_bad, finite_bad[0] if finite_bad else "no NaN/Inf"))
    good = [u for u in live if u.arr is not None]
    if not good:
        return out + [CheckResult(n, False, "not run: no valid output") for n in
                      ("dimension", "normalisation", "determinism", "batch invariance", "harness", "speed")]

    # dimension ---------------------------------------------------------------------------------
    dims = {u.label: u.arr.shape[1] for u in good}  # type: ignore[union-attr]
    dim_bad = []
    for task in bench.tasks:
        q, c = dims.get(f"{task.name}/query"), dims.get(f"{task.name}/candidate")
        if q is not None and c is not None and q != c:
            dim_bad.append(f"{task.name}: queries have dimension {q} but candidates {c}")
    if len(set(dims.values())) > 1 and not dim_bad:
        dim_bad.append("dimension differs across tasks: " + ", ".join(f"{k} {v}" for k, v in dims.items()))
    if meta.dim is not None:
        off = [f"{k} {v}" for k, v in dims.items() if v != meta.dim]
        if off:
            dim_bad.append(f"meta.dim is {meta.dim} but output has {off[0]}")
    out.append(CheckResult("dimension", not dim_bad, dim_bad[0] if dim_bad else
                           f"D = {next(iter(dims.values()))} for queries and candidates in every task"))

    # normalisation -----------------------------------------------------------------------------
    norms = np.concatenate([np.linalg.norm(u.arr.astype(np.float64), axis=1) for u in good])  # type: ignore[union-attr]
    zero: tuple[_Unit, int] | None = None
    for u in good:
        z = np.flatnonzero(np.linalg.norm(u.arr, axis=1) == 0)  # type: ignore[arg-type]
        if z.size:
            zero = (u, int(z[0]))
            break
    if zero and cosine:
        u, r = zero
        out.append(CheckResult("normalisation", False,
                               f"{u.label}: zero vector for item {u.inputs[r].id!r}; cosine needs non-zero vectors"))
    else:
        rng = f"norms {norms.min():.3g}–{norms.max():.3g}"
        if cosine:
            unit = bool(np.all(np.abs(norms - 1) < 1e-3))
            detail = (f"raw output already unit-norm ({rng})" if unit
                      else f"raw output not unit-norm ({rng}); the harness L2-normalises it (similarity cosine)")
        else:
            detail = f"similarity dot: used as is ({rng})"
        out.append(CheckResult("normalisation", True, detail))

    # determinism -------------------------------------------------------------------------------
    det_bad, det_max, second_seconds, n_timed = [], 0.0, 0.0, 0
    for u in good:
        try:
            raw2, sec = call(u, u.inputs)
        except Exception as e:
            det_bad.append(f"{u.label}: second call failed: {_err(e)}")
            continue
        second_seconds += sec
        n_timed += len(u.inputs)
        arr2, _ = _to_float(raw2)
        if arr2 is None or arr2.shape != u.arr.shape:  # type: ignore[union-attr]
            det_bad.append(f"{u.label}: second call returned a different shape or type")
            continue
        diff = float(np.max(np.abs(_post(arr2, cosine) - _post(u.arr, cosine)))) if arr2.size else 0.0  # type: ignore[arg-type]
        det_max = max(det_max, diff) if np.isfinite(diff) else float("inf")
        if not diff <= DETERMINISM_TOL:
            det_bad.append(f"{u.label}: same input twice differs by max |Δ| = {diff:.3g} (> {DETERMINISM_TOL:g})")
    out.append(CheckResult("determinism", not det_bad, det_bad[0] if det_bad else f"max |Δ| = {det_max:.3g}"))

    # batch invariance --------------------------------------------------------------------------
    bi_bad, bi_max = [], 0.0
    if det_bad:
        bi_bad.append("not run: the encoder is not deterministic, so batched and single outputs cannot be compared")
    for u in good if not det_bad else []:
        k = min(BATCH_PROBE_ITEMS, len(u.inputs))
        ref = _post(u.arr[:k], cosine)  # type: ignore[index]
        scale = max(1.0, float(np.max(np.abs(ref)))) if not cosine else 1.0
        for j in range(k):
            try:
                raw1, _ = call(u, [u.inputs[j]])
            except Exception as e:
                bi_bad.append(f"{u.label}: encoding item {u.inputs[j].id!r} alone failed: {_err(e)}")
                break
            a1, _ = _to_float(raw1)
            if a1 is None or a1.shape != (1, ref.shape[1]):
                shape = None if a1 is None else tuple(a1.shape)
                bi_bad.append(f"{u.label}: item {u.inputs[j].id!r} alone gave shape {shape}, expected (1, {ref.shape[1]})")
                break
            diff = float(np.max(np.abs(_post(a1, cosine)[0] - ref[j])))
            bi_max = max(bi_max, diff) if np.isfinite(diff) else float("inf")
            if not diff <= BATCH_TOL * scale:
                bi_bad.append(f"{u.label}: item {u.inputs[j].id!r} alone vs in a batch of {len(u.inputs)} "
                              f"differs by max |Δ| = {diff:.3g} (> {BATCH_TOL * scale:g}); padding or batch-norm leak?")
                break
    out.append(CheckResult("batch invariance", not bi_bad, bi_bad[0] if bi_bad else
                           f"one at a time vs batched: max |Δ| = {bi_max:.3g}"))

    # harness -----------------------------------------------------------------------------------
    h_bad = None
    try:
        for task in bench.tasks:
            bs = max(1, len(task.queries) // 3)
            q = encode_items(encoder, task.queries, role="query", task=task, bench=bench, batch_size=bs, num_workers=0)
            c = encode_items(encoder, task.candidates, role="candidate", task=task, bench=bench, batch_size=bs,
                             num_workers=0)
            check_dims(q, c, meta.name, task.name)
    except Exception as e:
        h_bad = _err(e)
    out.append(CheckResult("harness", h_bad is None, h_bad or "encode_items in several batches: validated"))

    # speed -------------------------------------------------------------------------------------
    per_item = second_seconds / n_timed if n_timed else sum(u.seconds for u in good) / sum(len(u.inputs) for u in good)
    slow = per_item > slow_seconds
    out.append(CheckResult("speed", True, (f"SLOW: {per_item:.3g} s/item (above {slow_seconds:g} s)" if slow
                                           else f"{per_item * 1e3:.3g} ms/item (batches of {n_items})"), warning=slow))
    return out
