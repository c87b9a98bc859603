"""README's code stays true (the usage examples run and produce what they say), and
docs/api.md is the API reference the docstrings generate (``python tests/test_readme.py``
rewrites it)."""

import dataclasses
import inspect
import math
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
API_PAGE = ROOT / "docs" / "api.md"


def _block(marker: str) -> str:
    text = README.read_text()
    match = re.search(rf"<!-- {marker} -->\n```[a-z]*\n(.*?)```\n<!-- /{marker} -->", text, re.S)
    assert match, f"README.md has no {marker} block"
    return match.group(1)


def test_usage_example_runs():
    namespace: dict = {}
    exec(compile(_block("usage-example"), "README usage example", "exec"), namespace)
    assert namespace["logits"].shape == (8, 10)
    assert namespace["variables"]["params"]["TDGSPool_0"]["temperature"].shape == (14, 14, 16)


def test_nnx_usage_example_runs():
    namespace: dict = {}
    exec(compile(_block("nnx-usage-example"), "README NNX usage example", "exec"), namespace)
    assert namespace["logits"].shape == (8, 10)
    assert namespace["eval_logits"].shape == (8, 10)
    assert namespace["model"].pool.temperature.shape == (14, 14, 16)
    assert namespace["model"].pool.deterministic is True  # model.eval() reached the pooler


def test_commands_present():
    assert "python -m pytest" in _block("test-command")
    assert "python -m train.main" in _block("main-command")


def _heading_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_resolve():
    """Every relative link in README.md and docs/ names a file that exists and, with '#', a heading
    in it (a moved or renamed page or section breaks the test, not the reader)."""
    pages = [README, *sorted((ROOT / "docs").rglob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path) if path else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.*)$", linked.read_text(), re.M)
                if anchor not in map(_heading_anchor, headings):
                    broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert len(pages) > 3 and not broken, broken


# ----------------------------------------------------------------------------- docs/api.md
_INTERNAL_FIELDS = {"parent", "name"}

_PREAMBLE = """\
# API reference

Every public function and class of `jaxpool`, `jaxpool.functional`, `jaxpool.modules` and
`jaxpool.nnx`: signature and the first paragraph of its docstring. The docstrings hold the rest
(formulas, arguments, shapes, references): `help(jaxpool.tdgs_pool)`. This page is generated from
them: `tests/test_readme.py` fails when it is out of date and `python tests/test_readme.py`
rewrites it.

Conventions shared by every pooler: inputs are NHWC, `(N, H, W, C)` or unbatched `(H, W, C)`, any
float dtype, output in the same dtype; the arithmetic runs in float32 (a float64 input gets float32
precision, except max pooling's exact selection). `strides=None` means strides equal to the window (flax's
`nn.max_pool` defaults to stride 1). Stochastic functions take `key=` and raise without one unless
`deterministic=True`. The study's eight take `implementation='auto' | 'reference' | 'fast'`
(see `jaxpool.functional`'s module docstring); the later five are reference implementations only.
"""

_SECTIONS = """\
## Registry (`jaxpool`)

Build a layer by name; `api='nnx'` gives the `jaxpool.nnx` layer.
@@registry
## Pure functions (`jaxpool`, `jaxpool.functional`)

The math of every pooler; the layers below call these.
@@functions
## Linen layers (`jaxpool`, `jaxpool.modules`)

`flax.linen` Modules; hyperparameters are the dataclass fields shown. Every layer is called as
`layer(x, deterministic=None, rng=None)`; the stochastic ones draw from the rng stream
`rng_collection` (`'pooling'`) unless `rng=` is given, and raise when neither the field nor the
call sets `deterministic`.
@@linen
## NNX layers (`jaxpool.nnx`)

`flax.nnx` Modules with the Linen layers' names, hyperparameters and parameters. Constructed as
`Layer(*hyperparameters, in_features=None, input_size=None, rngs=None)` (the Linen layer's
hyperparameters, by keyword or in its field order; `in_features` where a parameter has a channel
axis, `input_size=(H, W)` where it is per output position), called as
`layer(x, *, deterministic=None, rngs=None)`; `model.eval()` / `model.train()` and
`nnx.view(model, deterministic=...)` set `deterministic`. `import jaxpool.nnx` (`import jaxpool` does not import `flax.nnx`).
@@nnx
## Building blocks

For writing a new pooler or reading the layers.
@@blocks"""


def _rst_to_markdown(text: str) -> str:
    text = re.sub(r":(?:func|class|mod|meth|math):`([^`]*)`", r"`\1`", text)
    return text.replace("``", "`")


def _summary(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return _rst_to_markdown(" ".join(doc.split("\n\n")[0].split()))


def _default(value) -> str:
    if isinstance(value, float) and value == math.sqrt(2):
        return "math.sqrt(2)"
    if callable(value):
        qualname = getattr(value, "__qualname__", repr(value))
        prefix = "nn.initializers." if "initializers" in getattr(value, "__module__", "") else ""
        if "<locals>" in qualname:  # an initializer made by a factory, e.g. constant(3.0)
            bound = inspect.getclosurevars(value).nonlocals
            args = ", ".join(repr(v) for k, v in bound.items() if k != "dtype")
            return f"{prefix}{qualname.split('.')[0]}({args})"
        return prefix + qualname
    return repr(value)


def _signature(fn, name: str) -> str:
    parts, star = [], False
    for p in inspect.signature(fn).parameters.values():
        if p.name == "self":
            continue
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        if p.kind is p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
            star = True
        elif p.kind is p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
        elif p.default is p.empty:
            parts.append(p.name)
        else:
            parts.append(f"{p.name}={_default(p.default)}")
    return f"{name}({', '.join(parts)})"


def _fields(cls) -> str:
    fields = [f for f in dataclasses.fields(cls) if f.name not in _INTERNAL_FIELDS]
    return ", ".join(f"{f.name}={_default(f.default)}" for f in fields)


def _entry(signature: str, obj) -> str:
    return f"- `{signature}`: {_summary(obj)}"


def _methods(cls, base) -> list[str]:
    """Public methods a class defines beyond ``base``'s, as indented entries."""
    out = []
    for name, member in vars(cls).items():
        if name.startswith("_") or not inspect.isfunction(member) or hasattr(base, name):
            continue
        if not member.__qualname__.startswith(f"{cls.__qualname__}."):  # e.g. an initializer field
            continue
        out.append("  " + _entry(_signature(member, f"{cls.__name__}.{name}"), member))
    return out


def _public(module) -> list[str]:
    """Names of the functions and classes a module offers (its own or re-exported ones)."""
    names = []
    for name, obj in vars(module).items():
        if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if getattr(obj, "__module__", "").startswith("jaxpool"):
            names.append(name)
    return sorted(names)


def api_reference() -> str:
    """The text of docs/api.md."""
    import jaxpool
    import jaxpool.nnx
    from jaxpool import functional, modules, registry

    top = set(jaxpool.__all__)
    layers = list(dict.fromkeys(registry.pooler_class(n) for n in jaxpool.available()))
    functions = sorted(n for n in top if inspect.isfunction(getattr(jaxpool, n)))
    registry_names = [n for n in functions if getattr(jaxpool, n).__module__ == registry.__name__]
    pool_functions = [n for n in functions if n not in registry_names]
    assert set(_public(functional)) - set(pool_functions) <= {"binomial_filter", "conv_same"}, (
        "a new public name in jaxpool.functional: export it from jaxpool or list it as a block"
    )

    blocks = {
        "registry": [
            _entry(_signature(getattr(jaxpool, n), f"jaxpool.{n}"), getattr(jaxpool, n))
            for n in registry_names
        ],
        "functions": [
            _entry(_signature(getattr(jaxpool, n), f"jaxpool.{n}"), getattr(jaxpool, n))
            for n in pool_functions
        ],
        "linen": [],
        "nnx": [],
        "blocks": [],
    }
    for cls in layers:
        assert getattr(jaxpool, cls.__name__) is cls, f"{cls.__name__} is not exported"
        names = [n for n in jaxpool.available() if registry.pooler_class(n) is cls]
        head = f"jaxpool.{cls.__name__}({_fields(cls)})"
        kind = ", stochastic" if cls.stochastic else ""
        blocks["linen"].append(_entry(head, cls) + f" Registry name `{names[0]}`{kind}.")
        blocks["linen"] += _methods(cls, modules.Pooler)
    nnx_layers = [jaxpool.nnx.twin(cls) for cls in layers]
    for cls in nnx_layers:
        fields = _fields(cls.linen)
        head = (
            f"jaxpool.nnx.{cls.__name__}({fields}, *, in_features=None, input_size=None, rngs=None)"
        )
        blocks["nnx"].append(_entry(head, cls))
    extra = [n for n in _public(jaxpool.nnx) if getattr(jaxpool.nnx, n) not in nnx_layers]
    assert set(extra) == {"Pooler", "hyperparameter_names", "twin"}, (
        f"jaxpool.nnx has new public names {extra}: list them here"
    )

    for name in ("binomial_filter", "conv_same"):
        fn = getattr(functional, name)
        blocks["blocks"].append(_entry(_signature(fn, f"jaxpool.functional.{name}"), fn))
    for name in _public(modules):
        obj = getattr(modules, name)
        if obj in layers:
            continue
        if inspect.isclass(obj) and issubclass(obj, tuple):  # a NamedTuple: show its fields
            head = f"jaxpool.modules.{name}({', '.join(obj._fields)})"
            blocks["blocks"].append(_entry(head, obj))
        elif inspect.isclass(obj):
            blocks["blocks"].append(_entry(f"jaxpool.modules.{name}", obj))
            blocks["blocks"] += _methods(obj, object)
        else:
            blocks["blocks"].append(_entry(_signature(obj, f"jaxpool.modules.{name}"), obj))
    for name in sorted(extra):
        obj = getattr(jaxpool.nnx, name)
        if inspect.isclass(obj):
            blocks["blocks"].append(_entry(f"jaxpool.nnx.{name}", obj))
            blocks["blocks"] += _methods(obj, object)
        else:
            blocks["blocks"].append(_entry(_signature(obj, f"jaxpool.nnx.{name}"), obj))

    text = _SECTIONS
    for key, lines in blocks.items():
        text = text.replace(f"@@{key}", "\n" + "\n".join(lines) + "\n")
    return _PREAMBLE + "\n" + text


def test_api_reference_up_to_date():
    assert API_PAGE.read_text() == api_reference(), (
        "docs/api.md is out of date: run `python tests/test_readme.py` to rewrite it"
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # this checkout's jaxpool, whatever the environment installed
    API_PAGE.write_text(api_reference())
    print(f"wrote {API_PAGE.relative_to(ROOT)}", file=sys.stderr)
