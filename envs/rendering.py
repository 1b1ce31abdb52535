"""Pick a headless OpenGL backend for MuJoCo before dm_control or memory_maze is imported.

MuJoCo reads `MUJOCO_GL` when its rendering modules are first imported and, when it is unset,
tries GLFW, which fails on a machine without a display. EGL works headless, on a GPU or through
Mesa's software renderer; OSMesa is the pure-software fallback. A user's own `MUJOCO_GL` wins.
"""

from __future__ import annotations

import os
import subprocess
import sys

from envs.errors import EnvError

# Each backend is tried in a child process: a failed attempt can leave PyOpenGL bound to the
# wrong platform in this one, and the child's few hundred milliseconds are paid once per process
# tree (children inherit the chosen MUJOCO_GL).
_PROBE = (
    "from mujoco.{backend} import GLContext\n"
    "context = GLContext(8, 8)\n"
    "context.make_current()\n"
    "context.free()\n"
)

INSTALL_HINT = (
    "headless MuJoCo rendering found neither EGL nor OSMesa: "
    "apt-get install -y libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 (or set MUJOCO_GL)"
)


def _works(backend: str) -> bool:
    env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
    try:
        result = subprocess.run(
            [sys.executable, "-c", _PROBE.format(backend=backend)],
            env=env,
            capture_output=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def ensure_headless_gl() -> str:
    """Set `MUJOCO_GL` (and `PYOPENGL_PLATFORM`) to a backend that works here; return its name.

    Keeps a `MUJOCO_GL` the user set. Otherwise tries EGL, then OSMesa, and raises EnvError with
    the packages to install when neither can create a context.
    """
    chosen = os.environ.get("MUJOCO_GL")
    if chosen:
        if chosen in ("egl", "osmesa"):
            os.environ.setdefault("PYOPENGL_PLATFORM", chosen)
        return chosen
    for backend in ("egl", "osmesa"):
        if _works(backend):
            os.environ["MUJOCO_GL"] = backend
            os.environ["PYOPENGL_PLATFORM"] = backend
            return backend
    raise EnvError(INSTALL_HINT)
