#!/bin/sh
# Set up flowsense on a Debian 12 machine as root: system packages, a virtualenv in .venv, the
# package itself.  With --test, also the tools the tests and bench/ drive (tshark; softflowd, pmacct,
# fprobe and nfdump for the NetFlow tests; tcpreplay for the sensor tests; GNU time; nftables, ulogd2
# and iproute2 for the firewall tests in network namespaces; tcpdump,
# ptunnel-ng, iodine, dns2tcp, nmap, masscan, hping3 and dig for the e2e detection lab in tests/e2e;
# chromium and a font for the report's browser test)
# and the test dependencies.  Safe to run again.
set -eu
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
system="python3 python3-venv python3-dev gcc libpcap0.8"
tests="tshark softflowd nfdump pmacct fprobe tcpreplay time nftables ulogd2 ulogd2-json ethtool iputils-ping iproute2 tcpdump ptunnel-ng iodine dns2tcp nmap masscan hping3 bind9-dnsutils chromium fonts-dejavu-core"
want=$system
[ "${1:-}" = "--test" ] && want="$system $tests"
missing=""
for pkg in $want; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
if [ "${1:-}" = "--test" ]; then
    .venv/bin/pip install -q -e '.[test]'
else
    .venv/bin/pip install -q -e .
fi
