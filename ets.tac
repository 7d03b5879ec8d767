# twistd -ny ets.tac: the same wiring as `twistd ets`, configured from the
# environment (the options of `twistd ets` are not available here).
from twisted.application.service import Application

from ets_twisted.tap import Options, makeService

options = Options()
options.parseOptions([])
application = Application("ets")
makeService(options).setServiceParent(application)
