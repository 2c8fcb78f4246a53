"""Importing tdexport never pulls in optional or heavy reference packages."""

import subprocess
import sys


def test_import_is_lazy_about_optional_dependencies():
    code = (
        "import sys, tdexport, tdexport.cli, tdexport.zoo, tdexport.plan, tdexport.factor, tdexport.checkpoint;"
        "bad = [m for m in ('timm', 'tensorrt', 'tensorly') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
