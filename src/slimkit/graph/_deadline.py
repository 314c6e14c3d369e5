"""A time bound for capture and pruning: a clear :class:`TraceError` after ``seconds``, never a hang.

Two mechanisms, because a forward can hang in two ways. Code that keeps calling torch (a loop over windows that
never ends) is stopped by :meth:`Deadline.check`, which the recorder calls before every op and the propagation loop
before every call. Code that spins in pure Python without touching torch is stopped by a watchdog thread that
raises an exception in the working thread (``PyThreadState_SetAsyncExc``) once the bound plus a grace period has
passed; CPython delivers it at the next bytecode, so a long C kernel finishes first.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from types import TracebackType

from slimkit._errors import TraceError

#: seconds the watchdog waits after the bound before it interrupts pure-Python code
GRACE = 1.0


class TimeBoundExceeded(TraceError):
    """Capture or pruning ran past its time bound."""


class _Interrupt(BaseException):
    """Raised asynchronously by the watchdog; converted to :class:`TimeBoundExceeded` on the way out."""


class Deadline:
    """``with Deadline(60, "pruning"):`` bounds the block; ``check(where)`` raises once the time is up.

    ``seconds=None`` means no bound (checks are free). Nested deadlines keep the earliest end.
    """

    def __init__(self, seconds: float | None, what: str = "capture") -> None:
        self.seconds = seconds
        self.what = what
        self.end = None if seconds is None else time.monotonic() + seconds
        self._lock = threading.Lock()
        self._done = False
        self._fired = False
        self._thread_id = 0
        self._timer: threading.Timer | None = None
        self._where: str | Callable[[], str] = ""

    @property
    def where(self) -> str:
        """The op or stage last checked."""
        return self._where() if callable(self._where) else self._where

    def remaining(self) -> float | None:
        return None if self.end is None else self.end - time.monotonic()

    def check(self, where: str | Callable[[], str] = "") -> None:
        """Raise :class:`TimeBoundExceeded` if the bound has passed (``where`` names the op or stage, or is a
        function that does: the recorder checks before every op and only an error message needs the name)."""
        if where:
            self._where = where
        if self.end is not None and time.monotonic() > self.end:
            raise TimeBoundExceeded(self._message())

    def _message(self) -> str:
        at = f" (last at {self.where})" if self.where else ""
        return (f"{self.what} exceeded its time bound of {self.seconds:g} s{at}: the model's forward may loop "
                "forever or be too large for the bound; raise PruneConfig.timeout or pass a smaller example input")

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._fired = True
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), ctypes.py_object(_Interrupt))

    def __enter__(self) -> Deadline:
        if self.seconds is not None:
            self._thread_id = threading.get_ident()
            self._timer = threading.Timer(self.seconds + GRACE, self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> bool:
        with self._lock:
            self._done = True
            if self._timer is not None:
                self._timer.cancel()
            if self._fired and kind is not _Interrupt:  # fired but not delivered yet: withdraw it
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread_id), None)
        if kind is _Interrupt:
            raise TimeBoundExceeded(self._message()) from None
        return False
