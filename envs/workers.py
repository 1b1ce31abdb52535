"""One env of a `VectorEnv`: in this process, or in a worker subprocess that may die or hang.

    env = LocalEnv(build)                     # build() -> a contract gymnasium.Env
    env = WorkerEnv(build); env.wait_ready(timeout)
    env.send("reset") / env.send("step", action)
    obs, reward, terminated, truncated = env.receive(timeout)

Both speak the same two-phase protocol, so `VectorEnv` can send to every env before it waits on
any (the workers run in parallel). A `WorkerEnv` raises `WorkerFailure` when its process is gone
(killed, crashed), when it does not answer within `timeout` seconds, or when its env raised: the
caller replaces it. A `LocalEnv` cannot die on its own; an exception of its env propagates.

Why not gymnasium's `AsyncVectorEnv`: its workers, pipes and shared memory are one unit, so one dead
worker cannot be replaced without rebuilding all of them, and N one-env `AsyncVectorEnv`s start
one after another, each building a throwaway env in this process first (40 Memory Maze envs would
take minutes). A worker here builds its env once, in its own process, and all start together.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

import gymnasium
import numpy as np

Builder = Callable[[], gymnasium.Env]
Result = tuple[dict[str, np.ndarray], float, bool, bool]  # observation, reward, terminated, truncated

# Spawn, not fork: forking a process that holds OpenGL contexts (MuJoCo) or torch's thread pools
# is unsafe.
_CONTEXT = multiprocessing.get_context("spawn")
_JOIN_S = 5.0  # how long a closing worker may take to exit before it is killed


class WorkerFailure(Exception):
    """The worker of an env died, did not answer in time, or its env raised; the message says which."""


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT while a worker starts: it inherits the setting and keeps ignoring Ctrl-C,
    which then reaches only this process, so a training loop can stop cleanly and save."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be changed from the main thread
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker(build: Builder, pipe: Connection) -> None:
    """The loop of a worker process: build the env, then answer reset / step / close commands.

    Every answer is `(status, payload)`: `("ready", (observation_space, action_space))` once built,
    `("ok", Result)` per command, `("error", message)` if the env raised (the worker then exits).
    """
    env = None
    try:
        env = build()
        pipe.send(("ready", (env.observation_space, env.action_space)))
        while True:
            command, data = pipe.recv()
            if command == "reset":
                obs, _ = env.reset()
                pipe.send(("ok", (obs, 0.0, False, False)))
            elif command == "step":
                obs, reward, terminated, truncated, _ = env.step(data)
                pipe.send(("ok", (obs, float(reward), bool(terminated), bool(truncated))))
            else:  # "close"
                break
    except (EOFError, BrokenPipeError):
        pass  # the parent is gone: nothing to answer
    except Exception as err:
        with contextlib.suppress(OSError):
            pipe.send(("error", f"{type(err).__name__}: {err}"))
    finally:
        if env is not None:
            with contextlib.suppress(Exception):
                env.close()


class LocalEnv:
    """An env in this process: `send` records the command, `receive` runs it (no timeout)."""

    pid: int | None = None

    def __init__(self, build: Builder) -> None:
        self.env = build()
        self.observation_space = self.env.observation_space
        self.action_space = self.env.action_space
        self._command: tuple[str, Any] | None = None

    def send(self, command: str, action: Any = None) -> None:
        self._command = (command, action)

    def receive(self, timeout: float | None = None) -> Result:
        assert self._command is not None, "receive without send"
        (command, action), self._command = self._command, None
        if command == "reset":
            obs, _ = self.env.reset()
            return obs, 0.0, False, False
        obs, reward, terminated, truncated, _ = self.env.step(action)
        return obs, float(reward), bool(terminated), bool(truncated)

    def close(self) -> None:
        self.env.close()


class WorkerEnv:
    """An env in a worker subprocess. Start several, then `wait_ready` on each: they build in parallel.

    Attributes (after `wait_ready`): `observation_space`, `action_space`; `pid` from the start.
    """

    def __init__(self, build: Builder) -> None:
        self._pipe, child = _CONTEXT.Pipe()
        self._process = _CONTEXT.Process(target=_worker, args=(build, child), daemon=True)
        with _sigint_ignored():
            self._process.start()
        child.close()  # the worker holds the other end; its exit then reads as EOF here
        self.pid: int | None = self._process.pid
        self.observation_space: gymnasium.Space | None = None
        self.action_space: gymnasium.Space | None = None

    def _receive(self, timeout: float | None) -> tuple[str, Any]:
        try:
            if timeout is not None and not self._pipe.poll(timeout):
                raise WorkerFailure(f"did not answer within {timeout:g} s")
            return self._pipe.recv()
        except (EOFError, OSError):
            self._process.join(_JOIN_S)
            raise WorkerFailure(f"exited (exit code {self._process.exitcode})") from None

    def wait_ready(self, timeout: float | None) -> None:
        """Wait until the worker has built its env; then its spaces are known."""
        status, payload = self._receive(timeout)
        if status == "error":
            raise WorkerFailure(f"could not build its env: {payload}")
        self.observation_space, self.action_space = payload

    def send(self, command: str, action: Any = None) -> None:
        try:
            self._pipe.send((command, action))
        except OSError:  # BrokenPipeError, ConnectionResetError: the worker is gone
            self._process.join(_JOIN_S)
            raise WorkerFailure(f"exited (exit code {self._process.exitcode})") from None

    def receive(self, timeout: float | None = None) -> Result:
        status, payload = self._receive(timeout)
        if status == "error":
            raise WorkerFailure(f"its env raised {payload}")
        return payload

    def kill(self) -> None:
        """End the worker at once (it may be hung), and free its pipe."""
        if self._process.is_alive():
            self._process.kill()
        self._process.join(_JOIN_S)
        self._pipe.close()

    def close(self) -> None:
        """Ask the worker to close its env and exit; kill it if it does not within a few seconds."""
        with contextlib.suppress(OSError):
            self._pipe.send(("close", None))
        self._process.join(_JOIN_S)
        self.kill()
