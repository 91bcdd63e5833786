"""Record types, declared once.

Every batch that travels between stages is a NumPy structured array of one of these dtypes (a row
per record, fields addressable as columns: ``batch["ts"]``), plus a ``uint8`` blob for variable
bytes referenced by ``*_off``/``*_len`` fields.  Kernels take the whole batch as one argument.

Conventions (DESIGN.md §2.5): times are int64 ns since the epoch (UTC); an address is two uint64
halves (``*_hi``, ``*_lo``) with IPv4 stored IPv4-mapped (``::ffff:a.b.c.d``) so one code path
serves both families; names follow Zeek's conn.log (``orig_*``, ``resp_*``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Field:
    name: str
    dtype: str
    doc: str
    internal: bool = False  # kernel bookkeeping, never written out


class Schema:
    def __init__(self, name: str, fields: list[Field]):
        self.name = name
        self.fields = tuple(fields)
        self.dtype = np.dtype([(f.name, f.dtype) for f in fields], align=True)
        self.public = tuple(f.name for f in fields if not f.internal)

    def empty(self, n: int) -> np.ndarray:
        return np.zeros(n, self.dtype)

    def doc(self) -> str:
        return "\n".join(f"{f.name:16} {f.dtype:4} {f.doc}" for f in self.fields if not f.internal)


def _addr(prefix: str, what: str) -> list[Field]:
    return [Field(f"{prefix}_hi", "u8", f"{what} address, high 64 bits"),
            Field(f"{prefix}_lo", "u8", f"{what} address, low 64 bits (IPv4-mapped for IPv4)")]


FRAME = Schema("frame", [
    Field("off", "i8", "offset of the captured bytes in the source buffer"),
    Field("cap_len", "u4", "captured length"),
    Field("wire_len", "u4", "original length on the wire"),
    Field("ts", "i8", "capture time, ns since epoch"),
    Field("link", "u2", "LINKTYPE_* of the interface"),
    Field("file_id", "u2", "index of the capture file in this run"),
    Field("frame_no", "u4", "1-based frame number within its file (as tshark numbers them)"),
])

PACKET = Schema("packet", [
    Field("ts", "i8", "capture time, ns since epoch"),
    Field("file_id", "u2", "index of the capture file in this run"),
    Field("frame_no", "u4", "1-based frame number within its file"),
    Field("link", "u2", "LINKTYPE_* of the interface"),
    Field("vlan", "u2", "outermost 802.1Q/802.1ad VLAN id, 0 if untagged"),
    Field("wire_len", "u4", "frame length on the wire"),
    Field("cap_len", "u4", "captured frame length"),
    Field("ip_ver", "u1", "4 or 6; 0 when the frame carries no decodable IP"),
    Field("proto", "u1", "IP protocol of the transport (after IPv6 extension headers)"),
    Field("ttl", "u1", "IPv4 TTL or IPv6 hop limit"),
    Field("tcp_flags", "u1", "TCP flags byte (FIN=1 SYN=2 RST=4 PSH=8 ACK=16 URG=32 ECE=64 CWR=128)"),
    *_addr("src", "source"),
    *_addr("dst", "destination"),
    Field("sport", "u2", "TCP/UDP/SCTP source port"),
    Field("dport", "u2", "TCP/UDP/SCTP destination port"),
    Field("icmp_type", "u1", "ICMP/ICMPv6 type"),
    Field("icmp_code", "u1", "ICMP/ICMPv6 code"),
    Field("icmp_id", "u2", "ICMP echo-family identifier"),
    Field("icmp_seq", "u2", "ICMP echo-family sequence number"),
    Field("frag", "u1", "0 not fragmented, 1 first fragment, 2 later fragment"),
    Field("ip_id", "u2", "IPv4 identification (low 16 bits of the IPv6 fragment id)"),
    Field("ip_len", "u4", "IP total length as declared by the header (IPv6: 40 + payload length)"),
    Field("l4_len", "u4", "transport payload length as declared by the headers"),
    Field("tcp_seq", "u4", "TCP sequence number"),
    Field("tcp_win", "u2", "TCP window"),
    Field("head", "u8", "first 8 bytes of the transport payload, big-endian, zero-padded"),
    Field("head_len", "u1", "how many payload bytes were captured into head (0-8)"),
    Field("pay_off", "u2", "offset of the transport payload from the start of the frame (0: none)"),
    Field("pl_off", "u4", "offset in the batch blob of the kept payload slice (ICMP)"),
    Field("pl_len", "u2", "length of the kept payload slice"),
    Field("weird", "u4", "weird bits (flowsense.weird.WEIRDS)"),
])

DNS = Schema("dns", [
    Field("ts", "i8", "capture time, ns since epoch"),
    Field("file_id", "u2", "index of the capture file in this run"),
    Field("frame_no", "u4", "1-based frame number within its file"),
    *_addr("src", "source"),
    *_addr("dst", "destination"),
    Field("sport", "u2", "source port"),
    Field("dport", "u2", "destination port"),
    Field("proto", "u1", "17 UDP or 6 TCP"),
    Field("qr", "u1", "0 query, 1 response"),
    Field("opcode", "u1", "DNS opcode"),
    Field("rcode", "u1", "DNS response code (3 = NXDOMAIN)"),
    Field("flags", "u2", "raw DNS header flags word"),
    Field("txid", "u2", "transaction id"),
    Field("qdcount", "u2", "question count"),
    Field("ancount", "u2", "answer count"),
    Field("nscount", "u2", "authority count"),
    Field("arcount", "u2", "additional count"),
    Field("qtype", "u2", "type of the first question"),
    Field("qclass", "u2", "class of the first question"),
    Field("msg_len", "u4", "DNS message length (UDP payload, or TCP length prefix)"),
    Field("qname_off", "u4", "offset of the first question name in the batch blob"),
    Field("qname_len", "u2", "length of the name (labels joined by '.', raw bytes)"),
    *_addr("answer", "first A/AAAA address in the answer section (0 when none)"),
    Field("answers", "u1", "A/AAAA records in the first MAX_ANSWERS answers"),
    Field("weird", "u4", "weird bits (flowsense.weird.WEIRDS)"),
])

FLOW = Schema("flow", [
    Field("ts", "i8", "first packet time, ns since epoch"),
    Field("last_ts", "i8", "last packet time, ns since epoch"),
    *_addr("orig", "originator (TCP: SYN sender; otherwise first sender)"),
    *_addr("resp", "responder"),
    Field("orig_p", "u2", "originator port (ICMP: key family type)"),
    Field("resp_p", "u2", "responder port (ICMP: echo id)"),
    Field("proto", "u1", "IP protocol"),
    Field("ip_ver", "u1", "4 or 6"),
    Field("icmp_type", "u1", "ICMP type of the first packet"),
    Field("icmp_code", "u1", "ICMP code of the first packet"),
    Field("orig_pkts", "u8", "packets from the originator"),
    Field("resp_pkts", "u8", "packets from the responder"),
    Field("orig_bytes", "u8", "IP-layer bytes from the originator (NetFlow semantics)"),
    Field("resp_bytes", "u8", "IP-layer bytes from the responder"),
    Field("orig_payload_bytes", "u8", "transport payload bytes from the originator"),
    Field("resp_payload_bytes", "u8", "transport payload bytes from the responder"),
    Field("orig_flags", "u1", "OR of TCP flags sent by the originator"),
    Field("resp_flags", "u1", "OR of TCP flags sent by the responder"),
    Field("state", "u1", "TCP progress bits (flowsense.flows.table.ST_*)"),
    Field("end_reason", "u1", "why the record was emitted (flowsense.flows.table.END_REASONS)"),
    Field("vlan", "u2", "VLAN id of the first packet"),
    Field("file_id", "u2", "capture file of the first packet"),
    Field("first_frame", "u4", "frame number of the first packet"),
    Field("orig_head", "u8", "first 8 payload bytes the originator sent (big-endian, zero-padded)"),
    Field("resp_head", "u8", "first 8 payload bytes the responder sent"),
    Field("orig_head_len", "u1", "how many bytes orig_head holds (0: no payload seen)"),
    Field("resp_head_len", "u1", "how many bytes resp_head holds"),
    Field("app", "u1", "protocol actually spoken, from payload (flowsense.features.app.APPS); set after metering"),
    Field("hash", "u4", "key hash", internal=True),
    Field("lru_prev", "i4", "LRU list link", internal=True),
    Field("lru_next", "i4", "LRU list link", internal=True),
    Field("age_prev", "i4", "creation-order list link", internal=True),
    Field("age_next", "i4", "creation-order list link", internal=True),
])

DENY = Schema("deny", [
    Field("ts", "i8", "time of the deny, ns since epoch (UTC)"),
    *_addr("src", "source"),
    *_addr("dst", "destination"),
    Field("sport", "u2", "source port (ICMP: type when logged)"),
    Field("dport", "u2", "destination port (ICMP: code when logged)"),
    Field("proto", "u1", "IP protocol"),
    Field("action", "u1", "index into flowsense.denylog.base.ACTIONS (deny, drop, reject, reset)"),
    Field("source", "u2", "index of the log file or listener the line came from"),
    Field("line_no", "u4", "1-based line number in that source (the evidence reference)"),
])

NFLOW = Schema("nflow", [
    Field("ts", "i8", "flow start, ns since epoch"),
    Field("last_ts", "i8", "flow end, ns since epoch"),
    *_addr("src", "source"),
    *_addr("dst", "destination"),
    Field("sport", "u2", "source port"),
    Field("dport", "u2", "destination port"),
    Field("proto", "u1", "IP protocol"),
    Field("tcp_flags", "u1", "OR of TCP flags"),
    Field("icmp_type", "u1", "ICMP type"),
    Field("icmp_code", "u1", "ICMP code"),
    Field("packets", "u8", "packets as exported (not scaled by sampling)"),
    Field("bytes", "u8", "IP-layer bytes as exported (not scaled by sampling)"),
    Field("sampling", "u4", "1-in-N packet sampling that applied (1 when unsampled or unknown)"),
    Field("in_if", "u4", "ingress interface index"),
    Field("out_if", "u4", "egress interface index"),
    Field("fw_event", "u1", "Cisco NSEL firewall event (3 = flow denied), 0 when absent"),
    Field("version", "u1", "5, 9 or 10 (IPFIX)"),
    Field("domain", "u4", "observation domain (IPFIX) or source id (v9); engine type/id (v5)"),
    *_addr("exporter", "exporter"),
])
