"""Guards that turn a silent failure of a run into a one-line error.

- The stall watchdog: every worker signals a small beacon actor after each training or
  evaluation batch; the driver polls it, and when no batch came for `stall_minutes`, it
  aborts the run's controller (gracefully, as Ctrl-C does, then by force) and the job
  ends with exit status 2 and a message instead of waiting forever.
- Divergence: a non-finite loss, or a train loss that rose (by 15 % or more in all) while
  the train accuracy fell for `divergence_epochs` epochs in a row, stops the run after
  that epoch; the best checkpoint so far stays in the run for the reports and `export`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)
POLL_S = 2.0
STOP_REASON = "stop_reason"  # the metric that carries why a run stopped early
# How much the train loss must rise over the window to count: on a hundred images a run
# that learns can drift 5-7 % up for two epochs (seen: 1.316 -> 1.337 -> 1.409 in a run
# whose worker was killed and resumed); a diverging one rises far more (2.45 -> 4.65).
MIN_RISE = 0.15


class ProgressBeacon:
    """A Ray actor (0 CPUs): the time of the last batch any worker finished."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def beat(self) -> None:
        self.last = time.monotonic()

    def idle_seconds(self) -> float:
        return time.monotonic() - self.last


def start_beacon() -> Any:
    import ray

    return ray.remote(num_cpus=0)(ProgressBeacon).remote()


class Beat:
    """The worker side: signal the beacon at most every `every_s` seconds (fire and
    forget: a batch never waits for it)."""

    def __init__(self, beacon: Any, every_s: float = 1.0) -> None:
        self.beacon, self.every_s, self.sent = beacon, every_s, 0.0

    def __call__(self) -> None:
        now = time.monotonic()
        if self.beacon is not None and now - self.sent >= self.every_s:
            self.beacon.beat.remote()
            self.sent = now


class StallWatch:
    """Driver side: a thread that aborts the run when the beacon has been idle for
    `minutes`. Ray Train's `fit()`, run in the main thread, installs a Ctrl-C handler
    that aborts the run gracefully (its controller stops the worker group); the watch
    takes the controller from that handler and aborts it from its own thread, so the
    abort does not wait for the main thread to notice a signal. Elsewhere (fit() in
    another thread) the watch can only log: it has no other handle on the run."""

    def __init__(self, beacon: Any, minutes: float, hint: str) -> None:
        self.beacon, self.limit_s, self.hint = beacon, minutes * 60.0, hint
        self.fired: str | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stall-watch", daemon=True)
        self._can_abort = threading.current_thread() is threading.main_thread()

    def __enter__(self) -> StallWatch:
        self._sigint = signal.getsignal(signal.SIGINT) if self._can_abort else None
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join(timeout=POLL_S * 2)
        if self._can_abort:  # Ray Train's fit() leaves its own Ctrl-C handler behind
            signal.signal(signal.SIGINT, self._sigint)

    def message(self, idle_s: float) -> str:
        return (
            f"training stalled: no batch for {idle_s / 60:.1f} min (--stall-minutes "
            f"{self.limit_s / 60:g}); {self.hint}"
        )

    def _watch(self) -> None:
        import ray

        while not self._done.wait(min(POLL_S, self.limit_s / 4)):
            try:
                idle = ray.get(self.beacon.idle_seconds.remote(), timeout=30)
            except Exception as exc:  # noqa: BLE001 - a lost beacon must not kill the run
                log.warning("stall watch: beacon unreachable (%s)", exc)
                continue
            if idle >= self.limit_s and not self.fired:
                self.fired = self.message(idle)
                log.error("%s", self.fired)
            if self.fired and self._abort():
                return

    def _abort(self) -> bool:
        """Abort the run's controller; False while fit() has not started it yet (a slow
        start: the watch tries again on its next poll)."""
        handler = signal.getsignal(signal.SIGINT) if self._can_abort else None
        if not callable(handler) or handler is self._sigint:
            return not self._can_abort  # nothing to abort with here: stop trying
        controller = _controller_of(handler)
        if controller is None:  # another Ray version: its Ctrl-C handler, as a user would
            with contextlib.suppress(SystemExit):
                handler(signal.SIGINT, None)
            return True
        _stop_controller(controller)
        return True


ABORT_GRACE_S = 20.0


def _controller_of(handler: Any) -> Any:
    """The TrainController actor that Ray Train's Ctrl-C handler closes over, or None."""
    with contextlib.suppress(TypeError, ValueError):
        for name, cell in zip(handler.__code__.co_freevars, handler.__closure__ or (), strict=True):
            if name == "controller":
                return cell.cell_contents
    return None


def _stop_controller(controller: Any) -> None:
    """A graceful abort first; the actor killed if that does not end in time. The abort is
    an async method of the controller, and a controller that waits to place its worker
    group never runs it (seen: fit() hung after the stall message). Killing the controller
    ends `fit()` with an actor error and takes the worker group and its placement group
    with it (they share the controller's fate)."""
    import ray

    try:
        ray.get(controller.abort.remote(), timeout=ABORT_GRACE_S)
    except ray.exceptions.GetTimeoutError:
        log.warning("the run did not abort in %.0f s; stopping its controller", ABORT_GRACE_S)
        ray.kill(controller, no_restart=True)
    except ray.exceptions.RayError:  # the abort ends the actor: its call reports that
        pass


def divergence(history: Sequence[dict[str, Any]], epochs: int, lr: float) -> str | None:
    """Why the run must stop after the last epoch of `history`, or None."""
    last = history[-1]
    if last.get("nonfinite_steps", 0) or not math.isfinite(last["train_loss"]):
        return (
            f"diverged: the train loss became non-finite in epoch {last['epoch']}; "
            f"try a lower --lr (now {lr:g}) or --clip-grad-norm, then --resume or a new run"
        )
    full = [row for row in history if not row.get("backbone_held")]
    if epochs <= 0 or len(full) <= epochs:
        return None
    window = full[-epochs - 1 :]
    pairs = list(zip(window, window[1:], strict=False))
    rose = window[-1]["train_loss"] >= window[0]["train_loss"] * (1 + MIN_RISE)
    if rose and all(
        b["train_loss"] > a["train_loss"] and b["train_accuracy"] < a["train_accuracy"]
        for a, b in pairs
    ):
        losses = " -> ".join(f"{row['train_loss']:.3f}" for row in window)
        return (
            f"diverged: the train loss rose ({losses}) while the train accuracy fell for "
            f"{epochs} epochs; try a lower --lr (now {lr:g}) or --clip-grad-norm, then "
            "--resume (it continues from the last checkpoint) or a new run"
        )
    return None


STOP_FILE = "stopped.json"  # written by rank 0 when a run stops early: why, and when


def write_stop(run_uri: str, storage: Any, reason: str, epoch: int) -> None:
    """Ray Train keeps only the metrics of checkpointed epochs in its result, and the
    epoch that stops a run is not checkpointed: the reason travels in RUN_URI."""
    import json

    from common.storage import filesystem, join

    fs, path = filesystem(join(run_uri, STOP_FILE), storage)
    fs.pipe_file(path, json.dumps({"reason": reason, "epoch": epoch}).encode())


def read_stop(run_uri: str, storage: Any, clear: bool = False) -> str | None:
    """The reason a run stopped early, or None; `clear` removes it (a new attempt)."""
    import json

    from common.storage import filesystem, join

    fs, path = filesystem(join(run_uri, STOP_FILE), storage)
    if not fs.exists(path):
        return None
    reason = json.loads(fs.cat_file(path))["reason"]
    if clear:
        fs.rm(path)
    return reason
