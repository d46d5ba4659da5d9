"""Checks keygate's signed identity (`X-Keygate-Signature`) in an upstream.

Standard library only; copy `verify` into your service. keygate signs when
`[identity] signing_key` is set; give the upstream the same secret.

    ok = verify(SECRET, request.method, request.full_path_with_query, request.headers)

`headers` is any mapping with case-insensitive (or lowercase) names; `target` is
the path and query exactly as received (no normalisation). As a script it reads
one JSON object {"secret", "method", "target", "headers"} on stdin and exits 0
when the signature is good, 1 when it is not (keygate's tests run it that way).
"""

import hashlib
import hmac
import json
import sys
import time

COVERED = ["key-id", "key-name", "org-id", "environment", "scopes", "owner", "auth-method"]


def verify(secret, method, target, headers, prefix="x-keygate-", max_age=300, now=None):
    """True when the request carries keygate's signature over exactly these values,
    made at most `max_age` seconds ago (or ahead, for clock skew)."""
    headers = {k.lower(): v for k, v in headers.items()}
    fields = dict(p.split("=", 1) for p in headers.get(prefix + "signature", "").split(",") if "=" in p)
    try:
        t = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - t) > max_age:
        return False
    lines = ["keygate-v1", str(t), method, target]
    lines += [headers.get(prefix + name, "") for name in COVERED]
    lines.append(headers.get("x-request-id", ""))
    want = hmac.new(secret, "\n".join(lines).encode("latin-1"), hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, given)


if __name__ == "__main__":
    r = json.load(sys.stdin)
    sys.exit(0 if verify(r["secret"].encode(), r["method"], r["target"], r["headers"]) else 1)
