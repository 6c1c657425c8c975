"""``edgectl apply`` refuses a YAML alias in the file it reads, before building anything from it or asking
the hub: an alias bomb of about 500 bytes stands for a billion strings (it ran for minutes before)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edgesim.net import free_port

REPO = Path(__file__).resolve().parents[2]
# Nine levels of ten aliases under spec.values, 531 bytes.
BOMB = (
    "apiVersion: edgecollab.io/v1alpha1\nkind: Component\nmetadata: {name: web, namespace: demo}\n"
    "spec:\n  chart: ./chart\n  values:\n"
    '    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(f"    {b}: &{b} [" + ",".join([f"*{a}"] * 10) + "]\n"
              for a, b in zip("abcdefgh", "bcdefghi", strict=True))
)
# Runs edgectl and reports how it went: RUSAGE_CHILDREN of this fresh process is edgectl's alone, where the
# test process's own would be the largest of every child any earlier test waited for.
MEASURE = """
import json, resource, subprocess, sys, time
started = time.monotonic()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=60)
print(json.dumps({"code": done.returncode, "stdout": done.stdout, "stderr": done.stderr,
                  "seconds": time.monotonic() - started,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def test_an_alias_bomb_is_refused_at_once_in_little_memory_without_asking_the_hub(tmp_path: Path):
    bomb = tmp_path / "component.yaml"
    bomb.write_text(BOMB)
    nothing = f"http://127.0.0.1:{free_port()}"  # no hub: asking it would exit with 3
    measured = subprocess.run(
        [sys.executable, "-c", MEASURE, sys.executable, "-m", "edgectl.cli", "--hub", nothing, "--token", "t",
         "apply", "-f", str(bomb)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=True,
    )
    run = json.loads(measured.stdout)
    assert (run["code"], run["stdout"]) == (1, ""), run
    assert run["stderr"] == (f"edgectl: {bomb} line 8: YAML aliases are not accepted (an alias bomb can expand "
                             "a small file to gigabytes)\n")
    # Starting Python and importing the Helm engine is most of it (about 0.3 s, 95 MB).
    assert run["seconds"] < 3, run
    assert run["max_rss_mb"] < 200, run
