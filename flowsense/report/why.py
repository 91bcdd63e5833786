"""One sentence per alert that says why it fired, in the analyst's words, from its evidence alone.

Shared by the report and `flowsense explain`; a rule without a sentence here (or an alert whose
evidence lacks a field) falls back to the rule's name and its subscores.
"""

from __future__ import annotations


def _beacon(a: dict, ev: dict) -> str:
    dst = a["destination"]
    target = f"{dst['ip']}:{dst['port']}" if dst.get("ip") and dst.get("port") else dst.get("ip") \
        or f"the addresses of {ev.get('domain')}"
    return (f"{ev.get('check_ins', ev.get('connections'))} check-ins from {a['source']['ip']} to {target} every "
            f"{ev['period_s']:.1f} s (jitter {ev.get('jitter_s', 0):.2f} s, {ev.get('missing_beats', 0)} beats "
            f"missed); typical size {ev.get('median_bytes', 0):.0f} bytes.")


def _icmp(a: dict, ev: dict) -> str:
    content, sizes = ev.get("content", {}), ev.get("payload_sizes", {})
    tools = ", ".join(content.get("tool_signatures") or []) or "none"
    return (f"{ev['packets']['requests']} ICMP requests from {a['source']['ip']} to {a['destination']['ip']} over "
            f"{ev.get('duration_s', 0):.0f} s: {sizes.get('distinct', '?')} payload size(s) "
            f"({sizes.get('min', '?')}-{sizes.get('max', '?')} B), {content.get('non_pattern_share', 0):.0%} of "
            f"payloads unlike an OS ping; tool signatures: {tools}.")


def _dns(a: dict, ev: dict) -> str:
    return ev.get("summary") or f"DNS tunnel indicators under {ev['zone']} from {a['source']['ip']}."


def _fallback(a: dict, ev: dict) -> str:
    blocked, fb = ev["blocked"], ev["fallback"]
    events = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in blocked.get("events", {}).items())
    targets = ", ".join(f"{t['destination']}:{t['port'] or t['transport']}" for t in blocked.get("targets", []))
    return (f"{a['source']['ip']} was blocked reaching {targets} ({events}); {ev.get('gap_s', 0):.0f} s later it "
            f"used {fb['transport']}/{fb['port'] or '-'} to {fb['destination']} ({fb.get('app', '?')}).")


def _scan(a: dict, ev: dict) -> str:
    hosts, ports = ev["distinct_hosts"], ev["distinct_ports"]
    return (f"{a['source']['ip']} probed {ev['distinct_host_ports']} host:port targets ({hosts} "
            f"host{'s' * (hosts != 1)}, {ports} port{'s' * (ports != 1)}), {ev['failure_ratio']:.0%} unanswered or "
            f"refused ({ev['kind']} scan).")


def _egress(a: dict, ev: dict) -> str:
    return (f"{a['source']['ip']} sent {ev['upload_bytes'] / 1e6:,.1f} MB and received "
            f"{ev['download_bytes'] / 1e6:,.1f} MB with {a['destination']['ip']} over "
            f"{ev.get('covered_s', 0) / 60:,.0f} min in {ev.get('flows', '?')} flow(s).")


def _pairing(a: dict, ev: dict) -> str:
    prev = ev.get("prevalence", {})
    std = ", ".join(map(str, ev.get("standard_ports_for_app") or [])) or "none"
    return (f"{ev['verdict']}: {ev.get('flows', '?')} flow(s) spoke {ev.get('app')} (its standard ports: {std}); "
            f"{prev.get('hosts_using_pairing', '?')} of {prev.get('hosts_in_reference', '?')} hosts use this "
            f"port/protocol pairing ({prev.get('reference', 'no reference')}).")


SENTENCES = {"beacon": _beacon, "icmp_tunnel": _icmp, "dns_tunnel": _dns, "deny_fallback": _fallback,
             "scan": _scan, "egress_sustained": _egress, "egress_proxy": _egress, "port_pairing": _pairing}


def headline(a: dict) -> str:
    ev = a["flowsense"]["evidence"]
    say = SENTENCES.get(a["rule"]["id"])
    try:
        if say:
            return say(a, ev)
    except (KeyError, TypeError, ValueError):
        pass
    subs = ", ".join(f"{k} {v}" for k, v in (ev.get("subscores") or {}).items())
    return f"{a['rule']['name']}" + (f" (subscores: {subs})." if subs else ".")
