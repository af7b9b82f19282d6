"""The contract: buf lint (STANDARD) passes and the committed stubs are what the protos generate."""
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_buf_lint_standard():
    buf = shutil.which("buf") or str(pathlib.Path(sys.executable).parent / "buf")
    out = subprocess.run([buf, "lint"], cwd=ROOT / "protos", capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_generated_stubs_are_current():
    out = subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--check"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
