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
        "rdp", "mysql", "postgresql", "sip", "irc", "wireguard", "openvpn", "dhcp", "ssdp")
APP = {name: i for i, name in enumerate(APPS)}
(NONE, UNKNOWN, DNS, HTTP, TLS, SSH, QUIC, NTP, SMTP, FTP, POP3, IMAP, SMB, RDP, MYSQL, POSTGRESQL, SIP, IRC,
 WIREGUARD, OPENVPN, DHCP, SSDP) = range(len(APPS))

# Ports where each protocol is expected (IANA assignments plus the alternates seen in the wild),
# and the transports it runs over (6 TCP, 17 UDP).
STANDARD_PORTS = {
    "dns": ((53, 137, 5353, 5355), (6, 17)),  # NetBIOS name service (137) is DNS wire format
    "http": ((80, 591, 3128, 8000, 8008, 8080, 8081, 8888), (6,)),
    "tls": ((443, 465, 563, 636, 853, 989, 990, 992, 993, 994, 995, 3269, 5061, 5986, 6443, 6697, 8443, 9443), (6,)),
    "ssh": ((22, 2222), (6,)),
    "quic": ((443, 80, 8443), (17,)),
    "ntp": ((123,), (17,)),
    "smtp": ((25, 587, 2525), (6,)),
    "ftp": ((21,), (6,)),
    "pop3": ((110,), (6,)),
    "imap": ((143,), (6,)),
    "smb": ((139, 445), (6,)),
    "rdp": ((3389,), (6,)),
    "mysql": ((3306,), (6,)),
    "postgresql": ((5432,), (6,)),
    "sip": ((5060, 5061), (6, 17)),
    "irc": (tuple(range(6660, 6670)) + (6697, 7000), (6,)),
    "wireguard": ((51820,), (17,)),
    "openvpn": ((1194,), (6, 17)),
    "dhcp": ((67, 68, 546, 547), (17,)),
    "ssdp": ((1900,), (17,)),
}
TRANSPORTS = (6, 17)


def _tables() -> tuple[np.ndarray, np.ndarray]:
    """STANDARD[t, app, port]: the port is standard for the app over transport t (0 TCP, 1 UDP);
    PROMISED[t, port]: the app a well-known port promises over that transport (0: none)."""
    standard = np.zeros((2, len(APPS), 65536), np.bool_)
    promised = np.zeros((2, 65536), np.uint8)
    for name, (ports, transports) in STANDARD_PORTS.items():
        for proto in transports:
            t = TRANSPORTS.index(proto)
            standard[t, APP[name], list(ports)] = True
            for port in ports:
                if promised[t, port] == 0 and not (name == "quic" and port != 443):
                    promised[t, port] = APP[name]
    return standard, promised


STANDARD, PROMISED = _tables()


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
SSDP_STARTS = np.array([_word(m, 8) for m in ("M-SEARCH", "NOTIFY *")], np.uint64)
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
def _tls_record(head, n):
    """A TLS record header (change-cipher-spec, alert, handshake or application data; SSL 3.0 to
    TLS 1.3): application data counts too, so a capture that starts mid-session still says TLS."""
    return n >= 3 and 0x14 <= _byte(head, 0) <= 0x17 and _byte(head, 1) == 3 and _byte(head, 2) <= 4


@nb.njit(cache=True, inline="always")
def _dns_header(head, n, offset, response):
    """A plausible DNS header (flags and question count) at ``offset`` bytes into the head."""
    if n < offset + 6:
        return False
    flags = (_byte(head, offset + 2) << 8) | _byte(head, offset + 3)
    qd = (_byte(head, offset + 4) << 8) | _byte(head, offset + 5)
    qr = flags >> 15
    opcode = (flags >> 11) & 0xF
    return qr == response and opcode in (0, 2, 4, 5) and (flags & 0x40) == 0 and \
        (1 <= qd <= 16 or (response == 1 and qd == 0))


@nb.njit(cache=True)
def _client(proto, oh, on, o_pl, o_pk):
    """The protocol the originator's first payload opens with (0 when none matches)."""
    o4 = _first4(oh)
    if on >= 4 and o4 == W_SSH:
        return SSH
    if proto == 6:
        if on >= 4 and _in(o4, HTTP_METHODS):
            return HTTP
        if _tls_record(oh, on):
            return TLS
        if on >= 8 and _byte(oh, 0) == 0 and (_byte(oh, 4) in (0xFF, 0xFE)) and \
                ((oh & np.uint64(0xFFFFFF)) == np.uint64(0x534D42)):
            return SMB
        if on >= 6 and _byte(oh, 0) == 3 and _byte(oh, 1) == 0 and _byte(oh, 5) == 0xE0:
            return RDP
        if on >= 8 and ((oh & np.uint64(0xFFFFFFFF)) == np.uint64(0x00030000) or
                        (oh & np.uint64(0xFFFFFFFF)) == np.uint64(0x04D2162F)) and o4 < np.uint64(10000):
            return POSTGRESQL
        if on >= 4 and _in(o4, SMTP_CMDS):
            return SMTP
        if on >= 4 and _in(o4, FTP_CMDS):
            return FTP
        if on >= 4 and _in(o4, IRC_CMDS):
            return IRC
        if _dns_header(oh, on, 2, 0):
            return DNS
    elif proto == 17:
        if on == 8 and _in(oh, SSDP_STARTS):
            return SSDP
        if on >= 4 and _in(o4, SIP_METHODS):
            return SIP
        if _dns_header(oh, on, 0, 0) or _dns_header(oh, on, 0, 1):
            return DNS
        if on >= 5 and (_byte(oh, 0) & 0xC0) == 0xC0 and _in((oh >> np.uint64(24)) & np.uint64(0xFFFFFFFF),
                                                             QUIC_VERSIONS):
            return QUIC
        if on >= 1 and (_byte(oh, 0) & 0x3F) in (0x0B, 0x13, 0x1B, 0x23) and o_pk > 0 and \
                48 <= o_pl // o_pk <= 120 and o_pl % o_pk == 0:
            return NTP
        if on >= 4 and o4 == np.uint64(0x01000000) and o_pl == 148 * o_pk:
            return WIREGUARD
        if on >= 1 and _byte(oh, 0) in (0x38, 0x50) and o_pk > 0 and 14 <= o_pl // o_pk <= 120:
            return OPENVPN
        if on >= 4 and _byte(oh, 0) in (1, 2) and _byte(oh, 1) == 1 and _byte(oh, 2) == 6:
            return DHCP
    return 0


@nb.njit(cache=True)
def _server(proto, rh, rn):
    """The protocol the responder's first payload opens with (0 when none matches)."""
    r4 = _first4(rh)
    if rn >= 4 and r4 == W_SSH:
        return SSH
    if proto == 6:
        if rn >= 4 and r4 == W_HTTP:
            return HTTP
        if _tls_record(rh, rn):
            return TLS
        if rn >= 5 and _byte(rh, 3) == 0 and _byte(rh, 4) == 10 and _byte(rh, 2) == 0:
            return MYSQL
        if rn >= 4 and r4 == W_OK:
            return POP3
        if rn >= 4 and r4 == W_IMAP:
            return IMAP
        if _dns_header(rh, rn, 2, 1):
            return DNS
    elif proto == 17:
        if rn >= 4 and r4 == W_SIP:
            return SIP
        if _dns_header(rh, rn, 0, 1):
            return DNS
    return 0


@nb.njit(cache=True)
def _classify_one(proto, oh, on, rh, rn, o_pl, o_pk):
    """The client's protocol decides (an HTTP request to an SSH server is HTTP); the server's
    banner names it when the client sent nothing recognisable."""
    if on == 0 and rn == 0:
        return NONE
    app = _client(proto, oh, on, o_pl, o_pk)
    if app == 0 and (on == 0 or proto == 6):
        app = _server(proto, rh, rn)
    return app if app else UNKNOWN


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
