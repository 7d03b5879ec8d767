"""
C{twistd ets}: options and service wiring (the plugin stub names this module).

Every SPEC variable is also an option, and an option wins over the
environment. Bad configuration prints one line per problem and exits 2,
with no traceback and no secret.
"""

from __future__ import annotations

import os
import sys

from twisted.application.service import IService
from twisted.python import usage

from .config import VARIABLES, Config, ConfigError, load


class Options(usage.Options):
    """The options of C{twistd ets}: one per SPEC variable."""

    synopsis = "[options]"
    longdesc = (
        "Ephemeral Token Service: mints DPoP-bound tokens and relays verified "
        "calls to one upstream. Each option may also be given as the "
        "environment variable of the same name (LISTEN_ADDR for --listen-addr); "
        "the option wins. With no configuration at all, ETS starts in "
        "development mode with a built-in echo upstream."
    )
    optParameters = [[v.option, None, None, v.help] for v in VARIABLES]

    config: Config

    def postOptions(self) -> None:
        try:
            self.config = load(os.environ, {v.option: self[v.option] for v in VARIABLES})
        except ConfigError as e:
            for problem in e.problems:
                sys.stderr.write(f"ets: configuration error: {problem}\n")
            raise SystemExit(2)
        from .logs import use_ets_logs

        # twistd makes its log observer after parsing: set its --logger.
        use_ets_logs(getattr(self, "parent", None), self.config.log_format)


def makeService(options: Options) -> IService:
    """
    The service of C{twistd ets}: ETS itself, or with C{WORKERS} > 1 the
    master that runs that many worker processes (each of which comes back
    here as a worker; see L{ets_twisted.workers}).
    """
    from twisted.internet import reactor

    from . import workers
    from .app import build_service

    config = options.config
    adopted = workers.worker_socket(os.environ)
    if adopted is None and config.workers > 1:
        env = workers.worker_environment(os.environ, {v.option: options[v.option] for v in VARIABLES})
        return workers.Master(reactor, config.listen_addr, config.workers, env, config.shutdown_grace_seconds)
    return build_service(config, reactor, adopted=adopted)
