"""The protocol a flow actually speaks, from the first payload bytes of each side.

The flow meter keeps the first 8 payload bytes per direction (``orig_head``/``resp_head``); a small
signature set over them names the common protocols without looking at the port, so "SSH on 443" or
"not DNS on 53" are verdicts.  Eight bytes are enough for every protocol below because each opens
with a fixed banner, method or header shape; anything else stays ``unknown`` (payload seen, no
signature) or ``none`` (no payload at all).  One Numba call labels a whole FLOW batch.
"""

from __future__ import annotations

import numba as nb
import numpy as np

APPS = ("none", "unknown", "dns", "http", "tls", "ssh", "quic", "ntp", "smtp", "ftp", "pop3", "imap", "smb",
        "rdp", "mysql", "postgresql", "sip", "irc", "wireguard", "openvpn", "dhcp")
APP = {name: i for i, name in enumerate(APPS)}
(NONE, UNKNOWN, DNS, HTTP, TLS, SSH, QUIC, NTP, SMTP, FTP, POP3, IMAP, SMB, RDP, MYSQL, POSTGRESQL, SIP, IRC,
 WIREGUARD, OPENVPN, DHCP) = range(len(APPS))

# Ports where each protocol is expected (IANA assignments plus the alternates seen in the wild).
STANDARD_PORTS = {
    "dns": (53, 5353, 5355),
    "http": (80, 591, 3128, 8000, 8008, 8080, 8081, 8888),
    "tls": (443, 465, 563, 636, 853, 989, 990, 992, 993, 994, 995, 3269, 5061, 5986, 6443, 6697, 8443, 9443),
    "ssh": (22, 2222),
    "quic": (443, 80, 8443),
    "ntp": (123,),
    "smtp": (25, 587, 2525),
    "ftp": (21,),
    "pop3": (110,),
    "imap": (143,),
    "smb": (139, 445),
    "rdp": (3389,),
    "mysql": (3306,),
    "postgresql": (5432,),
    "sip": (5060, 5061),
    "irc": tuple(range(6660, 6670)) + (6697, 7000),
    "wireguard": (51820,),
    "openvpn": (1194,),
    "dhcp": (67, 68, 546, 547),
}


def _port_table() -> np.ndarray:
    table = np.zeros((len(APPS), 65536), np.bool_)
    for name, ports in STANDARD_PORTS.items():
        table[APP[name], list(ports)] = True
    return table


PORT_TABLE = _port_table()
APP_OF_PORT = np.zeros(65536, np.uint8)  # the protocol a well-known port promises (0: none)
for _name, _ports in STANDARD_PORTS.items():
    for _p in _ports:
        if APP_OF_PORT[_p] == 0 and not (_name == "quic" and _p in (80, 8443)):
            APP_OF_PORT[_p] = APP[_name]


def _word(text: str, width: int = 4) -> int:
    """The first ``width`` bytes of text as the big-endian integer a head starts with."""
    raw = text.encode()[:width].ljust(width, b"\0")
    return int.from_bytes(raw, "big")


HTTP_METHODS = np.array([_word(m) for m in ("GET ", "POST", "HEAD", "PUT ", "DELE", "OPTI", "CONN", "PATC",
                                            "TRAC")], np.uint64)
SIP_METHODS = np.array([_word(m) for m in ("INVI", "REGI", "SIP/", "SUBS", "NOTI", "BYE ", "ACK ")], np.uint64)
SMTP_CMDS = np.array([_word(m) for m in ("EHLO", "HELO", "MAIL")], np.uint64)
FTP_CMDS = np.array([_word(m) for m in ("USER", "SYST", "FEAT", "OPTS", "PASV", "EPSV")], np.uint64)
IRC_CMDS = np.array([_word(m) for m in ("NICK", "CAP ", "PASS")], np.uint64)
W_HTTP, W_SSH, W_SIP, W_OK, W_IMAP = _word("HTTP"), _word("SSH-"), _word("SIP/"), _word("+OK "), _word("* OK")
QUIC_VERSIONS = np.array([0x00000001, 0x6B3343CF, 0xFF00001D, 0xFF00001B, 0xFACEB002, 0x51303530,
                          0x51303436, 0x51303433], np.uint64)


@nb.njit(cache=True, inline="always")
def _first4(head):
    return head >> np.uint64(32)


@nb.njit(cache=True, inline="always")
def _byte(head, i):
    return np.int64((head >> np.uint64(56 - 8 * i)) & np.uint64(0xFF))


@nb.njit(cache=True, inline="always")
def _in(value, table):
    for v in table:
        if v == value:
            return True
    return False


@nb.njit(cache=True, inline="always")
def _dns_header(head, n, offset, response):
    """A plausible DNS header (flags and question count) at ``offset`` bytes into the head."""
    if n < offset + 6:
        return False
    flags = (_byte(head, offset + 2) << 8) | _byte(head, offset + 3)
    qd = (_byte(head, offset + 4) << 8) | _byte(head, offset + 5)
    qr = flags >> 15
    opcode = (flags >> 11) & 0xF
    return qr == response and opcode in (0, 2, 4, 5) and qd == 1 and (flags & 0x40) == 0


@nb.njit(cache=True)
def _classify_one(proto, oh, on, rh, rn, o_pl, o_pk):
    if on == 0 and rn == 0:
        return NONE
    o4, r4 = _first4(oh), _first4(rh)
    if (on >= 4 and o4 == W_SSH) or (rn >= 4 and r4 == W_SSH):
        return SSH
    if proto == 6:
        if on >= 4 and _in(o4, HTTP_METHODS):
            return HTTP
        if rn >= 4 and r4 == W_HTTP:
            return HTTP
        if (on >= 3 and _byte(oh, 0) == 0x16 and _byte(oh, 1) == 3 and _byte(oh, 2) <= 4) or \
                (rn >= 3 and _byte(rh, 0) in (0x15, 0x16) and _byte(rh, 1) == 3 and _byte(rh, 2) <= 4):
            return TLS
        if on >= 8 and _byte(oh, 0) == 0 and (_byte(oh, 4) in (0xFF, 0xFE)) and \
                ((oh & np.uint64(0xFFFFFF)) == np.uint64(0x534D42)):
            return SMB
        if on >= 6 and _byte(oh, 0) == 3 and _byte(oh, 1) == 0 and _byte(oh, 5) == 0xE0:
            return RDP
        if on >= 8 and ((oh & np.uint64(0xFFFFFFFF)) == np.uint64(0x00030000) or
                        (oh & np.uint64(0xFFFFFFFF)) == np.uint64(0x04D2162F)) and _first4(oh) < np.uint64(10000):
            return POSTGRESQL
        if rn >= 5 and _byte(rh, 3) == 0 and _byte(rh, 4) == 10 and _byte(rh, 2) == 0:
            return MYSQL
        if on >= 4 and _in(o4, SMTP_CMDS):
            return SMTP
        if on >= 4 and _in(o4, FTP_CMDS):
            return FTP
        if on >= 4 and _in(o4, IRC_CMDS):
            return IRC
        if rn >= 4 and r4 == W_OK:
            return POP3
        if rn >= 4 and r4 == W_IMAP:
            return IMAP
        if _dns_header(oh, on, 2, 0) or _dns_header(rh, rn, 2, 1):
            return DNS
    elif proto == 17:
        if (on >= 4 and _in(o4, SIP_METHODS)) or (rn >= 4 and r4 == W_SIP):
            return SIP
        if _dns_header(oh, on, 0, 0) or (on == 0 and _dns_header(rh, rn, 0, 1)):
            return DNS
        if on >= 5 and (_byte(oh, 0) & 0xC0) == 0xC0 and _in((oh >> np.uint64(24)) & np.uint64(0xFFFFFFFF),
                                                             QUIC_VERSIONS):
            return QUIC
        if on >= 1 and (_byte(oh, 0) & 0x3F) in (0x0B, 0x13, 0x1B, 0x23) and o_pk > 0 and o_pl == 48 * o_pk:
            return NTP
        if on >= 4 and o4 == np.uint64(0x01000000) and o_pl == 148 * o_pk:
            return WIREGUARD
        if on >= 1 and _byte(oh, 0) in (0x38, 0x50) and o_pk > 0 and 14 <= o_pl // o_pk <= 120:
            return OPENVPN
        if on >= 4 and _byte(oh, 0) in (1, 2) and _byte(oh, 1) == 1 and _byte(oh, 2) == 6:
            return DHCP
    return UNKNOWN


@nb.njit(cache=True, nogil=True)
def classify(flows):
    out = np.zeros(flows.shape[0], np.uint8)
    for i in range(flows.shape[0]):
        f = flows[i]
        if f.proto == 6 or f.proto == 17:
            out[i] = _classify_one(f.proto, f.orig_head, f.orig_head_len, f.resp_head, f.resp_head_len,
                                   f.orig_payload_bytes, f.orig_pkts)
    return out


def label_apps(flows: np.ndarray) -> np.ndarray:
    """Set the ``app`` column of a FLOW batch in place; returns the batch."""
    if len(flows):
        flows["app"] = classify(flows)
    return flows
