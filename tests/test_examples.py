"""The lecture-filters example runs end to end and writes its PNG grid."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_lecture_filters_example_writes_png(tmp_path):
    out = tmp_path / "filters.png"
    res = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "lecture_filters.py"),
                          "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 50_000  # a real 3x4 grid of photographs, not an empty figure
