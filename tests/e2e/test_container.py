"""
The container image, proven without a container engine: this machine has
none, so the test runs the Dockerfile's own commands, read from the file,
outside one. The build stage's C{RUN} lines (the non-editable C{pip install .}
into a brand new venv, the plugin cache) run in a scratch directory standing
for C{/opt/ets}; the final stage's C{ENV}, C{USER}, C{WORKDIR} and
C{ENTRYPOINT} start the daemon, and its C{HEALTHCHECK} command is run
against it. This is also the install path users take with pip.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.daemon import SIGNING_KEY, Daemon, clean_env, free_port
from tests.support.proofs import ProofSigner

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ORIGIN = "https://app.example"
IMAGE_VENV = "/opt/ets"
NOBODY = 65534


def stages(path: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments)."""
    found: list[list[tuple[str, str]]] = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            instruction, _, args = line.partition(" ")
            if instruction.upper() == "FROM":
                found.append([])
            found[-1].append((instruction.upper(), args.strip()))
    return found


def env_of(stage: list[tuple[str, str]], venv: str, path: str) -> dict[str, str]:
    """The C{ENV} of C{stage}, with the image's venv moved to C{venv}."""
    env: dict[str, str] = {}
    for instruction, args in stage:
        if instruction == "ENV":
            for pair in shlex.split(args):
                name, _, value = pair.partition("=")
                env[name] = value.replace(IMAGE_VENV, venv).replace("$PATH", path)
    return env


def image_python() -> tuple[str, int | None]:
    """
    The interpreter standing for the image's C{python}, and the uid to run
    the daemon as: an unprivileged one when the test runs as root and can
    find a Python that user may run (a pyenv under C{/root} is not one).
    """
    if os.getuid() != 0:
        return sys.executable, None
    for python in (sys.executable, "/usr/bin/python3"):
        try:
            probe = subprocess.run([python, "-c", "import venv"], user=NOBODY, group=NOBODY,
                                   extra_groups=[], capture_output=True, timeout=30)
        except OSError:
            continue
        if probe.returncode == 0:
            return python, NOBODY
    return sys.executable, None


def one(stage: list[tuple[str, str]], instruction: str) -> str:
    [args] = [a for i, a in stage if i == instruction]
    return args


class DockerfileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.build, self.final = stages(os.path.join(ROOT, "Dockerfile"))
        self.tmp = tempfile.mkdtemp(prefix="ets-image-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        # The image's user must reach the venv, as it does in the image.
        os.chmod(self.tmp, 0o755)
        self.venv = os.path.join(self.tmp, "opt-ets")

    def test_shape(self) -> None:
        """
        Two stages on a slim Python base; the final one copies the built
        venv, runs as a non-root user, adds no compilers, and starts
        `twistd -n ets` in exec form with a health check.
        """
        self.assertTrue(all(one(s, "FROM").startswith("python:3.11-slim") for s in (self.build, self.final)))
        self.assertIn(("COPY", f"--from=build {IMAGE_VENV} {IMAGE_VENV}"), self.final)
        self.assertNotIn(one(self.final, "USER"), ("root", "0"))
        self.assertFalse([a for i, a in self.final if i == "RUN" and ("apt-get" in a or "pip" in a)])
        entrypoint = json.loads(one(self.final, "ENTRYPOINT"))
        self.assertEqual((entrypoint[0], entrypoint[1], entrypoint[-1]), ("twistd", "-n", "ets"))
        self.assertIn(" CMD [", one(self.final, "HEALTHCHECK"))

    def test_build_and_run_the_image_commands(self) -> None:
        """
        The build stage's commands give a venv whose `twistd ets` (as an
        unprivileged user when the test can switch to one: the plugin cache
        must already be there) serves /health, /tvm/issue and the SDK from
        package data; the HEALTHCHECK command passes while it runs and fails
        once it stops; SIGTERM ends it with status 0.
        """
        bin_dir = os.path.join(self.tmp, "bin")
        os.mkdir(bin_dir)
        # The image's `python` is the base image's interpreter.
        python, user = image_python()
        os.symlink(python, os.path.join(bin_dir, "python"))
        build_env = clean_env(env_of(self.build, self.venv, ""))
        build_env["PATH"] = f"{bin_dir}:{build_env['PATH']}"
        for instruction, args in self.build:
            if instruction == "RUN":
                done = subprocess.run(
                    ["sh", "-c", args.replace(IMAGE_VENV, self.venv)], cwd=ROOT, env=build_env,
                    capture_output=True, text=True, timeout=540,
                )
                self.assertEqual(done.returncode, 0, f"{args}\n{done.stderr[-2000:]}")

        port = free_port()
        run_env = env_of(self.final, self.venv, os.environ["PATH"])
        run_env.update({
            "LISTEN_ADDR": f"127.0.0.1:{port}", "ETS_HEALTH_URL": f"http://127.0.0.1:{port}/health",
            "ORIGIN_ALLOWLIST": ORIGIN, "TVM_JWT_HS256_KEY": SIGNING_KEY,
            "UPSTREAM_BASE_URL": "http://127.0.0.1:9",
        })
        entrypoint = json.loads(one(self.final, "ENTRYPOINT"))
        entrypoint[0] = shutil.which(entrypoint[0], path=run_env["PATH"])
        self.assertTrue(entrypoint[0].startswith(self.venv), entrypoint[0])
        daemon = Daemon(
            run_env, port=port, command=entrypoint, cwd=one(self.final, "WORKDIR"),
            user=user,
        ).start()
        self.addCleanup(daemon.stop)
        if user is not None:
            with open(f"/proc/{daemon.process.pid}/status") as f:
                uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
            self.assertEqual(set(uids), {str(user)})
        self.assertEqual(daemon.json("GET", "/health")[::2], (200, {"status": "ok"}))
        status, _, body = daemon.json(
            "POST", "/tvm/issue", {"dpopPublicJwk": ProofSigner().public_jwk}, {"Origin": ORIGIN})
        self.assertEqual(status, 200, body)
        status, _, sdk = daemon.request("GET", "/sdk/tvm.mjs")
        self.assertEqual(status, 200)
        with open(os.path.join(ROOT, "sdk", "tvm.mjs"), "rb") as f:
            self.assertEqual(sdk, f.read())

        health = json.loads(one(self.final, "HEALTHCHECK").split(" CMD ", 1)[1])
        def check() -> int:
            return subprocess.run(health, env=clean_env(run_env), capture_output=True, timeout=10).returncode
        self.assertEqual(check(), 0)
        self.assertEqual(daemon.stop(), 0)
        self.assertNotEqual(check(), 0)
        self.assertNotIn("Traceback", daemon.output)
