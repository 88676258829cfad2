#!/bin/sh
# Entrypoint of the postgres:15 image that .ci/provision-docker builds without a registry.
#
# No registry can be reached from CI, so the official image cannot be pulled; this script gives
# the imported Debian rootfs the same interface, which is what testcontainers and
# pytest-pipeweave rely on:
#   - POSTGRES_USER (default postgres), POSTGRES_PASSWORD (required unless
#     POSTGRES_HOST_AUTH_METHOD=trust), POSTGRES_DB (default POSTGRES_USER; created when it is
#     not "postgres"), POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD (default scram-sha-256);
#   - initdb runs as the postgres user on first start; the local socket trusts, TCP from any
#     address needs the password;
#   - *.sql and *.sh in /docker-entrypoint-initdb.d run once, after initdb;
#   - a command starting with "postgres" (or with an option) runs the server listening on every
#     address, the command's own "-c name=value" options coming last so that they win;
#     any other command runs as given.
set -eu

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
    exec "$@"
fi
: "${PGDATA:?PGDATA must be set}"

if [ "$(id -u)" = 0 ]; then
    # PostgreSQL refuses to run as root: prepare the folders, then start again as postgres.
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 0700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

initialize() {
    # Exported with their defaults, as upstream does, for the /docker-entrypoint-initdb.d scripts.
    export POSTGRES_USER="${POSTGRES_USER:-postgres}"
    export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
    user="$POSTGRES_USER"
    database="$POSTGRES_DB"
    auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
        echo "docker-entrypoint: POSTGRES_PASSWORD is empty;" \
            "set it, or POSTGRES_HOST_AUTH_METHOD=trust to allow connections without one" >&2
        exit 1
    fi
    pwfile=""
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        pwfile="$(mktemp)"
        printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    fi
    # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a list of options, as upstream.
    initdb --username="$user" ${pwfile:+--pwfile="$pwfile"} \
        --auth-local=trust --auth-host="$auth" ${POSTGRES_INITDB_ARGS:-} >/dev/null
    [ -z "$pwfile" ] || rm -f "$pwfile"
    # initdb's host lines cover loopback only; published ports arrive from the bridge.
    printf 'host all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"

    scripts="$(find /docker-entrypoint-initdb.d -maxdepth 1 -type f 2>/dev/null | sort)"
    if [ "$database" = postgres ] && [ -z "$scripts" ]; then
        return
    fi
    # A server on the socket only, so nobody connects before initialization is over.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w -s start
    if [ "$database" != postgres ]; then
        printf 'CREATE DATABASE :"name";\n' |
            psql -q -v ON_ERROR_STOP=1 --username "$user" --dbname postgres -v name="$database"
    fi
    newline='
'
    IFS="$newline"
    for script in $scripts; do
        case "$script" in
        *.sql) psql -q -v ON_ERROR_STOP=1 --username "$user" --dbname "$database" -f "$script" ;;
        *.sh)
            # shellcheck source=/dev/null  # the image user's own scripts
            if [ -x "$script" ]; then "$script"; else . "$script"; fi
            ;;
        *) echo "docker-entrypoint: ignoring $script" >&2 ;;
        esac
    done
    unset IFS
    pg_ctl -D "$PGDATA" -m fast -w -s stop
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initialize
fi

shift
exec postgres -c listen_addresses='*' "$@"
