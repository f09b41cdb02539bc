#!/bin/sh
# Entrypoint of the sidecar's container.
#
#   (no argument) or `run`  wait until `sidecar check` passes (the database accepts
#                           connections and matches the config), then
#                           exec `sidecar run -c "$SIDECAR_CONFIG"`
#   run|check|demo ARGS...  or a first argument starting with `-`: exec `sidecar "$@"`
#                           as given (`docker run IMAGE check`, `docker run IMAGE --help`)
#   anything else           exec it as a command (`docker run -it IMAGE sh`)
#
# Environment:
#   SIDECAR_CONFIG         config file (default /etc/sidecar/sidecar.yaml)
#   SIDECAR_WAIT_SECONDS   how long to wait for the database, in whole seconds (default 60;
#                          0: check once); the last check's message is shown on giving up
#   SIDECAR_WAIT_INTERVAL  whole seconds between two checks (default 2; 0 retries at once,
#                          each attempt then counting as one second of the wait)
#   SIDECAR_BIN            the sidecar command (default `sidecar`)
set -eu

: "${SIDECAR_CONFIG:=/etc/sidecar/sidecar.yaml}"
: "${SIDECAR_BIN:=sidecar}"
: "${SIDECAR_WAIT_SECONDS:=60}"
: "${SIDECAR_WAIT_INTERVAL:=2}"
export SIDECAR_CONFIG

me=sidecar-entrypoint

die() {
    printf '%s: %s\n' "$me" "$*" >&2
    exit 1
}

is_count() {
    case $1 in
        '' | *[!0-9]*) return 1 ;;
        *) return 0 ;;
    esac
}

is_count "$SIDECAR_WAIT_SECONDS" \
    || die "SIDECAR_WAIT_SECONDS must be a whole number of seconds, got '$SIDECAR_WAIT_SECONDS'"
is_count "$SIDECAR_WAIT_INTERVAL" \
    || die "SIDECAR_WAIT_INTERVAL must be a whole number of seconds, got '$SIDECAR_WAIT_INTERVAL'"

# Run `sidecar check` until it passes or SIDECAR_WAIT_SECONDS have been spent waiting.
wait_for_database() {
    step=$SIDECAR_WAIT_INTERVAL
    [ "$step" -gt 0 ] || step=1
    waited=0
    attempt=1
    while :; do
        if output=$("$SIDECAR_BIN" check -c "$SIDECAR_CONFIG" 2>&1); then
            [ -z "$output" ] || printf '%s\n' "$output"
            return 0
        fi
        if [ "$waited" -ge "$SIDECAR_WAIT_SECONDS" ]; then
            printf '%s\n' "$output" >&2
            die "gave up after $attempt check(s) in ${SIDECAR_WAIT_SECONDS}s:" \
                "the database is unreachable or does not match $SIDECAR_CONFIG"
        fi
        printf '%s: check %s failed, retrying (%ss of %ss): %s\n' \
            "$me" "$attempt" "$waited" "$SIDECAR_WAIT_SECONDS" \
            "$(printf '%s\n' "$output" | tail -n 1)" >&2
        sleep "$SIDECAR_WAIT_INTERVAL"
        waited=$((waited + step))
        attempt=$((attempt + 1))
    done
}

if [ "$#" -eq 0 ] || { [ "$#" -eq 1 ] && [ "$1" = run ]; }; then
    wait_for_database
    exec "$SIDECAR_BIN" run -c "$SIDECAR_CONFIG"
fi

case $1 in
    run | check | demo | -*) exec "$SIDECAR_BIN" "$@" ;;
    *) exec "$@" ;;
esac
