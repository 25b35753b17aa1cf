"""Where a run's code came from."""
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def git_sha(repo: Path = REPO) -> str:
    """The short commit of the checkout ``repo``, or 'unknown' outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=repo,
                              check=True).stdout.strip() or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
