#!/usr/bin/env python3
"""Print an HS256 JWT for local development (python stdlib only).

  scripts/devjwt.py                       # secret from $JWT_SECRET, tenant demo, sub T1, role terminal
  scripts/devjwt.py --sub T2 --ttl 600
  TOKEN=$(scripts/devjwt.py --secret "$JWT_SECRET")

Claims: sub, tenant, role, exp (unix seconds = now + ttl).
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import time


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_jwt(secret: str, claims: dict) -> str:
    header = {"alg": "HS256", "typ": "JWT"}
    signing_input = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode("utf-8")) for part in (header, claims)
    )
    sig = hmac.new(secret.encode("utf-8"), signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--secret", default=os.environ.get("JWT_SECRET"), help="HMAC secret (default: $JWT_SECRET)")
    ap.add_argument("--tenant", default="demo", help="tenant claim (default demo)")
    ap.add_argument("--sub", default="T1", help="subject, e.g. the terminal id (default T1)")
    ap.add_argument("--role", default="terminal", help="role claim (default terminal)")
    ap.add_argument("--ttl", type=int, default=86400, help="seconds until exp (default 86400)")
    a = ap.parse_args()
    if not a.secret:
        print("devjwt: no secret: pass --secret or set JWT_SECRET", file=sys.stderr)
        return 2
    claims = {"sub": a.sub, "tenant": a.tenant, "role": a.role, "exp": int(time.time()) + a.ttl}
    print(make_jwt(a.secret, claims))
    return 0


if __name__ == "__main__":
    sys.exit(main())
