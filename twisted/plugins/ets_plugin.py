# A lazy stub: twistd imports every plugin on every --help, so this names the
# module that holds the real Options and makeService without importing it.
from twisted.application.service import ServiceMaker

ets = ServiceMaker(
    "ETS", "ets_twisted.tap", "Ephemeral Token Service: a DPoP gateway", "ets"
)
