"""
docs/SECURITY.md backs every row with named tests: this keeps the names
true. A reference is C{`tests/…py::Class.test`} (or C{::Class}, or a bare
C{`tests/…py`}), C{`.test`} for another test of the class named just before
it, or the quoted title of a C{node --test} test in C{tests/browser/}.
"""

from __future__ import annotations

import glob
import importlib
import os
import re

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+)(?:\.(\w+))?)?`|`\.(\w+)`|\"([^\"]{20,})\"")


class SecurityDocTests(SynchronousTestCase):
    def test_every_named_test_exists(self) -> None:
        with open(os.path.join(ROOT, "docs", "SECURITY.md")) as f:
            doc = f.read()
        browser = "".join(open(p).read() for p in glob.glob(os.path.join(ROOT, "tests", "browser", "*.mjs")))
        rows = [line for line in doc.splitlines() if line.startswith("| ") and not line.startswith("| threat")]
        self.assertGreater(len(rows), 30)
        for row in rows:
            proof = row.rstrip(" |").rsplit(" | ", 1)[-1]
            found = 0
            cls = None
            for path, class_name, test_name, short, title in REFERENCE.findall(proof):
                found += 1
                if title:
                    self.assertIn(title.split(" (")[0].rstrip(" …").split(" …")[0], browser, row)
                    continue
                if short:
                    self.assertIsNotNone(cls, row)
                    self.assertTrue(hasattr(cls, short), f"{cls.__name__}.{short} in {row}")
                    continue
                self.assertTrue(os.path.exists(os.path.join(ROOT, path)), path)
                if class_name:
                    module = importlib.import_module(path[:-3].replace("/", "."))
                    cls = getattr(module, class_name, None)
                    self.assertIsNotNone(cls, f"{path}::{class_name}")
                    if test_name:
                        self.assertTrue(hasattr(cls, test_name), f"{path}::{class_name}.{test_name}")
            self.assertTrue(found, f"a row with no test: {row}")
