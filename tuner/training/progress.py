"""Progress of one long run over kimg: a tqdm bar on a terminal, plain lines anywhere else.

`python -m tuner.train` and `python -m analysis.rerun` pass a `KimgProgress` to
`tuner.training.loop.train(progress=...)`, which calls it with the images seen after every step.

- On a terminal (stdout is a TTY and TERM is not `dumb`): a tqdm bar in kimg, with the rate in
  img/s; evaluation lines are printed above it (`write`).
- Otherwise (CI, a log file, `ray submit`, a pipe): one plain line at every tenth of the budget,
  `progress  1.00/4.00 kimg  25%  850 img/s  eta 0:00:04`, and evaluation lines as they come.
  No carriage returns, no escape codes.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

STEPS = 10  # plain lines per run: one per tenth of the budget


def use_bar(stream: TextIO | None = None, environ: dict[str, str] | None = None) -> bool:
    """True when `stream` (default stdout) is an interactive terminal that can redraw a bar."""
    stream = sys.stdout if stream is None else stream
    environ = os.environ if environ is None else environ
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False
    return bool(tty) and environ.get("TERM", "") != "dumb"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class KimgProgress:
    """Callable with the images seen so far; `write(line)` prints a line; `close()` ends the bar."""

    def __init__(self, max_kimg: float, label: str = "", stream: TextIO | None = None, bar: bool | None = None):
        self.total = round(max_kimg * 1000)
        self.label = label
        self.stream = sys.stdout if stream is None else stream
        self.bar = use_bar(self.stream) if bar is None else bar
        self._tqdm = None
        self._start: tuple[float, int] | None = None  # (time, images) at the first call
        self._next_step = 1

    def __call__(self, images_seen: int) -> None:
        now = time.perf_counter()
        if self._start is None:
            self._start = (now, images_seen)
            # a resumed run starts part-way: its plain lines begin at the next tenth
            self._next_step = images_seen * STEPS // max(self.total, 1) + 1
            if self.bar:
                from tqdm import tqdm

                self._tqdm = tqdm(total=self.total / 1000, initial=min(images_seen, self.total) / 1000, unit="kimg", desc=self.label or None,
                                  file=self.stream, dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} kimg "
                                  "[{elapsed}<{remaining}{postfix}]")
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(f"{self._rate(now, images_seen):.0f} img/s", refresh=False)
            self._tqdm.update(min(images_seen, self.total) / 1000 - self._tqdm.n)  # the last step may overshoot
            return
        while self._next_step <= STEPS and images_seen * STEPS >= self._next_step * self.total:
            self._plain(now, images_seen)
            self._next_step += 1

    def _rate(self, now: float, images_seen: int) -> float:
        t0, n0 = self._start
        return (images_seen - n0) / (now - t0) if now > t0 else 0.0

    def _plain(self, now: float, images_seen: int) -> None:
        rate = self._rate(now, images_seen)
        left = max(self.total - images_seen, 0)
        eta = _clock(left / rate) if rate > 0 else "?"
        prefix = f"{self.label}  " if self.label else ""
        self.stream.write(f"{prefix}progress {images_seen / 1000:6.2f}/{self.total / 1000:.2f} kimg "
                          f"{min(100, round(100 * images_seen / max(self.total, 1))):3d}%  {rate:.0f} img/s  eta {eta}\n")
        self.stream.flush()

    def write(self, line: str) -> None:
        if self._tqdm is not None:
            self._tqdm.write(line, file=self.stream)
        else:
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
