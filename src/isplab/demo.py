"""``make demo``: every workflow's demo section, timed, in one report (``runs/demo/report.html``).

Each workflow owns its section, ``isplab.workflows.<name>.demo.section(out, report, *, seed,
device)``, which writes under ``out/<name>/`` and adds one headed section to the report
(``docs/conventions.md`` §6). This module only composes them:

- it runs the sections in order and times each one;
- on the terminal it prints one line per stage (``stage``) with the time since the demo started;
  everything else a section prints — Lightning's banners and model summaries, the TFLite
  converter's C++ logs — goes to ``out/<name>/console.log`` instead (``debug`` shows it all);
- the report starts with isplab's version, the device, and each section's wall time with links to
  the section's own reports.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from isplab import __version__
from isplab.errors import IsplabError

#: Section name -> module with its ``section`` function, in the order the demo runs them.
SECTIONS = {
    "data": "isplab.workflows.data.demo",
    "awb": "isplab.workflows.awb.demo",
    "isp": "isplab.workflows.isp.demo",
    "proxy": "isplab.workflows.proxy.demo",
    "sky": "isplab.workflows.sky.demo",
    "genisp": "isplab.workflows.genisp.demo",
}
CONSOLE_LOG = "console.log"


class _Console:
    """The terminal lines of a demo run: ``[m:ss] section: text``, written to the terminal even
    while a section's own output is redirected to its log file."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.section = ""
        try:
            self.stream: TextIO = os.fdopen(os.dup(2), "w", buffering=1)
            self._owned = True
        except OSError:  # no usable fd 2 (embedded interpreters): fall back to sys.stderr
            self.stream, self._owned = sys.stderr, False

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def line(self, text: str) -> None:
        minutes, seconds = divmod(int(self.elapsed()), 60)
        prefix = f"{self.section}: " if self.section else ""
        self.stream.write(f"[{minutes:2d}:{seconds:02d}] {prefix}{text}\n")
        self.stream.flush()

    def close(self) -> None:
        if self._owned:
            self.stream.close()


_active: _Console | None = None


def stage(text: str) -> None:
    """Announce a stage of the running demo section: one terminal line with the elapsed time.

    Outside a demo run (a section called on its own) the line goes to stderr, timed from the
    first call.
    """
    global _active
    if _active is None:
        _active = _Console()
    _active.line(text)


@contextmanager
def redirected_output(log_path: Path | None) -> Iterator[None]:
    """Send everything written to stdout and stderr to ``log_path`` for the duration: by C/C++
    libraries (file descriptors 1 and 2), by Python code (``sys.stdout``/``sys.stderr``) and by
    console logging handlers, which hold the stream they were made with (Lightning's). ``None``
    changes nothing."""
    if log_path is None:
        yield
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved_fds = [os.dup(1), os.dup(2)]
    saved_streams = sys.stdout, sys.stderr
    handlers = _stream_handlers()
    saved_handler_streams = [h.stream for h in handlers]
    try:
        with open(log_path, "a", buffering=1, encoding="utf-8", errors="replace") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            sys.stdout = sys.stderr = log
            for handler in handlers:
                handler.setStream(log)
            try:
                yield
            finally:
                log.flush()
                # Handlers created meanwhile (a library imported inside) hold the log file too:
                # they go back to the console stream, not to a closed file.
                restore = {id(h): stream for h, stream in zip(handlers, saved_handler_streams)}
                for handler in _stream_handlers():
                    if handler.stream is log:
                        handler.setStream(restore.get(id(handler), saved_streams[1]))
                sys.stdout, sys.stderr = saved_streams
                os.dup2(saved_fds[0], 1)
                os.dup2(saved_fds[1], 2)
    finally:
        for fd in saved_fds:
            os.close(fd)


def _stream_handlers() -> list[logging.StreamHandler]:
    """Plain console handlers (libraries' ``logging.StreamHandler()``); subclasses such as file
    handlers or a test runner's capture handlers are left alone."""
    loggers = [logging.getLogger(), *(x for x in logging.Logger.manager.loggerDict.values() if isinstance(x, logging.Logger))]
    return [handler for logger in loggers for handler in logger.handlers if type(handler) is logging.StreamHandler]


def run_demo(
    out: str | Path,
    *,
    seed: int = 0,
    device: str = "auto",
    sections: Sequence[str] | None = None,
    overwrite: bool = False,
    debug: bool = False,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Run the demo sections into ``out`` and return the report's path.

    Args:
        out: the demo folder: ``report.html`` and one folder per section.
        seed: every section's seed.
        device: ``cpu``, ``cuda``, ``auto``... (absent hardware is an error).
        sections: names from :data:`SECTIONS` (default: all, in that order).
        overwrite: replace a previous demo's report and the folders of the sections run.
        debug: show the sections' own console output instead of keeping it in their ``console.log``.
        options: extra keyword arguments per section, e.g. ``{"data": {"count": 2}}``.

    Raises:
        IsplabError: unknown section, absent device, or ``out`` holding a previous demo (without
            ``overwrite``) or not writable — all before anything runs.
    """
    from isplab.engine.report import Report, format_duration
    from isplab.engine.trainer import resolve_accelerator
    from isplab.io.paths import prepare_output_dir

    names = list(sections or SECTIONS)
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        raise IsplabError(f"unknown demo section {unknown[0]!r}: expected one of {', '.join(SECTIONS)}")
    options = dict(options or {})
    accelerator = resolve_accelerator(device)
    out = Path(out)
    prepare_output_dir(out, overwrite=overwrite, names=["report.html", *names], what="demo folder")
    for name in names:
        if (out / name).is_dir():
            shutil.rmtree(out / name)  # --overwrite: a section always starts from an empty folder

    threads_before = _torch_threads()
    from isplab.engine.threads import fit_threads_to_cpus

    threads = fit_threads_to_cpus()
    global _active
    console = _active = _Console()
    started = datetime.now().astimezone()
    report = Report("isplab demo", out)
    report.add_text(
        "Every isplab workflow on synthetic data, small enough to run on a laptop CPU in minutes: "
        "the numbers show the machinery works end to end, not what a full training run reaches."
    )
    top = report.position
    durations: dict[str, float] = {}
    links: dict[str, list] = {}
    try:
        console.line(
            f"isplab {__version__} demo -> {out} (sections: {', '.join(names)}; device {accelerator}, {threads})"
            + ("" if debug else f"; third-party output goes to {out}/<section>/{CONSOLE_LOG}")
        )
        for name in names:
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            console.section = name
            start = time.perf_counter()
            try:
                with redirected_output(None if debug else folder / CONSOLE_LOG):
                    module = importlib.import_module(SECTIONS[name])
                    module.section(out, report, seed=seed, device=accelerator, **options.get(name, {}))
            except BaseException as error:
                what = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
                log = "" if debug else f"; its console output is in {folder / CONSOLE_LOG}"
                console.line(f"{what} after {format_duration(time.perf_counter() - start)}{log}")
                raise
            durations[name] = time.perf_counter() - start
            console.line(f"done in {format_duration(durations[name])}")
            links[name] = [
                report.link(page, page.relative_to(out).as_posix()) for page in sorted(folder.rglob("*.html"))
            ]
        console.section = ""
        with report.insert_at(top):
            report.add_run_info(
                device=accelerator,
                durations=durations,
                links=links,
                extra={
                    "started": started.strftime("%Y-%m-%d %H:%M:%S %Z"),
                    "seed": seed,
                    "CPU threads": threads,
                },
            )
        path = report.write()
        console.line(f"all done in {format_duration(console.elapsed())}")
        return path
    finally:
        _active = None
        console.close()
        _set_torch_threads(threads_before)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _set_torch_threads(count: int) -> None:
    import torch

    torch.set_num_threads(count)


