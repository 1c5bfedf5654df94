"""Progress display on stderr: one updating line on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = enabled
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._start = time.monotonic()
        self._runs = 0
        self._width = 0

    def status(self, text: str) -> None:
        if not self._enabled:
            return
        elapsed = time.monotonic() - self._start
        line = f"[bench {elapsed:6.1f}s, {self._runs} runs] {text}"
        if self._tty:
            pad = max(0, self._width - len(line))
            self._stream.write("\r" + line + " " * pad)
            self._width = len(line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def note_done(self) -> None:
        self._runs += 1

    def done(self) -> None:
        if self._enabled and self._tty and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
        self._width = 0
