# twistd -ny bench/ets_prefilled.tac: ETS exactly as `twistd ets` wires it
# (configured from the environment, ets_twisted.app.build_service), with the
# memory store's replay cache pre-filled with BENCH_PREFILL live entries
# before the daemon listens. Bench only: the product has no such knob.
#
# The entries are 16-byte digests like the ones ETS files (dpop.replay_key),
# live for BENCH_PREFILL_TTL seconds (default 3600), so none expires during
# a run.
import hashlib
import os
import sys
import time

from twisted.application.service import Application
from twisted.logger import ILogObserver

import ets_twisted.app as app
from ets_twisted.logs import text_log_observer
from ets_twisted.tap import Options, makeService

PREFILL = int(os.environ.get("BENCH_PREFILL", "0"))
TTL = float(os.environ.get("BENCH_PREFILL_TTL", "3600"))

_make_store = app.make_store


def _prefilled_store(*args, **kwargs):
    store = _make_store(*args, **kwargs)
    started = time.monotonic()
    insert = store.replay.insert
    for n in range(PREFILL):
        insert(hashlib.blake2b(b"bench-prefill:%d" % n, digest_size=16).digest(), TTL)
    sys.stderr.write(
        f"bench: {len(store.replay)} live replay entries in {time.monotonic() - started:.1f} s\n"
    )
    return store


app.make_store = _prefilled_store
options = Options()
options.parseOptions([])
application = Application("ets-bench")
# The log writer `twistd -n ets` installs (twistd takes it from here for a .tac).
application.setComponent(ILogObserver, text_log_observer())
makeService(options).setServiceParent(application)
