"""Running a command with its stderr on a pseudo-terminal, as a person at a shell would."""

import os
import pty
import subprocess


def stderr_on_a_terminal(cmd: list[str], timeout: float = 300) -> tuple[int, bytes]:
    """(exit code, everything written to the terminal) for cmd with stderr on a pty."""
    main, follower = pty.openpty()
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=follower, timeout=timeout)
    os.close(follower)
    seen = b""
    try:
        while chunk := os.read(main, 65536):
            seen += chunk
    except OSError:  # the follower side is closed: nothing more to read
        pass
    os.close(main)
    return p.returncode, seen
