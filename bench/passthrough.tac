# twistd -ny bench/passthrough.tac: the benchmark's in-run baseline, a
# minimal pass-through proxy written the plain treq way: no checks at all,
# treq.request() with treq's defaults (its global pool, its agent stack),
# the answer streamed back with treq.collect(). Same twisted.web server as
# ETS; its access lines go through twistd's default log observer.
#
#   PASSTHROUGH_LISTEN=tcp:8081:interface=127.0.0.1 UPSTREAM=http://127.0.0.1:8082
import os

import treq
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Application
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

UPSTREAM = os.environ["UPSTREAM"].encode("ascii")
HOP = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade",
       b"host", b"content-length", b"proxy-connection", b"trailer"}


class Proxy(Resource):
    isLeaf = True

    def render(self, request):
        headers = {k: v for k, v in request.requestHeaders.getAllRawHeaders() if k.lower() not in HOP}
        body = request.content.read() or None
        d = treq.request(request.method.decode(), UPSTREAM + request.uri, headers=headers,
                         data=body, allow_redirects=False)

        def got(response):
            request.setResponseCode(response.code)
            for k, v in response.headers.getAllRawHeaders():
                if k.lower() not in HOP:
                    request.responseHeaders.setRawHeaders(k, v)
            return treq.collect(response, request.write)

        def failed(f):
            if not request.startedWriting:
                request.setResponseCode(502)

        def done(_):
            if not request._disconnected and not request.finished:
                request.finish()

        d.addCallback(got).addErrback(failed).addBoth(done)
        return NOT_DONE_YET


application = Application("passthrough")
StreamServerEndpointService(
    serverFromString(reactor, os.environ["PASSTHROUGH_LISTEN"]), Site(Proxy())
).setServiceParent(application)
