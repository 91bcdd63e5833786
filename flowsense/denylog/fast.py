"""Fast path of the deny-log reader: Numba passes over a block of log bytes (a part per core).

The kernels split lines, strip the syslog framing (RFC 5424, RFC 3164, PRI only, none) and lex the
dominant formats (iptables KEY=VALUE, Cisco ASA 106010/106014/106023 and the skipped ids, pfSense
filterlog IPv4, Juniper SRX structured RT_FLOW, FortiGate key=value) straight from bytes: numbers
and IPv4 addresses become integers,
and the words that decide the outcome (rule prefix, protocol name, verdict, message id...) become
spans.  A line is claimed only when exactly one vendor could claim it (every other vendor's
cheapest test fails), so the Python reader's vendor order cannot matter; anything unusual (non-ASCII,
IPv6, odd framing, a field that would fail) is DEFERred to the Python decoders, which stay the one
definition of every format and give the reasons and samples.

What the words mean is decided in Python, once per distinct combination of them (logs repeat the
same few rules and hosts), by the vendor modules' own functions; ``tests/test_denylog_fast.py``
checks both paths agree line for line.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from numba import njit

from flowsense.denylog import VENDORS as ALL_VENDORS
from flowsense.denylog import cisco_asa, fortigate, iptables, juniper_srx, pfsense
from flowsense.denylog.base import ACTIONS, Deny, Header, Skip, proto_number
from flowsense.denylog.framing import iso_ns
from flowsense.schema import DENY

DEFER, BLANK, FAST = 0, 1, 2
PLAIN, ODD = 3, 4  # line kinds from line_bounds (with BLANK)
IPTABLES, CISCO_ASA, PFSENSE, JUNIPER_SRX, FORTIGATE = range(5)  # vendor codes of FAST lines
NSPAN = 12  # words per line handed to the vendor's outcome function (span 0 is the framing host)
HDR_NONE, HDR_EXACT, HDR_HOUR = 0, 1, 2  # framing time: none, epoch ns, RFC 3164 hour key + seconds
OWN_NONE, OWN_EPOCH, OWN_LOCAL = 0, 1, 2  # the message's own time: none, FortiGate eventtime, local date/time
NUMS = 10  # per line: src dst, port pair A, port pair B, fields usable, own time kind, value, seconds
NS = 1_000_000_000
_BIT = {vendor.NAME: 1 << i for i, vendor in enumerate(ALL_VENDORS)}  # claimant bits
B_IPTABLES, B_CISCO_ASA, B_PFSENSE, B_PANOS, B_FORTIGATE, B_JUNIPER_SRX, B_CHECKPOINT, B_MIKROTIK, B_ULOGD_JSON = (
    _BIT[name] for name in ("iptables", "cisco_asa", "pfsense", "panos", "fortigate", "juniper_srx", "checkpoint",
                            "mikrotik", "ulogd_json"))
V4_MAPPED = np.uint64(0xFFFF << 32)
GOLDEN, MULTIPLIER = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9)


def _b(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), np.uint8).copy()


# byte patterns (Numba freezes global arrays as constants)
def _key_table(keys) -> tuple[np.ndarray, np.ndarray]:
    """Words as rows of a padded byte matrix, and their lengths (a kernel compares b[k:k+len])."""
    table = np.zeros((len(keys), max(map(len, keys))), np.uint8)
    for row, key in enumerate(keys):
        table[row, :len(key)] = _b(key)
    return table, np.array([len(k) for k in keys], np.int64)


IPT_KEY_TEXT = (" SRC=", " DST=", " PROTO=", *iptables.PORT_KEYS, *iptables.ICMP_KEYS)
IPT_KEYS, IPT_KEY_LEN = _key_table(IPT_KEY_TEXT)
# FortiGate: fields whose words decide the outcome (spans 1-9), then the per-line ones
FG_WORDS = ("action", "status", "type", "proto", "policyname", "policyid", "devname", "icmptype", "icmpcode")
FG_LINE = ("srcip", "dstip", "srcport", "dstport", "eventtime", "date", "time", "tz")
FG_KEYS, FG_KEY_LEN = _key_table(FG_WORDS + FG_LINE)
FG_WORD_COUNT = len(FG_WORDS)
P_ACTION_EQ, P_STATUS_EQ = _b("action="), _b("status=")
DATE_LAYOUT = np.array([0, 0, 0, 0, ord("-"), 0, 0, ord("-"), 0, 0], np.uint8)
P_SRC = _b(" SRC=")
P_IN, P_ASA, P_FTD, P_LOGID, P_RT, P_LOGUID, P_PRODUCT, P_MT_IN, P_MT_START = (
    _b(t) for t in ("IN=", "%ASA-", "%FTD-", "logid=", "RT_", 'loguid:"', "|product=", ": in:", "in:"))
P_DENY, P_SRC_W, P_DST_W, P_TYPE_W, P_ACL = (_b(t) for t in ("Deny ", " src ", " dst ", "type ",
                                                              ' by access-group "'))
P_INBOUND, P_PROTOCOL, P_FILTERLOG, P_CHECKPOINT, P_IN_WORD, P_OUT_WORD, P_FOUR = (
    _b(t) for t in ("inbound", "protocol", "filterlog", "CheckPoint", "in", "out", "4"))
SRX_KEYS, SRX_KEY_LEN = _key_table(("source-address", "destination-address", "source-port", "destination-port",
                                     "protocol-id", "policy-name", "reason", "icmp-type"))
PFSENSE_PORTED = np.array(pfsense.PORTED, np.int64)  # their ports vary per line: not a word
MONTHS = _b("JanFebMarAprMayJunJulAugSepOctNovDec")
# byte values (ord() inside a kernel is not folded to a constant)
C_PERCENT, C_PLUS, C_D1, C_LT, C_EQ, C_GT, C_I, C_R, C_T, C_Z, C_LBRACKET, C_RBRACKET, C_l, C_LBRACE, C_BAR = (
    ord(c) for c in "%+1<=>IRTZ[]l{|")
SPACE, COLON, COMMA, DOT, SLASH, DASH, QUOTE, BSLASH = (ord(c) for c in " :,./-\"\\")


@njit(cache=True, nogil=True, inline="always")
def _at(b, i, e, pat):
    """pat at b[i:] (before e)."""
    if i < 0 or i + pat.size > e:
        return False
    for k in range(pat.size):
        if b[i + k] != pat[k]:
            return False
    return True


@njit(cache=True, nogil=True, inline="always")
def _at_row(b, i, e, table, row, n):
    """Row ``row`` (first n bytes) of a word table at b[i:] (no slicing: a slice per test is slow)."""
    if i + n > e:
        return False
    for k in range(n):
        if b[i + k] != table[row, k]:
            return False
    return True


@njit(cache=True, nogil=True, inline="always")
def _is(b, i, j, pat):
    """b[i:j] is pat."""
    return j - i == pat.size and _at(b, i, j, pat)


@njit(cache=True, nogil=True)
def _find(b, i, e, pat):
    """First index of pat in b[i:e], -1 if none."""
    first = pat[0]
    while i + pat.size <= e:
        if b[i] == first and _at(b, i, e, pat):
            return i
        i += 1
    return -1


@njit(cache=True, nogil=True, inline="always")
def _digit(c):
    return 48 <= c <= 57


@njit(cache=True, nogil=True, inline="always")
def _upper(c):
    return 65 <= c <= 90


@njit(cache=True, nogil=True, inline="always")
def _lower(c):
    return 97 <= c <= 122


@njit(cache=True, nogil=True, inline="always")
def _word(c):
    """Python's ASCII \\w."""
    return _digit(c) or _upper(c) or _lower(c) or c == 95


@njit(cache=True, nogil=True, inline="always")
def _in(value, values):
    for v in values:
        if v == value:
            return True
    return False


@njit(cache=True, nogil=True)
def _number(b, i, j):
    """Value of the ASCII digits b[i:j] (1 to 9 of them), else -1."""
    if j <= i or j - i > 9:
        return -1
    n = 0
    for k in range(i, j):
        if not _digit(b[k]):
            return -1
        n = n * 10 + b[k] - 48
    return n


@njit(cache=True, nogil=True)
def _port(b, i, j):
    """base.port on b[i:j] without its strip(): '' -> 0, digits < 65536, else -1."""
    if j == i:
        return 0
    n = _number(b, i, j)
    return n if n < 65536 else -1


@njit(cache=True, nogil=True)
def _ipv4(b, i, j):
    """Dotted quad b[i:j] as inet_pton reads it (no leading zeros), else -1."""
    value = 0
    parts = 0
    k = i
    while k < j:
        start = k
        while k < j and _digit(b[k]):
            k += 1
        if k == start or k - start > 3 or (b[start] == 48 and k - start > 1):
            return -1
        part = _number(b, start, k)
        if part > 255:
            return -1
        value = value * 256 + part
        parts += 1
        if k < j:
            if b[k] != DOT or parts == 4:
                return -1
            k += 1
            if k == j:
                return -1
    return value if parts == 4 else -1


@njit(cache=True, nogil=True)
def _token_end(b, i, e):
    while i < e and b[i] != SPACE:
        i += 1
    return i


@njit(cache=True, nogil=True)
def _days(y, m, d):
    """Days since 1970-01-01 of a proleptic Gregorian date (Hinnant's days_from_civil)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


@njit(cache=True, nogil=True)
def _month_days(y, m):
    if m == 2:
        return 29 if (y % 4 == 0 and y % 100 != 0) or y % 400 == 0 else 28
    return 30 if m in (4, 6, 9, 11) else 31


@njit(cache=True, nogil=True)
def _fixed(b, i, layout, out):
    """Digits at b[i:], fixed positions: layout holds the separators as bytes, 0 for a digit.
    The numbers read left to right go to out; returns how many, 0 when b does not fit."""
    out[:] = 0
    n = -1
    in_number = False
    for k in range(layout.size):
        c = b[i + k]
        if layout[k] == 0:
            if not _digit(c):
                return 0
            if not in_number:
                n += 1
                in_number = True
            out[n] = out[n] * 10 + c - 48
        else:
            if c != layout[k]:
                return 0
            in_number = False
    return n + 1


ISO_LAYOUT = np.array([0, 0, 0, 0, DASH, 0, 0, DASH, 0, 0, C_T, 0, 0, COLON, 0, 0, COLON, 0, 0], np.uint8)


@njit(cache=True, nogil=True)
def _iso_exact(b, i, j, f):
    """iso_ns of an RFC 5424 stamp that names its offset (Z, +HH:MM, +HHMM), else -1 (f: scratch)."""
    if j - i < 20 or _fixed(b, i, ISO_LAYOUT, f) != 6:
        return -1
    y, mo, d, hh, mi, ss = f[0], f[1], f[2], f[3], f[4], f[5]
    if not (1971 <= y <= 2200 and 1 <= mo <= 12 and 1 <= d <= _month_days(y, mo) and hh <= 23 and mi <= 59
            and ss <= 59):
        return -1
    k = i + 19
    micro = 0
    if b[k] == DOT:
        k += 1
        digits = 0
        while k < j and _digit(b[k]):
            if digits < 6:
                micro = micro * 10 + b[k] - 48
            digits += 1
            k += 1
        if digits == 0:
            return -1
        for _ in range(digits, 6):
            micro *= 10
    offset = 0
    if k + 1 == j and b[k] == C_Z:
        offset = 0
    elif (j - k == 6 or j - k == 5) and (b[k] == C_PLUS or b[k] == DASH):
        oh = _number(b, k + 1, k + 3)
        om = _number(b, j - 2, j)
        if oh < 0 or om < 0 or oh > 23 or om > 59 or (j - k == 6 and b[k + 3] != COLON):
            return -1
        offset = (oh * 60 + om) * 60 * (1 if b[k] == C_PLUS else -1)
    else:
        return -1
    seconds = _days(y, mo, d) * 86400 + hh * 3600 + mi * 60 + ss - offset
    return seconds * NS + micro * 1000 if seconds > 0 else -1


@njit(cache=True, nogil=True)
def _frame(b, s, e, hdr):
    """framing.frame in bytes.  Fills hdr = [msg start, host s, host len, prog s, prog len, msgid s,
    msgid len, sd s, sd len, time kind, time ns or hour key, seconds in the hour, 'loguid:"' seen in
    the structured data]; False: defer."""
    hdr[1:13] = 0
    pos = s
    pri = False
    if b[s] == C_LT:
        k = s + 1
        while k < e and k - s <= 3 and _digit(b[k]):
            k += 1
        if k > s + 1 and k < e and b[k] == C_GT:
            pos = k + 1
            pri = True
    if pri:
        # RFC 5424: version (\d{1,2}) '1', then five single-space separated tokens, then an optional space
        k = pos
        while k < e and k - pos < 2 and _digit(b[k]):
            k += 1
        tok = hdr[16:26]
        ok = k == pos + 1 and b[pos] == C_D1 and k < e and b[k] == SPACE
        t = 0
        while ok and t < 5:
            k += 1
            end = _token_end(b, k, e)
            tok[2 * t] = k
            tok[2 * t + 1] = end
            ok = end > k and (t == 4 or end < e)
            k = end
            t += 1
        if ok:
            if k < e:
                k += 1  # the optional space after MSGID
            if tok[1] - tok[0] == 1 and b[tok[0]] == DASH:
                hdr[9] = HDR_NONE
            else:
                ns = _iso_exact(b, tok[0], tok[1], hdr[32:40])
                if ns < 0:
                    return False
                hdr[9] = HDR_EXACT
                hdr[10] = ns
            for f, slot in ((1, 1), (2, 3), (4, 5)):  # host, app-name, msgid; '-' is empty
                if not (tok[2 * f + 1] - tok[2 * f] == 1 and b[tok[2 * f]] == DASH):
                    hdr[slot] = tok[2 * f]
                    hdr[slot + 1] = tok[2 * f + 1] - tok[2 * f]
            # STRUCTURED-DATA: '-' or [..."..."...]+, then an optional space
            sd_start = k
            if k < e and b[k] == DASH:
                k += 1
            else:
                while k < e and b[k] == C_LBRACKET:
                    m = k + 1
                    closed = False
                    while m < e:
                        c = b[m]
                        if c == C_RBRACKET:
                            closed = True
                            break
                        if c == QUOTE:
                            m += 1
                            while m < e and b[m] != QUOTE:
                                if b[m] == C_l and _at(b, m, e, P_LOGUID):
                                    hdr[12] = 1
                                m += 2 if b[m] == BSLASH else 1
                            if m >= e:
                                break
                        elif c == C_l and _at(b, m, e, P_LOGUID):
                            hdr[12] = 1  # Check Point's mark, for _claimants (a superset of 'in sd')
                        m += 1
                    if not closed:
                        break
                    k = m + 1
            if k > sd_start and not (k - sd_start == 1 and b[sd_start] == DASH):
                hdr[7] = sd_start
                hdr[8] = k - sd_start
            if k > sd_start and k < e and b[k] == SPACE:
                k += 1
            hdr[0] = k
            return True
    if pos < e and _upper(b[pos]):
        return _rfc3164(b, pos, e, hdr)
    if pos + 19 <= e and _digit(b[pos]) and _fixed(b, pos, ISO_LAYOUT, hdr[32:40]) == 6:
        return False  # an ISO-8601 prefix: read by the Python framing
    hdr[0] = pos
    hdr[9] = HDR_NONE
    return True


@njit(cache=True, nogil=True)
def _rfc3164(b, pos, e, hdr):
    """'Mmm dd [yyyy] hh:mm:ss[.f][:] [host] [tag[pid]: ]' as framing._RFC3164 and _tagged read it;
    a line that is not one is framed as none (msg = the line)."""
    hdr[0] = pos
    hdr[9] = HDR_NONE
    k = pos
    if k + 4 > e or not (_lower(b[k + 1]) and _lower(b[k + 2])):
        return True
    month = 0
    for m in range(12):
        if b[k] == MONTHS[3 * m] and b[k + 1] == MONTHS[3 * m + 1] and b[k + 2] == MONTHS[3 * m + 2]:
            month = m + 1
    k += 3
    if b[k] != SPACE or month == 0:
        return True
    while k < e and b[k] == SPACE:
        k += 1
    day_start = k
    while k < e and k - day_start < 2 and _digit(b[k]):
        k += 1
    if k == day_start or k >= e or b[k] != SPACE:
        return True
    day = _number(b, day_start, k)
    year = -1
    if k + 6 < e and b[k + 5] == SPACE and _number(b, k + 1, k + 5) >= 0:
        year = _number(b, k + 1, k + 5)
        k += 5
    k += 1
    if k + 8 > e:
        return True
    clock = hdr[32:40]
    if _fixed(b, k, ISO_LAYOUT[11:], clock) != 3:
        return True
    k += 8
    if k < e and b[k] == DOT and k + 1 < e and _digit(b[k + 1]):
        k += 1
        while k < e and _digit(b[k]):
            k += 1
    if k < e and b[k] == COLON:
        k += 1
    if k >= e or b[k] != SPACE:
        return True
    while k < e and b[k] == SPACE:
        k += 1
    if clock[1] > 59 or clock[2] > 60:
        return False  # no time: the Python path decides what that means
    # host: a token not ending in ':' followed by spaces
    end = _token_end(b, k, e)
    if end > k and end < e and b[end - 1] != COLON:
        hdr[1] = k
        hdr[2] = end - k
        k = end
        while k < e and b[k] == SPACE:
            k += 1
    hdr[9] = HDR_HOUR
    hdr[10] = (((year + 1) * 13 + month) * 32 + day) * 24 + clock[0] if clock[0] < 24 else -1
    hdr[11] = clock[1] * 60 + clock[2]
    if hdr[10] < 0:
        return False
    # tag: [A-Za-z_][\w\-./]*(\[\d+\])?': '
    hdr[0] = k
    if k < e and (_upper(b[k]) or _lower(b[k]) or b[k] == 95):
        m = k + 1
        while m < e and (_word(b[m]) or b[m] == DASH or b[m] == DOT or b[m] == SLASH):
            m += 1
        tag_end = m
        if m < e and b[m] == C_LBRACKET:
            n = m + 1
            while n < e and _digit(b[n]):
                n += 1
            if n > m + 1 and n < e and b[n] == C_RBRACKET:
                m = n + 1
        if m + 1 < e and b[m] == COLON and b[m + 1] == SPACE:
            hdr[3] = k
            hdr[4] = tag_end - k
            hdr[0] = m + 2
    return True


@njit(cache=True, nogil=True)
def _panos_shaped(b, ms, e):
    """panos._HEAD would match: 'd,<0-40>,<0-40>,[A-Z]{3,14},'."""
    if not (ms + 1 < e and _digit(b[ms]) and b[ms + 1] == COMMA):
        return False
    k = ms + 2
    for _ in range(2):
        start = k
        while k < e and b[k] != COMMA:
            k += 1
        if k >= e or k - start > 40:
            return False
        k += 1
    start = k
    while k < e and _upper(b[k]):
        k += 1
    return 3 <= k - start <= 14 and k < e and b[k] == COMMA


@njit(cache=True, nogil=True)
def _claimants(b, ms, e, hdr):
    """Bit set (B_*) of the vendors whose parse could claim the message: a superset, from each
    decoder's first test."""
    prog, plen = hdr[3], hdr[4]
    bits = 0
    for k in range(ms, e):  # one pass: dispatch on the byte that starts each vendor's marker
        c = b[k]
        if c == SPACE and _at(b, k, e, P_SRC):
            bits |= B_IPTABLES
        elif c == C_PERCENT and (_at(b, k, e, P_ASA) or _at(b, k, e, P_FTD)):
            bits |= B_CISCO_ASA
        elif c == C_l and _at(b, k, e, P_LOGID):
            bits |= B_FORTIGATE
        elif c == C_R and _at(b, k, e, P_RT):
            bits |= B_JUNIPER_SRX
        elif (c == C_l and _at(b, k, e, P_LOGUID)) or (c == C_BAR and _at(b, k, e, P_PRODUCT)):
            bits |= B_CHECKPOINT
        elif c == COLON and _at(b, k, e, P_MT_IN):
            bits |= B_MIKROTIK
    first = b[ms] if ms < e else 0
    if _digit(first) or first == COMMA or _is(b, prog, prog + plen, P_FILTERLOG):
        bits |= B_PFSENSE
    if _panos_shaped(b, ms, e):
        bits |= B_PANOS
    if plen >= 3 and _at(b, prog, prog + plen, P_RT):
        bits |= B_JUNIPER_SRX
    if _is(b, prog, prog + plen, P_CHECKPOINT) or \
            hdr[12] == 1:
        bits |= B_CHECKPOINT
    topics = False
    if _lower(first):
        k = ms
        while k < e and b[k] != SPACE:
            if b[k] == COMMA:
                topics = True
            k += 1
    if topics or _at(b, ms, e, P_MT_START):
        bits |= B_MIKROTIK
    k = ms
    while k < e and b[k] == SPACE:
        k += 1
    if k < e and b[k] == C_LBRACE:
        bits |= B_ULOGD_JSON
    return bits


@njit(cache=True, nogil=True)
def _iptables(b, ms, e, hdr, row, spans, nums):
    """iptables.parse's lexing: SRC, DST, PROTO, SPT/DPT and TYPE/CODE values, the prefix before IN=."""
    first = hdr[40:48]  # first ' KEY=' of SRC DST PROTO SPT DPT TYPE CODE, and IN=
    first[:] = -1
    for k in range(ms, e):  # one pass: iptables._field takes the first occurrence of each
        c = b[k]
        if c == SPACE:
            for slot in range(7):
                if first[slot] < 0 and _at_row(b, k, e, IPT_KEYS, slot, IPT_KEY_LEN[slot]):
                    first[slot] = k + IPT_KEY_LEN[slot]
                    break
        elif c == C_I and first[7] < 0 and _at(b, k, e, P_IN):
            first[7] = k
    src = _ipv4(b, first[0], _token_end(b, first[0], e))
    dst = _ipv4(b, first[1], _token_end(b, first[1], e)) if first[1] >= 0 else -1
    if src < 0 or dst < 0 or first[7] < 0:
        return False
    spans[row, 2, 0] = ms
    spans[row, 2, 1] = first[7] - ms
    if first[2] >= 0:
        spans[row, 3, 0] = first[2]
        spans[row, 3, 1] = _token_end(b, first[2], e) - first[2]
    nums[row, 0] = src
    nums[row, 1] = dst
    for slot in range(3, 7):
        at = first[slot]
        nums[row, slot - 1] = 0 if at < 0 else _port(b, at, _token_end(b, at, e))
    return True


@njit(cache=True, nogil=True)
def _ip_run(b, i, e):
    """End of ASA's address pattern [0-9A-Fa-f.:]*[0-9A-Fa-f] at i when it is a plain dotted quad
    followed by '/', else -1."""
    k = i
    while k < e and (_digit(b[k]) or b[k] == DOT):
        k += 1
    if k == i or k >= e or b[k] != SLASH or not _digit(b[k - 1]):
        return -1
    return k


@njit(cache=True, nogil=True)
def _asa_endpoint(b, i, e, row, nums, slot):
    """'ifname:A.B.C.D/port' at i (interface up to the first ':'); returns the end or -1."""
    if i >= e or b[i] == COLON or b[i] == SPACE:
        return -1
    k = i
    while k < e and b[k] != COLON:
        k += 1
    if k >= e:
        return -1
    end = _ip_run(b, k + 1, e)
    if end < 0:
        return -1
    nums[row, slot] = _ipv4(b, k + 1, end)
    k = end + 1
    while k < e and _digit(b[k]):
        k += 1
    nums[row, slot + 2] = _port(b, end + 1, k)
    if nums[row, slot] < 0 or k == end + 1 or nums[row, slot + 2] < 0:
        return -1
    return k


@njit(cache=True, nogil=True)
def _cisco_asa(b, ms, e, row, spans, nums, src_dst_ids, other_ids):
    """cisco_asa.parse for the 'Deny <proto> src if:A/p dst if:B/p ...' ids (106010/106014/106023)
    and the skipped ids; the message id's span goes to the outcome function."""
    tag = -1
    k = ms
    while k < e:  # _TAG.search: the first '%ASA-' / '%FTD-' where the whole tag matches
        if b[k] == C_PERCENT and (_at(b, k, e, P_ASA) or _at(b, k, e, P_FTD)):
            m = k + 5
            while m < e and _lower(b[m]):
                m += 1
            m = m + 1 if m > k + 5 and m < e and b[m] == DASH else k + 5  # optional '[a-z]+-'
            if m + 8 <= e and _digit(b[m]) and b[m + 1] == DASH and _number(b, m + 2, m + 8) >= 0:
                tag = m + 2
                break
        k += 1
    if tag < 0:
        return False
    spans[row, 2, 0] = k
    spans[row, 2, 1] = tag + 6 - k
    msgid = _number(b, tag, tag + 6)
    body = tag + 6
    if body < e and b[body] == COLON:
        body += 1
    if body < e and b[body] == SPACE:
        body += 1
    for i in range(other_ids.size):
        if other_ids[i] == msgid:
            return False
    known = False
    for i in range(src_dst_ids.size):
        known = known or src_dst_ids[i] == msgid
    if not known:
        nums[row, 6] = 0
        return True  # a skipped id: no fields
    if not _at(b, body, e, P_DENY):
        return False
    k = body + 5
    w = k
    while k < e and _word(b[k]):
        k += 1
    if k == w or _is(b, w, k, P_INBOUND) or _is(b, w, k, P_PROTOCOL):
        return False
    spans[row, 3, 0] = w
    spans[row, 3, 1] = k - w
    if not _at(b, k, e, P_SRC_W):
        return False
    k = _asa_endpoint(b, k + 5, e, row, nums, 0)
    if k < 0 or not _at(b, k, e, P_DST_W):
        return False
    k = _asa_endpoint(b, k + 5, e, row, nums, 1)
    if k < 0 or _find(b, k, e, P_TYPE_W) >= 0:
        return False
    at = _find(b, k, e, P_ACL)
    if at >= 0:
        close = _find(b, at + P_ACL.size, e, P_ACL[-1:])
        if close >= 0:
            spans[row, 4, 0] = at + P_ACL.size
            spans[row, 4, 1] = close - at - P_ACL.size
    return True


@njit(cache=True, nogil=True)
def _pfsense(b, ms, e, hdr, row, spans, nums):
    """pfsense.parse for IPv4 filterlog CSV: fields 0 3 6 15 18 19 20 21."""
    comma = hdr[48:70]  # field i is b[start(i):comma[i]], the last one ends at e
    n = 0
    for k in range(ms, e):
        if b[k] == COMMA:
            comma[n] = k
            n += 1
            if n == 22:
                break
    if n < 19:
        return False
    fields = n + 1  # (at least, when capped)
    start = hdr[70:93]
    start[0] = ms
    start[1:n + 1] = comma[:n] + 1
    end = hdr[93:116]
    end[:n] = comma[:n]
    end[n] = e
    for i in (0, 1):
        for k in range(start[i], end[i]):
            if not _digit(b[k]):
                return False
    if end[6] == start[6]:
        return False
    for k in range(start[6], end[6]):
        if not (_lower(b[k]) or b[k] == DASH):
            return False
    if not (_is(b, start[7], end[7], P_IN_WORD) or _is(b, start[7], end[7], P_OUT_WORD)) or \
            not _is(b, start[8], end[8], P_FOUR):
        return False
    for slot, i in ((1, 6), (2, 15), (3, 3), (4, 0)):  # action, protocol id, tracker, rule number
        spans[row, slot, 0] = start[i]
        spans[row, slot, 1] = end[i] - start[i]
    nums[row, 0] = _ipv4(b, start[18], end[18])
    nums[row, 1] = _ipv4(b, start[19], end[19])
    if nums[row, 0] < 0 or nums[row, 1] < 0:
        return False
    if fields > 20 and not _in(_number(b, start[15], end[15]), PFSENSE_PORTED):
        spans[row, 5, 0] = start[20]
        spans[row, 5, 1] = end[20] - start[20]  # the ICMP type word
    if fields > 21:
        nums[row, 2] = _port(b, start[20], end[20])
        nums[row, 3] = _port(b, start[21], end[21])
    else:
        nums[row, 2] = -1  # 'missing ports' when the protocol wants them
    return True


@njit(cache=True, nogil=True)
def _juniper_srx(b, ms, e, hdr, row, spans, nums):
    """juniper_srx.parse for structured RT_FLOW lines: the event is the MSGID, fields are SD-PARAMs
    (the last of a repeated name wins, as dict(findall) has it)."""
    if hdr[6] == 0 or hdr[8] == 0 or not (hdr[4] >= 3 and _at(b, hdr[3], hdr[3] + hdr[4], P_RT)):
        return False  # the event is the MSGID of an RT_* app; the plain-text form goes to Python
    spans[row, 1, 0] = hdr[5]
    spans[row, 1, 1] = hdr[6]
    src = dst = -1
    sport = dport = 0
    k, e2 = hdr[7], hdr[7] + hdr[8]
    while k < e2:
        if not (_word(b[k]) or b[k] == DASH):
            k += 1
            continue
        m = k
        while m < e2 and (_word(b[m]) or b[m] == DASH):
            m += 1
        if not (m + 1 < e2 and b[m] == C_EQ and b[m + 1] == QUOTE):
            k = m
            continue
        v = m + 2
        close = v
        while close < e2 and b[close] != QUOTE:
            close += 1
        if close >= e2:
            k = m
            continue
        i = _key_index(b, k, m, SRX_KEYS, SRX_KEY_LEN)
        if i == 0:
            src = _ipv4(b, v, close)
        elif i == 1:
            dst = _ipv4(b, v, close)
        elif i == 2:
            sport = _port(b, v, close)
        elif i == 3:
            dport = _port(b, v, close)
        elif i > 3:  # protocol-id, policy-name, reason, icmp-type: words 2-5
            spans[row, i - 2, 0] = v
            spans[row, i - 2, 1] = close - v
        k = close + 1
    nums[row, 0] = src
    nums[row, 1] = dst
    nums[row, 2] = sport
    nums[row, 3] = dport
    nums[row, 6] = 1 if src >= 0 and dst >= 0 else 0  # fields usable (a skipped event needs none)
    return True


@njit(cache=True, nogil=True)
def _key_index(b, k, m, keys, lens):
    for i in range(lens.size):
        if m - k == lens[i] and _at_row(b, k, m, keys, i, lens[i]):
            return i
    return -1


@njit(cache=True, nogil=True)
def _fortigate(b, ms, e, hdr, row, spans, nums):
    """fortigate.parse's lexing: the logid claim, every action=/status= word, and the key=value
    pairs as _PAIR.findall splits them (quoted values whole, the last of a repeated key wins)."""
    k = _find(b, ms, e, P_LOGID)
    while k >= 0:  # _LOGID: a 'logid=' after no word character, then an optional quote and a digit
        v = k + 6 + (k + 6 < e and b[k + 6] == QUOTE)
        if (k == ms or not _word(b[k - 1])) and v < e and _digit(b[v]):
            break
        k = _find(b, k + 1, e, P_LOGID)
    if k < 0:
        return False
    verdicts = 0
    for k in range(ms, e):
        if b[k] == SPACE and (_at(b, k + 1, e, P_ACTION_EQ) or _at(b, k + 1, e, P_STATUS_EQ)):
            v = k + 8 + (k + 8 < e and b[k + 8] == QUOTE)
            m = v
            while m < e and (_word(b[m]) or b[m] == DASH):
                m += 1
            if m > v:
                if verdicts == 2:
                    return False
                spans[row, 10 + verdicts, 0] = v
                spans[row, 10 + verdicts, 1] = m - v
                verdicts += 1
    line = hdr[40:56]  # start, end of each FG_LINE value, -1: absent
    line[:] = -1
    key = ms
    while key < e:
        if not _word(b[key]):
            key += 1
            continue
        m = key
        while m < e and _word(b[m]):
            m += 1
        if m >= e or b[m] != C_EQ:
            key = m
            continue
        v = m + 1
        if v < e and b[v] == QUOTE:
            q = v + 1
            while q < e and b[q] != QUOTE:
                q += 2 if b[q] == BSLASH else 1
            if q >= e:
                return False  # unterminated: _PAIR's \S* alternative keeps the quote
            start, end, nxt = v + 1, q, q + 1
        else:
            start = v
            end = nxt = _token_end(b, v, e)
        i = _key_index(b, key, m, FG_KEYS, FG_KEY_LEN)
        if 0 <= i < FG_WORD_COUNT:
            spans[row, 1 + i, 0] = start
            spans[row, 1 + i, 1] = end - start
        elif i >= 0:
            line[2 * (i - FG_WORD_COUNT)] = start
            line[2 * (i - FG_WORD_COUNT) + 1] = end
        key = nxt
    src, dst, sport, dport, epoch, date, clock, tz = 0, 2, 4, 6, 8, 10, 12, 14  # offsets into line
    if line[tz] >= 0:
        return False  # a zoned local time: left to Python
    nums[row, 0] = _ipv4(b, line[src], line[src + 1]) if line[src] >= 0 else -1
    nums[row, 1] = _ipv4(b, line[dst], line[dst + 1]) if line[dst] >= 0 else -1
    nums[row, 2] = _port(b, line[sport], line[sport + 1]) if line[sport] >= 0 else 0
    nums[row, 3] = _port(b, line[dport], line[dport + 1]) if line[dport] >= 0 else 0
    nums[row, 6] = nums[row, 0] >= 0 and nums[row, 1] >= 0  # a skipped line needs no fields
    n = digits = 0
    for k in range(line[epoch], line[epoch + 1] if line[epoch] >= 0 else line[epoch]):
        if not _digit(b[k]):
            digits = 0
            break
        n = n * 10 + b[k] - 48
        digits += 1
    if digits > 18:
        return False  # beyond int64 nanoseconds: left to Python
    if digits:  # epoch_ns: a decimal eventtime wins over date/time
        nums[row, 7] = OWN_EPOCH
        nums[row, 8] = n
    elif line[date] >= 0 and line[clock] >= 0:
        d, t = hdr[56:64], hdr[64:72]
        if line[date + 1] - line[date] != DATE_LAYOUT.size or line[clock + 1] - line[clock] != 8 or \
                _fixed(b, line[date], DATE_LAYOUT, d) != 3 or _fixed(b, line[clock], ISO_LAYOUT[11:], t) != 3 or \
                t[0] > 23 or t[1] > 59 or t[2] > 59:
            return False
        nums[row, 7] = OWN_LOCAL
        nums[row, 8] = (((d[0] + 1) * 13 + d[1]) * 32 + d[2]) * 24 + t[0] if d[1] <= 12 and d[2] <= 31 else -1
        nums[row, 9] = t[1] * 60 + t[2]
        if nums[row, 8] < 0:
            return False
    return True


@njit(cache=True, nogil=True)
def _mix(h, v):
    h ^= v + GOLDEN + (h << np.uint64(6)) + (h >> np.uint64(2))
    return h * MULTIPLIER


@njit(cache=True, nogil=True)
def scan(b, starts, ends, kinds, lo, hi, src_dst_ids, other_asa_ids,
         status, vendor, tkind, tval, tsec, nums, spans, key):
    """One pass over the lines lo..hi-1, b[starts[i]:ends[i]] (newline excluded), filling per line:
    status, vendor, framing time (kind, value, seconds), numbers (see NUMS), word spans
    [NSPAN, (start, len)] and a hash of the vendor and its words."""
    hdr = np.zeros(128, np.int64)  # the framing's answer in [:13], the rest scratch for the lexers
    for i in range(lo, hi):
        s, e = starts[i], ends[i]
        if kinds[i] != PLAIN:
            status[i] = BLANK if kinds[i] == BLANK else DEFER
            continue
        if b[s] == C_LBRACE or not _frame(b, s, e, hdr):
            continue
        ms = hdr[0]
        bits = _claimants(b, ms, e, hdr)
        nums[i, 6] = 1  # fields usable, unless the lexer says otherwise
        if bits == B_IPTABLES:
            ok = _iptables(b, ms, e, hdr, i, spans, nums)
            vendor[i] = IPTABLES
            spans[i, 1, 0] = hdr[3]
            spans[i, 1, 1] = hdr[4]
        elif bits == B_CISCO_ASA:
            ok = _cisco_asa(b, ms, e, i, spans, nums, src_dst_ids, other_asa_ids)
            vendor[i] = CISCO_ASA
        elif bits == B_PFSENSE:
            ok = _pfsense(b, ms, e, hdr, i, spans, nums)
            vendor[i] = PFSENSE
        elif bits == B_JUNIPER_SRX:
            ok = _juniper_srx(b, ms, e, hdr, i, spans, nums)
            vendor[i] = JUNIPER_SRX
        elif bits == B_FORTIGATE:
            ok = _fortigate(b, ms, e, hdr, i, spans, nums)
            vendor[i] = FORTIGATE
        else:
            ok = False
        if not ok:
            continue
        status[i] = FAST
        tkind[i] = hdr[9]
        tval[i] = hdr[10]
        tsec[i] = hdr[11]
        spans[i, 0, 0] = hdr[1]
        spans[i, 0, 1] = hdr[2]
        h = np.uint64(vendor[i]) + np.uint64(1)
        for w in range(NSPAN):
            a, ln = spans[i, w, 0], spans[i, w, 1]
            h = _mix(h, np.uint64(ln + 2))
            for k in range(a, a + max(ln, 0)):
                h = _mix(h, np.uint64(b[k]))
        key[i] = h


@njit(cache=True, nogil=True)
def line_bounds(b, lo, hi):
    """The lines of b[lo:hi] (lo at a line start): starts, ends (newline and the CRs before it
    excluded; a last line without a newline counts), a kind per line (PLAIN, BLANK: spaces only,
    ODD: other bytes than printable ASCII), and whether a CR stands alone (not before a newline:
    text mode would end a line there)."""
    count = 0
    for k in range(lo, hi):
        count += b[k] == 10
    last = hi > lo and b[hi - 1] != 10
    starts = np.empty(count + last, np.int64)
    ends = np.empty(count + last, np.int64)
    kinds = np.empty(count + last, np.uint8)
    n = 0
    start = lo
    kind = BLANK
    lone_cr = False
    for k in range(lo, hi):
        c = b[k]
        if c == 10:
            end = k
            while end > start and b[end - 1] == 13:
                end -= 1
            starts[n], ends[n], kinds[n] = start, end, kind
            n += 1
            start = k + 1
            kind = BLANK
        elif c < 32 or c > 126:
            if c == 13 and (k + 1 == hi or b[k + 1] != 10):
                lone_cr = True
            kind = ODD if c != 13 or kind == ODD else kind
        elif c != SPACE and kind == BLANK:
            kind = PLAIN
    if last:
        starts[n], ends[n], kinds[n] = start, hi, kind
    return starts, ends, kinds, lone_cr


@njit(cache=True, nogil=True)
def same_words(b, spans, rows, reps):
    """For each row, whether its words equal those of its representative row (a hash collision
    check: a row that differs is deferred)."""
    out = np.ones(rows.size, np.bool_)
    for i in range(rows.size):
        r, q = rows[i], reps[i]
        for w in range(NSPAN):
            a, ln = spans[r, w, 0], spans[r, w, 1]
            c, lq = spans[q, w, 0], spans[q, w, 1]
            if ln != lq:
                out[i] = False
                break
            for k in range(max(ln, 0)):
                if b[a + k] != b[c + k]:
                    out[i] = False
                    break
    return out


# ---- Python side: what the words mean, once per distinct tuple of them ------------------------

SKIPPED, DENIED = 1, 2  # what a distinct word tuple means (else DEFER)
PAIR_A, PAIR_B = 0, 1  # ports from the line: SPT/DPT-like pair, TYPE/CODE pair; else a fixed (sport, dport)
_ACTION_INDEX = {a: i for i, a in enumerate(ACTIONS)}


# Each returns a Skip, None (leave the line to Python), or what a deny line means:
# (proto, action, rule, ports: PAIR_A | PAIR_B | (sport, dport), own time in ns or None, device or "")

def _iptables_meaning(w):
    got = iptables.verdict(w[2] or "", w[3], Header(host=w[0], program=w[1] or ""))
    if not isinstance(got, tuple):
        return got
    proto, rule, ts, action = got
    return proto, action, rule, PAIR_B if iptables.port_keys(proto) == iptables.ICMP_KEYS else PAIR_A, ts, ""


def _cisco_asa_meaning(w):
    family, msgid = cisco_asa.TAG.match(w[2]).groups()
    if msgid not in cisco_asa.SRC_DST_IDS:
        return cisco_asa.NOT_A_DENY  # the kernel defers the other deny ids
    proto = cisco_asa.protocol(w[3])
    return None if proto is None else (proto, "deny", cisco_asa.rule(w[4], family, msgid), PAIR_A, None, "")


def _pfsense_meaning(w):
    action = pfsense.DENY_ACTIONS.get(w[1])
    if action is None:
        return Skip(w[1])
    proto = proto_number(w[2])
    if proto is None:
        return None
    ports = PAIR_A if proto in pfsense.PORTED else pfsense.icmp_ports(proto, [] if w[5] is None else [w[5]])
    return proto, action, pfsense.rule(w[3], w[4]), ports, None, ""


def _juniper_srx_meaning(w):
    skip = juniper_srx.skip_of(w[1])
    if skip is not None:
        return skip
    got = juniper_srx.verdict(w[2] or "", w[5] or "", w[4] or "")
    if got is None or (got[1] is not None and got[1][0] is None):
        return None
    proto, icmp, action = got
    return proto, action, w[3] or "", icmp or PAIR_A, None, ""


_FG_STAND_IN = {"srcip": "198.18.0.1", "dstip": "198.18.0.1", "srcport": "0", "dstport": "0"}  # per-line values


def _fortigate_meaning(w):
    if not fortigate.any_deny([v for v in w[10:12] if v is not None]):
        return fortigate.NOT_A_DENY
    got = fortigate.decide({**{k: v for k, v in zip(FG_WORDS, w[1:10]) if v is not None}, **_FG_STAND_IN})
    if not isinstance(got, Deny):
        return got if isinstance(got, Skip) else None
    ports = (got.sport, got.dport) if got.proto in fortigate.ICMP_PROTOS else PAIR_A
    return got.proto, got.action, got.rule, ports, None, got.device


VENDORS = ((iptables, _iptables_meaning), (cisco_asa, _cisco_asa_meaning), (pfsense, _pfsense_meaning),
           (juniper_srx, _juniper_srx_meaning), (fortigate, _fortigate_meaning))  # by vendor code
THREADS = min(os.cpu_count() or 1, 8)


def _new_pool():
    global _POOL
    _POOL = ThreadPoolExecutor(THREADS, thread_name_prefix="denylog-scan")


_new_pool()
os.register_at_fork(after_in_child=_new_pool)  # a forked child has none of the parent's threads
MIN_LINES_PER_THREAD = 20_000
MIN_BYTES_PER_THREAD = 4 << 20
_ASA_SRC_DST = np.array([int(k) for k in cisco_asa.SRC_DST_IDS], np.int64)
_ASA_OTHER = np.array([int(k) for k in (*cisco_asa.DENY_IDS, *cisco_asa.CONNECTION_EVENTS)
                       if k not in cisco_asa.SRC_DST_IDS], np.int64)


@dataclass
class Block:
    """What the fast path made of a block of lines (indices are 0-based line numbers in the block)."""
    blank: int
    defer: np.ndarray              # lines for the Python decoders, in order
    rows: np.ndarray               # DENY rows, line_no 1-based in the block, source unset
    text: dict                     # vendor, device, rule: object arrays aligned with rows
    skips: list                    # (first line, vendor, reason, count), by first line
    claimed: np.ndarray            # lines the fast path finished (deny or skip) ...
    claimed_vendor: np.ndarray     # ... and their vendor codes
    parsed: dict                   # vendor name -> DENY rows


def _words(buf: np.ndarray, spans: np.ndarray) -> list:
    return [None if n < 0 else buf[a:a + n].tobytes().decode("ascii") for a, n in spans]


def lines(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """line_bounds over the whole block, a part per core."""
    parts = max(1, min(THREADS, buf.size // MIN_BYTES_PER_THREAD))
    cuts = [0]
    for k in range(1, parts):
        cut = buf.size * k // parts
        newline = np.flatnonzero(buf[cut:cut + (1 << 20)] == 10)
        if newline.size and cut + int(newline[0]) + 1 > cuts[-1]:
            cuts.append(cut + int(newline[0]) + 1)
    cuts.append(buf.size)
    found = [job.result() for job in [_POOL.submit(line_bounds, buf, lo, hi) for lo, hi in pairwise(cuts)]]
    return (*(np.concatenate([f[k] for f in found]) for k in range(3)), any(f[3] for f in found))


def _scan(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, kinds: np.ndarray) -> tuple:
    """scan() over all lines, a part per core (the kernel releases the GIL)."""
    n = len(starts)
    out = (np.zeros(n, np.uint8), np.zeros(n, np.uint8), np.zeros(n, np.uint8), np.zeros(n, np.int64),
           np.zeros(n, np.int32), np.zeros((n, NUMS), np.int64), np.full((n, NSPAN, 2), -1, np.int32),
           np.zeros(n, np.uint64))
    parts = max(1, min(THREADS, n // MIN_LINES_PER_THREAD))
    cuts = [n * k // parts for k in range(parts + 1)]
    jobs = [_POOL.submit(scan, buf, starts, ends, kinds, lo, hi, _ASA_SRC_DST, _ASA_OTHER, *out)
            for lo, hi in pairwise(cuts)]
    for job in jobs:
        job.result()
    return out


def parse_block(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, kinds: np.ndarray, ctx,
                allowed: set[str]) -> Block:
    """The fast path over the lines of a block (uint8 array, lines from lines()); ``allowed``: the
    vendor names tried."""
    status, vendor, tkind, tval, tsec, nums, spans, key = _scan(buf, starts, ends, kinds)
    for code, (module, _) in enumerate(VENDORS):
        if module.NAME not in allowed:
            status[(status == FAST) & (vendor == code)] = DEFER
    fast = np.flatnonzero(status == FAST)
    _, first, inverse = np.unique(key[fast], return_index=True, return_inverse=True)
    reps = fast[first]
    status[fast[~same_words(buf, spans, fast, reps[inverse])]] = DEFER

    # the meaning of each distinct word tuple
    m = len(reps)
    kind = np.zeros(m, np.uint8)  # DEFER, SKIPPED or DENIED
    proto, action, mode, fixed_s, fixed_d = (np.zeros(m, np.int64) for _ in range(5))
    own_ts = np.full(m, -1, np.int64)
    rules, devices, reasons = [None] * m, [None] * m, [None] * m
    for u, r in enumerate(reps):
        meaning = VENDORS[vendor[r]][1](_words(buf, spans[r]))
        if isinstance(meaning, Skip):
            kind[u], reasons[u] = SKIPPED, meaning.reason
        elif isinstance(meaning, tuple):
            kind[u] = DENIED
            proto[u], act, rules[u], ports, ts, device = meaning
            action[u] = _ACTION_INDEX[act]
            devices[u] = device or _words(buf, spans[r][:1])[0]
            if isinstance(ports, tuple):
                mode[u], (fixed_s[u], fixed_d[u]) = 2, ports
            else:
                mode[u] = ports
            own_ts[u] = -1 if ts is None else ts

    row_kind = np.where(status[fast] == FAST, kind[inverse], DEFER)
    deny = row_kind == DENIED
    u = inverse[deny]
    r = fast[deny]
    sport = np.select([mode[u] == PAIR_A, mode[u] == PAIR_B], [nums[r, 2], nums[r, 4]], fixed_s[u])
    dport = np.select([mode[u] == PAIR_A, mode[u] == PAIR_B], [nums[r, 3], nums[r, 5]], fixed_d[u])
    ts = _times(ctx, own_ts[u], nums[r], tkind[r], tval[r], tsec[r])
    good = (sport >= 0) & (dport >= 0) & (nums[r, 6] == 1) & (ts >= 0)
    row_kind[np.flatnonzero(deny)[~good]] = DEFER
    status[fast[row_kind == DEFER]] = DEFER

    r, u = r[good], u[good]
    rows = DENY.empty(len(r))
    rows["ts"] = ts[good]
    rows["src_lo"] = V4_MAPPED | nums[r, 0].astype(np.uint64)
    rows["dst_lo"] = V4_MAPPED | nums[r, 1].astype(np.uint64)
    rows["sport"], rows["dport"] = sport[good], dport[good]
    rows["proto"], rows["action"] = proto[u], action[u]
    rows["line_no"] = r + 1
    names = np.array([module.NAME for module, _ in VENDORS], object)
    text = {"vendor": names[vendor[r]], "device": np.array(devices, object)[u], "rule": np.array(rules, object)[u]}

    skip = row_kind == SKIPPED
    first_at = np.full(m, len(starts), np.int64)
    np.minimum.at(first_at, inverse[skip], fast[skip])
    counts = np.bincount(inverse[skip], minlength=m)
    groups = {}
    for u_skip in np.flatnonzero(counts):
        group = (names[vendor[reps[u_skip]]], reasons[u_skip])
        at, count = groups.get(group, (len(starts), 0))
        groups[group] = (min(at, int(first_at[u_skip])), count + int(counts[u_skip]))
    skips = sorted((at, name, reason, count) for (name, reason), (at, count) in groups.items())
    claimed = np.flatnonzero(status == FAST)
    parsed = {str(names[c]): int(n) for c, n in enumerate(np.bincount(vendor[r], minlength=len(names))) if n}
    return Block(int((status == BLANK).sum()), np.flatnonzero(status == DEFER), rows, text, skips,
                 claimed, vendor[claimed], parsed)


def _times(ctx, meant: np.ndarray, nums: np.ndarray, hdr_kind: np.ndarray, hdr_value: np.ndarray,
           hdr_seconds: np.ndarray) -> np.ndarray:
    """Each deny's time as the reader picks it: the decoder's own (Proxmox time from the prefix,
    FortiGate eventtime), else the framing's, else the message's local date/time; -1: none."""
    ts = meant.copy()
    epoch = (ts < 0) & (nums[:, 7] == OWN_EPOCH)
    n = nums[epoch, 8]
    scale = np.select([n < limit for limit, _ in fortigate.EPOCH_SCALES], [s for _, s in fortigate.EPOCH_SCALES], 0)
    fits = (scale > 0) & (n <= np.iinfo(np.int64).max // np.maximum(scale, 1))
    ts[epoch] = np.where(fits, n * scale, -1)
    open_ = ts < 0
    open_[np.flatnonzero(epoch)[~fits]] = False  # an eventtime out of range: left to Python
    exact = open_ & (hdr_kind == HDR_EXACT)
    ts[exact] = hdr_value[exact]
    hourly = open_ & (hdr_kind == HDR_HOUR)
    ts[hourly] = _by_hour(hdr_value[hourly], hdr_seconds[hourly], ctx.hour_ns)
    local = open_ & (hdr_kind == HDR_NONE) & (nums[:, 7] == OWN_LOCAL)
    ts[local] = _by_hour(nums[local, 8], nums[local, 9], lambda *hour: _local_hour(ctx.tz, *hour))
    return ts


def _by_hour(keys: np.ndarray, seconds: np.ndarray, hour_ns) -> np.ndarray:
    """Epoch ns of kernel hour keys ((year + 1, month, day, hour) packed; year 0: none) plus
    seconds, asking hour_ns(year, month, day, hour) once per distinct hour; -1 where it gives None."""
    hours, back = np.unique(keys, return_inverse=True)
    starts = np.empty(len(hours), np.int64)
    for i, key in enumerate(hours.tolist()):
        key, hour = divmod(key, 24)
        key, day = divmod(key, 32)
        year, month = divmod(key, 13)
        ns = hour_ns(year - 1 if year else None, month, day, hour)
        starts[i] = -1 if ns is None else ns
    start = starts[back]
    return np.where(start >= 0, start + seconds.astype(np.int64) * NS, -1)


def _local_hour(tz: str, year: int, month: int, day: int, hour: int) -> int | None:
    """iso_ns of that hour's start in ``tz`` when every second of the hour keeps one UTC offset
    (then start + seconds is what iso_ns gives each stamp); None otherwise (a DST change)."""
    stamp = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:"
    start, end = iso_ns(stamp + "00:00", tz), iso_ns(stamp + "59:59", tz)
    return start if start is not None and end == start + 3599 * NS else None
