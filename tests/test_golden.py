"""Golden files: `tlp compile` with the default settings must write exactly the YAML stored
under tests/golden/, so any change to the compiled pipeline shows up as a diff in review.

A change that is meant (a new parameter, a step's code) regenerates them:
    make golden    (or: TLP_UPDATE_GOLDEN=1 pytest tests/test_golden.py)
then review `git diff tests/golden/` and commit it with the change."""
import difflib
import os
from pathlib import Path

import pytest

from pipelines import cli

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("TLP_UPDATE_GOLDEN") == "1"
# Golden file -> the `tlp compile` flags that write it.
TARGETS = {"pipeline-kfp.yaml": [], "pipeline-vertex.yaml": ["--target", "vertex"],
           # Tuning: 8 trials in 2 rounds of ParallelFor, 4 at a time, each with a GPU.
           "pipeline-kfp-tuned.yaml": ["--tune-trials", "8", "--tune-parallelism", "4"]}


@pytest.mark.parametrize("name", TARGETS)
def test_compiled_pipeline_matches_its_golden(tmp_path, capsys, name):
    out = tmp_path / name
    assert cli.main(["compile", "-o", str(out), *TARGETS[name]]) == 0
    golden = GOLDEN / name
    if UPDATE:
        golden.write_text(out.read_text())
    diff = "".join(difflib.unified_diff(golden.read_text().splitlines(True),
                                        out.read_text().splitlines(True),
                                        str(golden), "compiled"))
    assert not diff, f"the compiled pipeline differs from {golden} (if meant: make golden)" \
                     f"\n{diff[:5000]}"
