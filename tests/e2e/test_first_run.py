"""A new user's first run: the set-up works on an externally managed Python, the demo's
output arrives in order through a pipe, and the docs stand on their own."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# A python3 that behaves like Debian's externally managed one: `-m venv` works, `-m pip`
# on the system interpreter is refused (PEP 668). Each call is recorded.
FAKE_PYTHON = """#!/bin/sh
echo "$0 $*" >> "$CALLS"
if [ "$1 $2" = "-m venv" ]; then
    mkdir -p "$3/bin"
    cat > "$3/bin/python" <<'INNER'
#!/bin/sh
echo "$0 $*" >> "$CALLS"
printf '#!/bin/sh\\necho uv-stub\\n' > "$(dirname "$0")/uv" && chmod +x "$(dirname "$0")/uv"
INNER
    chmod +x "$3/bin/python"
    exit 0
fi
if [ "$1 $2" = "-m pip" ]; then
    echo "error: externally-managed-environment" >&2
    exit 1
fi
exit 0
"""


def test_uv_is_bootstrapped_without_pip_on_the_system_python(tmp_path: Path) -> None:
    script = (ROOT / "scripts" / "test").read_text()
    block = re.search(r"^if ! command -v uv .*?^fi$", script, re.MULTILINE | re.DOTALL)
    assert block is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON)
    (bin_dir / "python3").chmod(0o755)
    calls = tmp_path / "calls"
    result = subprocess.run(
        ["/bin/bash", "-c", f"set -euo pipefail\n{block.group(0)}\nuv"],
        env={
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "CALLS": str(calls),
        },
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "uv-stub"  # the uv installed into the venv is on PATH
    recorded = calls.read_text().splitlines()
    system = [line for line in recorded if line.startswith(str(bin_dir / "python3"))]
    assert system == [f"{bin_dir / 'python3'} -m venv {tmp_path}/cache/sidegate/uv-bootstrap"]
    assert any(
        " -m pip install " in line and "uv-bootstrap/bin/python" in line for line in recorded
    )


def test_the_demo_prints_its_banner_first_and_serves_its_port_while_running() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "sidegate", "demo", "--serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one pipe: the order a user piping to `tee` sees
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": ""},
    )
    lines: list[str] = []
    arriving: queue.Queue[str] = queue.Queue()
    assert demo.stdout is not None
    threading.Thread(target=lambda: [arriving.put(x) for x in demo.stdout], daemon=True).start()  # type: ignore[union-attr]
    try:
        while not any(line.startswith("Serving at") for line in lines):
            try:  # a buffered demo would print nothing until it exits
                lines.append(arriving.get(timeout=60).strip())
            except queue.Empty:
                raise AssertionError(f"no address while serving; got {lines}") from None
        assert demo.poll() is None  # still serving
        assert lines[0].startswith("Sidegate sidecar at http://127.0.0.1:")
        serving = next(line for line in lines if line.startswith("Serving at"))
        assert re.match(r"Serving at http://127\.0\.0\.1:\d+/v1", serving)
        logged = [i for i, line in enumerate(lines) if "credential rejected" in line]
        seventh = next(i for i, line in enumerate(lines) if line.startswith("7."))
        eighth = next(i for i, line in enumerate(lines) if line.startswith("8."))
        assert logged and all(seventh < i < eighth for i in logged)  # beside its step
    finally:
        demo.send_signal(signal.SIGINT)
        demo.communicate(timeout=30)


def test_the_docs_stand_on_their_own() -> None:
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        assert "../shared" not in text and "DESIGN.md" not in text, path.name
