"""
Packaging for ETS.

The browser SDK lives in C{sdk/} (where front-end tooling expects it) and is
shipped inside the package as data through the C{ets_twisted/sdk} link, so a
non-editable C{pip install .} serves it with C{importlib.resources}.
"""

from setuptools import setup

setup(
    name="ets-twisted",
    version="0.1.0",
    description="Ephemeral Token Service: a DPoP (RFC 9449) gateway on Twisted",
    python_requires=">=3.11",
    packages=["ets_twisted", "ets_twisted.stores", "ets_twisted.web", "twisted.plugins"],
    package_data={
        "ets_twisted": ["py.typed", "sdk/tvm.mjs", "sdk/tvm.d.ts", "demo/*"],
    },
    install_requires=[
        "twisted[tls]>=24.7",
        "treq>=24.9",
        "pyjwt>=2.8",
        "cryptography>=42",
        "service-identity>=24.1",
        "attrs>=23.1",
        "txredisapi>=1.4.10",
        "prometheus-client>=0.20",
    ],
    extras_require={"test": ["hypothesis>=6.100"]},
    zip_safe=False,
)
