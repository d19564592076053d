"""The operator's install has no TensorFlow: importing it must not pull in the trainer side."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_operator_loads_neither_tensorflow_keras_nor_the_trainer() -> None:
    code = (
        "import sys, kubegraft_operator.main\n"
        "heavy = ('tensorflow', 'keras', 'kubegraft_trainer')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == ""
