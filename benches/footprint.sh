#!/usr/bin/env bash
# keygate's footprint (release build, embedded SQLite store), three figures:
#   start-up     ms from `keygate serve` being spawned to the first proxied 200
#                (store already created and migrated, as on a restart)
#   RSS          resident memory with NKEYS (100000) keys cached in L1: the keys are
#                created through the admin API, then each is used once
#   idle conns   CONNS (10000) client connections, each sends one request, stays
#                idle for IDLE (10) seconds (below [proxy] idle_timeout), then sends a
#                second one: every answer must be 200
#
#   benches/footprint.sh            # NKEYS=100000 CONNS=10000 IDLE=10
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
NKEYS="${NKEYS:-100000}"
CONNS="${CONNS:-10000}"
IDLE="${IDLE:-10}"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $((CONNS + 1000)) ] || { echo "footprint.sh: ulimit -n $(ulimit -n) is too low for CONNS=$CONNS" >&2; exit 1; }

NAME=footprint
# shellcheck source=benches/rig.sh
. "$ROOT/benches/rig.sh"
cat >"$TMP/keygate.toml" <<TOML
[proxy]
listen = "127.0.0.1:$PX"
upstream = "http://127.0.0.1:$UP"
workers = 2
access_log = false
[admin]
listen = "127.0.0.1:$AD"
max_failed_auth_per_minute = 0
[store]
url = "sqlite://$TMP/keygate.db"
[cache]
ttl = "1h"
capacity = 200000
[[route]]
name = "read-items"
path = "/v1/orgs/{org}/items/**"
scopes = ["read"]
org_param = "org"
TOML
ADMIN=$(key --name footprint-admin --scopes admin)
URL="http://127.0.0.1:$PX/v1/orgs/acme/items/1"

# --- start-up: spawn, then poll with a valid key until the first 200 ------------------
VALID=$(key --name first --org acme --scopes read --quota 1000000000)
python3 - "$T/keygate" "$TMP/keygate.toml" "$URL" "$VALID" >"$TMP/startup.txt" <<'PY'
import subprocess, sys, time, urllib.request
exe, config, url, key = sys.argv[1:]
t0 = time.monotonic()
p = subprocess.Popen([exe, "serve", "--config", config], env={"RUST_LOG": "warn"},
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while True:
    try:
        r = urllib.request.urlopen(urllib.request.Request(url, headers={"Authorization": "Bearer " + key}), timeout=1)
        if r.status == 200:
            break
    except Exception:
        time.sleep(0.001)
print(f"{(time.monotonic() - t0) * 1000:.1f}")
p.terminate(); p.wait()
PY
echo "start-up: $(cat "$TMP/startup.txt") ms from spawn to the first proxied 200"

RUST_LOG=warn "$T/keygate" serve --config "$TMP/keygate.toml" >"$TMP/keygate.log" 2>&1 & KG=$!; PIDS+=("$KG")
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$AD/healthz" && break; sleep 0.05; done
rss() { awk '/^VmRSS/ {print $2}' "/proc/$KG/status"; }
echo "RSS idle: $(rss) KiB"

# --- RSS with NKEYS cached keys ---------------------------------------------------------
python3 - "$AD" "$ADMIN" "$NKEYS" "$TMP/keys.txt" <<'PY'
import http.client, json, sys, threading
port, admin, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
keys, lock = [], threading.Lock()
def work(count):
    c = http.client.HTTPConnection("127.0.0.1", int(port))
    body = json.dumps({"name": "fp", "org": "acme", "scopes": ["read"]})
    for _ in range(count):
        c.request("POST", "/v1/keys", body, {"Authorization": "Bearer " + admin, "Content-Type": "application/json"})
        r = c.getresponse(); data = r.read()
        assert r.status == 201, (r.status, data[:200])
        with lock: keys.append(json.loads(data)["key"])
threads = [threading.Thread(target=work, args=(n // 8 + (1 if i < n % 8 else 0),)) for i in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
open(out, "w").write("\n".join(keys) + "\n")
PY
echo "RSS after creating $NKEYS keys through the admin API (none used yet): $(rss) KiB"
python3 - "$PX" "$TMP/keys.txt" <<'PY'
import http.client, sys, threading
port, path = int(sys.argv[1]), sys.argv[2]
keys = open(path).read().split()
def work(part):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for k in part:
        c.request("GET", "/v1/orgs/acme/items/1", headers={"Authorization": "Bearer " + k})
        r = c.getresponse(); r.read()
        assert r.status == 200, r.status
threads = [threading.Thread(target=work, args=(keys[i::8],)) for i in range(8)]
[t.start() for t in threads]; [t.join() for t in threads]
PY
hits=$(curl -s "http://127.0.0.1:$AD/metrics" | awk '/^keygate_cache_lookups_total\{layer="store",result="hit"\}/ {print $2}')
echo "RSS with $NKEYS keys cached: $(rss) KiB ($hits keys loaded from the store into L1)"

# --- CONNS idle keep-alive connections ----------------------------------------------------
python3 - "$PX" "$VALID" "$CONNS" "$IDLE" <<'PY'
import socket, sys, time
port, key, n, idle = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
req = (f"GET /v1/orgs/acme/items/1 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\r\n").encode()
def exchange(s):
    s.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            return "closed"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
    while len(rest) < length:
        rest += s.recv(4096)
    return head.split(b" ")[1].decode()
import collections
socks, outcomes = [], collections.Counter()
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    outcomes["first " + exchange(s)] += 1
    socks.append(s)
time.sleep(idle)
for s in socks:
    outcomes["second " + exchange(s)] += 1
errors = sum(v for k, v in outcomes.items() if not k.endswith(" 200"))
print(f"idle conns: {n} connections, each one request, idle {idle:.0f} s, then a second: {errors} errors {dict(outcomes)}")
PY
echo "RSS after the connections: $(rss) KiB"
