"""
Pre-signed DPoP proofs for the benchmark's load generator.

Usage::

    python bench/proofgen.py KEY.pem OUTDIR COUNT THREADS METHOD HTU [TOKEN]

Writes C{OUTDIR/proofs-1.txt} ... C{OUTDIR/proofs-THREADS.txt}, one compact
JWS per line, COUNT proofs in all split evenly: each wrk thread reads its
own file (see C{bench/proofs.lua}), so no proof is ever sent twice. Every
proof has a unique C{jti}, C{iat} = now (generate right before a run: ETS
accepts an C{iat} up to C{DPOP_MAX_AGE_SECONDS} old), C{htm}, C{htu} (no
query) and, with TOKEN, C{ath} = base64url(SHA-256(TOKEN)).

The key is an ES256 (P-256) private key in PEM; L{new_key} makes one. Only
C{cryptography} is used: nothing of ets_twisted signs these proofs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_key(path: str) -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key, saved as PEM at C{path}."""
    key = ec.generate_private_key(ec.SECP256R1())
    with open(path, "wb") as f:
        f.write(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ))
    return key


def load_key(path: str) -> ec.EllipticCurvePrivateKey:
    with open(path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def public_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC", "crv": "P-256",
        "x": b64(numbers.x.to_bytes(32, "big")), "y": b64(numbers.y.to_bytes(32, "big")),
    }


def proofs(key: ec.EllipticCurvePrivateKey, count: int, method: str, htu: str,
           token: str | None = None, iat: int | None = None, prefix: str = ""):
    """Yield C{count} proofs; C{jti} is C{prefix} + a counter + random bits."""
    header = b64(json.dumps(
        {"typ": "dpop+jwt", "alg": "ES256", "jwk": public_jwk(key)}, separators=(",", ":"),
    ).encode())
    iat = int(time.time()) if iat is None else iat
    ath = b64(hashlib.sha256(token.encode("ascii")).digest()) if token else None
    salt = b64(os.urandom(9))
    algorithm = ec.ECDSA(hashes.SHA256())
    for n in range(count):
        claims = {"htm": method, "htu": htu, "iat": iat, "jti": f"{prefix}{salt}{n:x}"}
        if ath is not None:
            claims["ath"] = ath
        signing_input = header + "." + b64(json.dumps(claims, separators=(",", ":")).encode())
        r, s = decode_dss_signature(key.sign(signing_input.encode("ascii"), algorithm))
        yield signing_input + "." + b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def write_files(key: ec.EllipticCurvePrivateKey, outdir: str, count: int, threads: int,
                method: str, htu: str, token: str | None = None) -> list[str]:
    """Write one file per wrk thread; return their paths."""
    os.makedirs(outdir, exist_ok=True)
    per_thread = -(-count // threads)
    paths = []
    for t in range(1, threads + 1):
        path = os.path.join(outdir, f"proofs-{t}.txt")
        with open(path, "w") as f:
            for proof in proofs(key, per_thread, method, htu, token, prefix=f"t{t}-"):
                f.write(proof + "\n")
        paths.append(path)
    return paths


def main() -> None:
    if len(sys.argv) not in (7, 8):
        sys.exit(__doc__)
    key_path, outdir, count, threads, method, htu = sys.argv[1:7]
    token = sys.argv[7] if len(sys.argv) == 8 else None
    key = load_key(key_path) if os.path.exists(key_path) else new_key(key_path)
    for path in write_files(key, outdir, int(count), int(threads), method, htu, token):
        print(path)


if __name__ == "__main__":
    main()
