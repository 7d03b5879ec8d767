"""
The Caddy recipe of docs/OPERATIONS.md (C{docs/Caddyfile.example}) in front
of a real ETS: see L{tests.e2e.proxy_recipe}.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.daemon import free_port
from tests.e2e.proxy_recipe import ROOT, ProxyRecipeTests, fill_site_lines

# Global options for a private Caddy: no admin endpoint, no redirect
# listener on port 80, every file of its own in the scratch directory, and
# the test's certificate for clients that send no SNI (an IP address).
GLOBAL_OPTIONS = """\
{{
	admin off
	auto_https disable_redirects
	http_port {http_port}
	default_sni localhost
	storage file_system {tmp}/data
	log {{
		output file {tmp}/caddy.log
	}}
}}

"""


class CaddyRecipeTests(ProxyRecipeTests, SynchronousTestCase):
    program = "/usr/bin/caddy"

    def start_proxy(self, port: int, cert: str, key: str, ets: str) -> list[str]:
        with open(os.path.join(ROOT, "docs", "Caddyfile.example")) as f:
            recipe = f.read()
        site = fill_site_lines(recipe, {
            r"\S+ \{ # site: public address": f"https://:{port} {{",
            r"tls \S+ \S+ # site: certificate chain and key": f"tls {cert} {key}",
            r"reverse_proxy \S+ \{ # site: ETS's LISTEN_ADDR": f"reverse_proxy {ets} {{",
        })
        path = os.path.join(self.tmp, "Caddyfile")
        with open(path, "w") as f:
            f.write(GLOBAL_OPTIONS.format(http_port=free_port(), tmp=self.tmp) + site)
        return [self.program, "run", "--config", path, "--adapter", "caddyfile"]

    def check_forwarded_for(self, chain: str) -> None:
        # The client is not one of Caddy's trusted_proxies: its header is
        # dropped; Caddy sends the address it saw, and ETS appends Caddy's.
        self.assertEqual(chain, "127.0.0.1, 127.0.0.1")
