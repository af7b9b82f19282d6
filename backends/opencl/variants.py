"""Program variant names: one grammar for every build of every kernel source.

A variant is named '<source>.<KEY=VALUE,...>': the kernel source (reduce, histogram, gemm or catalog,
each a .cl file here) and the -D defines of the build, sorted by key, e.g.
'reduce.BLOCK=256,HAS_FP64=1,IN=float,IS_FLOAT=1,MASK=int,OP_SUM=1,OUT=double,T=float,VEC=16'.
The name is the build: `options` turns it into the compiler's options, adding only what every build
of that source takes. So the cache (compiler.py) and the manifests of prebuilt binaries (manifest.py)
key programs by what they are, and a binary listed under a name was built as the device would build it.
"""
from __future__ import annotations

from lepton.errors import FailedPrecondition

SOURCES = ("reduce", "histogram", "gemm", "catalog")
# Options every build of a source takes. -w: PoCL warns about float16 ABIs on every build. T4 and
# convert_T4 are T's 4-vector and its conversion; catalog.cl divides as NumPy rounds (qmatmul's x / scale).
_COMMON = {"reduce": [], "histogram": [],
           "gemm": ["-DT4={T}4", "-Dconvert_T4=convert_{T}4"],
           "catalog": ["-DT4={T}4", "-Dconvert_T4=convert_{T}4", "-cl-fp32-correctly-rounded-divide-sqrt"]}


def name(source: str, **defines) -> str:
    """The variant of `source` built with `defines`: True is a flag (=1); False and None leave it out."""
    items = {k: 1 if v is True else v for k, v in defines.items() if v is not None and v is not False}
    return source + "." + ",".join(f"{k}={v}" for k, v in sorted(items.items()))


def parse(variant: str) -> tuple[str, dict[str, str]]:
    """(source, defines) of a variant name; FailedPrecondition for anything that is not one."""
    source, _, body = variant.partition(".")
    defines = {}
    for item in body.split(",") if body else []:
        key, eq, value = item.partition("=")
        if not (eq and key.isidentifier() and value.replace("_", "").isalnum()) or key in defines:
            break
        defines[key] = value
    else:
        if source in SOURCES and name(source, **defines) == variant:
            return source, defines
    raise FailedPrecondition(f"unknown OpenCL program variant {variant!r}: expected '<source>.<KEY=VALUE,...>' "
                             f"with source one of {', '.join(SOURCES)} and the keys sorted")


def source_file(variant: str) -> str:
    return parse(variant)[0] + ".cl"


def options(variant: str) -> str:
    """The build options of a variant: its defines, then those all builds of its source take."""
    source, defines = parse(variant)
    common = [o.format(T=defines.get("T", "float")) for o in _COMMON[source]]
    return " ".join([f"-D{k}={v}" for k, v in defines.items()] + common + ["-w"])
