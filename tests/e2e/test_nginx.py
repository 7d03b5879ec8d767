"""
The nginx recipe of docs/OPERATIONS.md (C{docs/nginx.conf.example}) in front
of a real ETS: see L{tests.e2e.proxy_recipe}.
"""

from __future__ import annotations

import os
import time

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.proxy_recipe import ROOT, ProxyRecipeTests, fill_site_lines

# The wrapper every nginx.conf needs around an http-level include; all of
# nginx's own files go to the scratch directory.
MAIN_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
http {{
    log_format ids '$remote_addr $request_id "$request_method $uri" $status';
    access_log {tmp}/access.log ids;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/ets.conf;
}}
"""


class NginxRecipeTests(ProxyRecipeTests, SynchronousTestCase):
    program = "/usr/sbin/nginx"

    def start_proxy(self, port: int, cert: str, key: str, ets: str) -> list[str]:
        with open(os.path.join(ROOT, "docs", "nginx.conf.example")) as f:
            recipe = f.read()
        with open(os.path.join(self.tmp, "ets.conf"), "w") as f:
            f.write(fill_site_lines(recipe, {
                r"server \S+;\s+# site: ETS's LISTEN_ADDR": f"server {ets};",
                r"listen \S+ ssl;\s+# site: public address": f"listen 127.0.0.1:{port} ssl;",
                r"ssl_certificate \S+;\s+# site: certificate chain": f"ssl_certificate {cert};",
                r"ssl_certificate_key \S+;\s+# site: private key": f"ssl_certificate_key {key};",
            }))
        with open(os.path.join(self.tmp, "nginx.conf"), "w") as f:
            f.write(MAIN_CONF.format(tmp=self.tmp))
        return [self.program, "-p", self.tmp, "-c", os.path.join(self.tmp, "nginx.conf"),
                "-e", os.path.join(self.tmp, "error.log")]

    def check_forwarded_for(self, chain: str) -> None:
        # nginx appends the client's address to what the client sent; ETS
        # walks the chain from the right (see the access line check).
        self.assertTrue(chain.startswith("203.0.113.7, 127.0.0.1"), chain)

    def check_proxy_log(self, request_id: str) -> None:
        logged = f" {request_id} \"GET /api/echo\" 200"
        deadline = time.monotonic() + 5
        while logged not in self.file("access.log") and time.monotonic() < deadline:
            time.sleep(0.02)  # nginx writes its line just after the answer
        self.assertIn(logged, self.file("access.log"))
