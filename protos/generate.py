"""Regenerate the Python stubs for protos/lepton/v1 into clients/python/lepton/v1.

    python protos/generate.py           # write the stubs
    python protos/generate.py --check   # exit 1 if the committed stubs are stale
"""
import filecmp
import pathlib
import sys
import tempfile

from grpc_tools import protoc
import grpc_tools

ROOT = pathlib.Path(__file__).resolve().parent
OUT = ROOT.parent / "clients" / "python"
PROTOS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "lepton" / "v1").glob("*.proto"))


def generate(out: pathlib.Path) -> None:
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *PROTOS]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")


def main() -> None:
    if "--check" not in sys.argv:
        generate(OUT)
        return
    with tempfile.TemporaryDirectory() as tmp:
        generate(pathlib.Path(tmp))
        fresh = sorted(pathlib.Path(tmp, "lepton", "v1").iterdir())
        stale = [f.name for f in fresh if not (OUT / "lepton" / "v1" / f.name).exists()
                 or not filecmp.cmp(f, OUT / "lepton" / "v1" / f.name, shallow=False)]
    if stale:
        sys.exit(f"generated stubs are stale: {stale}; run `python protos/generate.py` and commit")
    print("generated stubs are current")


if __name__ == "__main__":
    main()
