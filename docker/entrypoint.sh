#!/bin/sh
# Container entrypoint.  "run" (the default) starts every source /etc/flowsense/sensor.toml names
# (or FLOWSENSE_CONFIG) with output in FLOWSENSE_OUT; any other flowsense command runs as given
# ("sense --iface eth1", "collect --listen 0.0.0.0:2055", "analyze /data/x.pcap", ...).  exec hands
# the process over to flowsense, so SIGTERM from `docker stop` reaches it and it flushes and exits 0.
set -eu
config="${FLOWSENSE_CONFIG:-/etc/flowsense/sensor.toml}"
out="${FLOWSENSE_OUT:-/var/lib/flowsense/out}"
if [ "${1:-run}" = "run" ]; then
    [ "$#" -gt 0 ] && shift
    if [ ! -r "$config" ]; then
        echo "flowsense-entrypoint: error: config $config not readable; mount one there or set FLOWSENSE_CONFIG" >&2
        exit 2
    fi
    exec flowsense run -c "$config" --out "$out" "$@"
fi
exec flowsense "$@"
