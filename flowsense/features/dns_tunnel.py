"""DNS tunnel features: per (client, registered domain, window) aggregates of the query names.

One Numba call per decoded batch walks the DNS rows (port 53, opcode QUERY, a non-empty first
question name; names are raw label bytes in the batch blob, see ``flowsense.decode.dns``):

* **Registered domain** by the Public Suffix List shipped offline in the ``publicsuffixlist``
  package (MPL-2.0), evaluated inside the kernel: every rule is hashed once into an
  open-addressing table, and a name's suffixes are hashed right to left and looked up the way
  ``PublicSuffixList.privatesuffix`` does (exception > wildcard > exact, longest first; an unknown
  TLD counts as a one-label public suffix, so "pirate.sea" or "foo.local" fall back to the last
  two labels; a name that is itself a public suffix or a single label is its own domain).
  dnscat2's *direct* mode has no domain ("dnscat.<hex>.<hex>"): a name with an unknown TLD whose
  first label is ``dnscat`` or whose last label is at least ``DIRECT_TLD_LEN`` long is grouped
  under one pseudo-domain per (client, server) instead.  Python only sees each distinct registered
  domain once (to keep its text), never a name per packet.
* **Per distinct subdomain** (the labels left of the registered domain; the whole name in direct
  mode), found with a hash set of 64-bit (key serial, subdomain hash) values: its length (summed:
  the information content of the queries, Paxson et al. 2013), the longest label, the first label,
  the name length, Shannon entropy of its characters (dots excluded) and its charset class
  (hex, base32, base64-ish, binary, plain; case mixing counts only within a label, and not at all
  when the registered domain is itself mixed case: DNS 0x20 randomisation).  Reverse-lookup names
  (``*.arpa``) are always "plain" and never "long": nibble PTR names would otherwise look like hex.
* **Per key**: queries and responses, qtype mix (A/AAAA, TXT, NULL, CNAME, MX, ANY, other) for
  each direction, NXDOMAIN answers, responses over the large-response size, the largest
  response, TCP rows, the first and last row and query times, and up to ``SERVER_SLOTS`` servers
  with their row counts.

A key is (client, domain hash, server when direct, window index); the client is the query's
source (a response's destination).  When the batch clock enters a new window the earlier windows
are closed: their rows leave the table (the table and the subdomain set are rebuilt from what
stays open), and only records with some tunnel signal are kept (``keep_mask``).  When the table or
the set fills inside one window, everything open is closed early and the count is kept in
``stats()["early_closes"]``; the detector merges the parts of one window again (unique counts
then may count a repeated subdomain twice).  Each key tracks at most ``UNIQUE_CAP`` distinct
subdomains (more is far past every threshold); rows beyond it are counted as ``UNIQUE_SAT``.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from flowsense.flows.table import mix64

# --- columns of the per-key integer matrix ----------------------------------------------------
(C_ROWS, C_Q, C_R, C_UNIQ, C_UBYTES, C_NX, C_RLARGE, C_RMAX, C_NAME_SUM, C_NAME_MAX, C_LABEL_MAX,
 C_FIRST_MAX, C_LONG_NAME, C_LONG_FIRST, C_LONG_ANY, C_TCP, C_ENC, C_SAT, C_FIRST_TS, C_LAST_TS,
 C_QFIRST_TS, C_QLAST_TS, C_SERIAL, C_SAMPLES, C_LABEL_SUM, C_LABEL_N) = range(26)
C_QT = 26            # 7 qtype columns of queries
C_RT = C_QT + 7      # 7 qtype columns of responses
C_CS = C_RT + 7      # 5 charset columns (over distinct subdomains)
NCOL = C_CS + 5
# --- columns of the per-key float matrix ------------------------------------------------------
F_ENT_SUM, F_ENT_MAX, F_HN_SUM = range(3)
NFCOL = 3
# --- key columns (uint64) ---------------------------------------------------------------------
K_CHI, K_CLO, K_DOM, K_SHI, K_SLO, K_WIN = range(6)
NKEY = 6

QTYPE_NAMES = ("A/AAAA", "TXT", "NULL", "CNAME", "MX", "ANY", "other")
QT_ADDR, QT_TXT, QT_NULL, QT_CNAME, QT_MX, QT_ANY, QT_OTHER = range(7)
CHARSETS = ("plain", "hex", "base32", "base64", "binary")
CS_PLAIN, CS_HEX, CS_B32, CS_B64, CS_BIN = range(5)
ALPHABET = np.array([38.0, 16.0, 32.0, 64.0, 256.0])   # log2 of min(len, this) normalises entropy

LOG2 = np.log2(np.maximum(np.arange(257, dtype=np.float64), 1.0))   # names are <= 255 bytes
CLOG2C = np.arange(257, dtype=np.float64) * LOG2

SERVER_SLOTS = 4
UNIQUE_CAP = 4096
SAMPLES = 3
SAMPLE_AFTER = 8
DIRECT_TLD_LEN = 16
MAX_LABELS = 128
MAX_LOAD = 0.7                          # table and set are closed early beyond this load
PSL_EXACT, PSL_WILD, PSL_EXC = 1, 2, 4
DIRECT_HASH = np.uint64(0x0D1EC7D1EC7D1EC7)   # pseudo-domain of dnscat2 direct mode

# params vector passed to the kernel (config values, so edits need no recompile)
P_WINDOW_NS, P_LONG_NAME, P_LONG_LABEL, P_LARGE_RESP, P_ENC_MIN_LEN = range(5)
ENC_MIN_LEN = 8          # data characters a subdomain needs before its charset can say "encoded"
ENC_MIN_NORM_ENTROPY = 0.7

_FNV_OFF = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_M1 = np.uint64(0xBF58476D1CE4E5B9)  # odd multiplier that spreads the server address into the key
_SEED = np.uint64(0x9E3779B97F4A7C15)


def _fnv(label: bytes) -> int:
    h = 0xCBF29CE484222325
    for c in label.lower():
        h = ((h ^ c) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


ARPA_HASH = np.uint64(_fnv(b"arpa"))     # reverse-lookup names (in-addr.arpa, ip6.arpa)


@nb.njit(cache=True, inline="always")
def _lower(c):
    return c + 32 if 65 <= c <= 90 else c


@nb.njit(cache=True)
def _split(blob, off, n, starts, lens, lhash):
    """Labels of the dotted name blob[off:off+n]: start offsets, lengths, case-folded FNV-1a
    hashes.  Returns the label count (at most MAX_LABELS; the rest joins the last label)."""
    count = 0
    h = _FNV_OFF
    start = 0
    for j in range(n + 1):
        if j == n or (blob[off + j] == 46 and count < MAX_LABELS - 1):
            starts[count] = start
            lens[count] = j - start
            lhash[count] = h
            count += 1
            h = _FNV_OFF
            start = j + 1
        else:
            h = (h ^ np.uint64(_lower(np.int64(blob[off + j])))) * _FNV_PRIME
    return count


@nb.njit(cache=True, inline="always")
def _suffixes(lhash, count, sh):
    """sh[k] = hash of the last k labels (sh[0] = seed)."""
    h = _SEED
    sh[0] = h
    for k in range(1, count + 1):
        h = mix64(h ^ lhash[count - k])
        sh[k] = h


@nb.njit(cache=True)
def _psl_build(buf, offs, lens, kinds, keys, flags):
    """Hash every rule into the (keys, flags) table.  Returns the most labels of a rule."""
    starts = np.zeros(MAX_LABELS, np.int64)
    llen = np.zeros(MAX_LABELS, np.int64)
    lhash = np.zeros(MAX_LABELS, np.uint64)
    sh = np.zeros(MAX_LABELS + 1, np.uint64)
    mask = keys.shape[0] - 1
    most = 0
    for r in range(offs.shape[0]):
        count = _split(buf, offs[r], lens[r], starts, llen, lhash)
        _suffixes(lhash, count, sh)
        h = sh[count]
        if h == 0:
            h = np.uint64(1)
        most = max(most, count + (1 if kinds[r] == PSL_WILD else 0))
        i = np.int64(h & np.uint64(mask))
        while keys[i] != 0 and keys[i] != h:
            i = (i + 1) & mask
        keys[i] = h
        flags[i] |= kinds[r]
    return most


@nb.njit(cache=True, inline="always")
def _psl_flags(keys, flags, h):
    if h == 0:
        h = np.uint64(1)
    mask = keys.shape[0] - 1
    i = np.int64(h & np.uint64(mask))
    while keys[i] != 0:
        if keys[i] == h:
            return flags[i]
        i = (i + 1) & mask
    return 0


@nb.njit(cache=True)
def _public_len(sh, count, keys, flags, maxlabel):
    """(labels of the public suffix, known) as publicsuffixlist's _countpublic computes them."""
    if count == 1:
        return 1, _psl_flags(keys, flags, sh[1]) != 0
    top = min(count, maxlabel + 1)
    for depth in range(top, 0, -1):
        f = _psl_flags(keys, flags, sh[depth])
        if f & PSL_EXC:
            return depth - 1, True
        if f & PSL_WILD:
            return (depth + 1 if depth < count else depth), True
        if f & PSL_EXACT:
            return depth, True
    return 1, False


@nb.njit(cache=True)
def registered_spans(dns, blob, keys, flags, maxlabel, out):
    """For tests and tools: out[i] = (offset of the registered domain in the name, direct flag)."""
    starts = np.zeros(MAX_LABELS, np.int64)
    llen = np.zeros(MAX_LABELS, np.int64)
    lhash = np.zeros(MAX_LABELS, np.uint64)
    sh = np.zeros(MAX_LABELS + 1, np.uint64)
    for i in range(dns.shape[0]):
        off = np.int64(dns[i].qname_off)
        n = np.int64(dns[i].qname_len)
        count = _split(blob, off, n, starts, llen, lhash)
        _suffixes(lhash, count, sh)
        pub, known = _public_len(sh, count, keys, flags, maxlabel)
        reg = pub + 1 if count > pub else count
        out[i, 0] = starts[count - reg]
        out[i, 1] = 1 if _is_direct(blob, off, starts, llen, count, known) else 0


@nb.njit(cache=True, inline="always")
def _is_direct(blob, off, starts, llen, count, known):
    if known or count < 2:
        return False
    if llen[count - 1] >= DIRECT_TLD_LEN:
        return True
    return llen[0] == 6 and _is_dnscat(blob, off)


@nb.njit(cache=True, inline="always")
def _is_dnscat(blob, off):
    """The name starts with the label "dnscat" (6 bytes, any case)."""
    word = (100, 110, 115, 99, 97, 116)
    for j in range(6):
        if _lower(np.int64(blob[off + j])) != word[j]:
            return False
    return True


@nb.njit(cache=True, inline="always")
def _qtype_col(qtype):
    if qtype == 1 or qtype == 28:
        return QT_ADDR
    if qtype == 16:
        return QT_TXT
    if qtype == 10:
        return QT_NULL
    if qtype == 5:
        return QT_CNAME
    if qtype == 15:
        return QT_MX
    if qtype == 255:
        return QT_ANY
    return QT_OTHER


@nb.njit(cache=True)
def _mixed_case(blob, off, n):
    """Some label of blob[off:off+n] has both upper- and lower-case letters."""
    upper = lower = False
    for j in range(n):
        c = blob[off + j]
        if c == 46:
            if upper and lower:
                return True
            upper = lower = False
        elif 65 <= c <= 90:
            upper = True
        elif 97 <= c <= 122:
            lower = True
    return upper and lower


@nb.njit(cache=True)
def _charset(blob, off, n, hist, reverse, case_random):
    """(class, data length, entropy bits/char, normalised entropy) of blob[off:off+n], dots out.
    ``case_random``: the name's case was randomised on the way (DNS 0x20, seen when the sensor sits
    behind a resolver: the registered domain itself is mixed case), so mixed case says nothing."""
    upper = lower = digit = b64 = binary = hyphen = mixed = False
    allhex = True
    hexletter = False
    total = 0
    for j in range(n):
        c = np.int64(blob[off + j])
        if c == 46:
            mixed = mixed or (upper and lower)    # case is judged within a label: "HOST1.ad" is not mixed
            upper = lower = False
            continue
        total += 1
        hist[c] += 1
        if 65 <= c <= 90:
            upper = True
            if c > 70:
                allhex = False
            else:
                hexletter = True
        elif 97 <= c <= 122:
            lower = True
            if c > 102:
                allhex = False
            else:
                hexletter = True
        elif 48 <= c <= 57:
            digit = True
        elif c == 43 or c == 47 or c == 61:
            b64 = True
            allhex = False
        elif c == 45 or c == 95:
            hyphen = True
            allhex = False
        else:
            binary = True
            allhex = False
    ent = 0.0
    if total > 0:                          # H = log2 T - sum(c log2 c) / T, c log2 c from a table
        acc = 0.0
        for j in range(n):
            c = np.int64(blob[off + j])
            if c == 46 or hist[c] == 0:
                continue
            acc += CLOG2C[hist[c]]
            hist[c] = 0
        ent = max(LOG2[total] - acc / total, 0.0)
    mixed = (mixed or (upper and lower)) and not case_random
    cls = CS_PLAIN
    if reverse:
        cls = CS_PLAIN
    elif binary:
        cls = CS_BIN
    elif total >= ENC_MIN_LEN and (b64 or (mixed and digit)):
        cls = CS_B64
    elif total >= 12 and allhex and digit and hexletter and not mixed:
        cls = CS_HEX
    elif total >= 16 and digit and not mixed and not hyphen and not b64:
        cls = CS_B32
    norm = 0.0
    if total >= 2:
        norm = ent / np.log2(min(float(total), ALPHABET[cls]))
    return cls, total, ent, norm


@nb.njit(cache=True, inline="always")
def _key_slot(keys, used, chi, clo, dom, shi, slo, win):
    """Slot of the key, or the empty slot where it goes (then used[slot] is False)."""
    h = mix64(mix64(mix64(chi ^ _SEED) ^ clo) ^ dom) ^ mix64(shi ^ (slo * _M1) ^ np.uint64(win))
    mask = keys.shape[0] - 1
    i = np.int64(h & np.uint64(mask))
    while used[i]:
        k = keys[i]
        if k[K_CHI] == chi and k[K_CLO] == clo and k[K_DOM] == dom and k[K_SHI] == shi and k[K_SLO] == slo \
                and k[K_WIN] == np.uint64(win):
            return i
        i = (i + 1) & mask
    return i


@nb.njit(cache=True, inline="always")
def _set_insert(set_keys, set_serial, h, serial):
    """True when h was new (inserted)."""
    if h == 0:
        h = np.uint64(1)
    mask = set_keys.shape[0] - 1
    i = np.int64(h & np.uint64(mask))
    while set_keys[i] != 0:
        if set_keys[i] == h:
            return False
        i = (i + 1) & mask
    set_keys[i] = h
    set_serial[i] = serial + 1
    return True


@nb.njit(cache=True, inline="always")
def _dom_insert(dom_keys, h):
    mask = dom_keys.shape[0] - 1
    i = np.int64(h & np.uint64(mask))
    while dom_keys[i] != 0:
        if dom_keys[i] == h:
            return False
        i = (i + 1) & mask
    dom_keys[i] = h
    return True


# state vector slots
S_ENTRIES, S_SET, S_SERIAL, S_MAXWIN, S_DOMS, S_ROWS = range(6)


@nb.njit(cache=True, nogil=True)
def aggregate(dns, blob, start, params, psl_keys, psl_flags, maxlabel, keys, used, cnt, flt, srv, srvn,
              set_keys, set_serial, dom_keys, state, new_dom, new_dom_hash, samples):
    """Fold DNS rows ``start..`` into the table.  Returns (next row: len(dns) unless a table
    filled, new domains written to new_dom/new_dom_hash, samples written)."""
    starts = np.zeros(MAX_LABELS, np.int64)
    llen = np.zeros(MAX_LABELS, np.int64)
    lhash = np.zeros(MAX_LABELS, np.uint64)
    sh = np.zeros(MAX_LABELS + 1, np.uint64)
    hist = np.zeros(256, np.int64)
    window_ns = params[P_WINDOW_NS]
    cap = keys.shape[0]
    set_cap = set_keys.shape[0]
    dom_cap = dom_keys.shape[0]
    limit, set_limit, dom_limit = int(cap * MAX_LOAD), int(set_cap * MAX_LOAD), int(dom_cap * MAX_LOAD)
    nd = 0
    ns = 0
    zero = np.uint64(0)
    for i in range(start, dns.shape[0]):
        d = dns[i]
        n = np.int64(d.qname_len)
        if n == 0 or d.opcode != 0 or not (d.sport == 53 or d.dport == 53):
            continue
        if state[S_ENTRIES] >= limit or state[S_SET] >= set_limit or state[S_DOMS] >= dom_limit:
            return i, nd, ns
        state[S_ROWS] += 1
        qr = d.qr
        if qr == 0:
            chi, clo, shi, slo = d.src_hi, d.src_lo, d.dst_hi, d.dst_lo
        else:
            chi, clo, shi, slo = d.dst_hi, d.dst_lo, d.src_hi, d.src_lo
        ts = d.ts
        win = ts // window_ns
        state[S_MAXWIN] = max(state[S_MAXWIN], win)
        off = np.int64(d.qname_off)
        count = _split(blob, off, n, starts, llen, lhash)
        _suffixes(lhash, count, sh)
        pub, known = _public_len(sh, count, psl_keys, psl_flags, maxlabel)
        reg = pub + 1 if count > pub else count
        direct = _is_direct(blob, off, starts, llen, count, known)
        reverse = known and lhash[count - 1] == ARPA_HASH
        sub_off = 0
        dom_len = n - starts[count - reg]
        if direct:
            dom = DIRECT_HASH
            kshi, kslo = shi, slo
            sub_len = n
            if not known and llen[0] == 6 and count > 1 and _is_dnscat(blob, off):
                sub_off = 7             # the data after "dnscat."
        else:
            dom = sh[reg]
            if dom == 0 or dom == DIRECT_HASH:
                dom = np.uint64(2)
            kshi, kslo = zero, zero
            sub_len = starts[count - reg] - 1 if count > reg else 0
            if _dom_insert(dom_keys, dom):
                state[S_DOMS] += 1
                new_dom[nd, 0] = i
                new_dom[nd, 1] = starts[count - reg]
                new_dom[nd, 2] = n - starts[count - reg]
                new_dom_hash[nd] = dom
                nd += 1
        slot = _key_slot(keys, used, chi, clo, dom, kshi, kslo, win)
        row = cnt[slot]
        if not used[slot]:
            used[slot] = True
            k = keys[slot]
            k[K_CHI], k[K_CLO], k[K_DOM], k[K_SHI], k[K_SLO], k[K_WIN] = chi, clo, dom, kshi, kslo, np.uint64(win)
            row[:] = 0
            flt[slot, :] = 0.0
            srvn[slot, :] = 0
            row[C_SERIAL] = state[S_SERIAL]
            state[S_SERIAL] += 1
            row[C_FIRST_TS] = ts
            row[C_LAST_TS] = ts
            row[C_QFIRST_TS] = -1
            row[C_QLAST_TS] = -1
            state[S_ENTRIES] += 1
        serial = row[C_SERIAL]
        row[C_ROWS] += 1
        row[C_FIRST_TS] = min(row[C_FIRST_TS], ts)
        row[C_LAST_TS] = max(row[C_LAST_TS], ts)
        qcol = _qtype_col(d.qtype)
        if qr == 0:
            row[C_Q] += 1
            row[C_QT + qcol] += 1
            if row[C_QFIRST_TS] < 0 or ts < row[C_QFIRST_TS]:
                row[C_QFIRST_TS] = ts
            row[C_QLAST_TS] = max(row[C_QLAST_TS], ts)
        else:
            row[C_R] += 1
            row[C_RT + qcol] += 1
            if d.rcode == 3:
                row[C_NX] += 1
            if d.msg_len > params[P_LARGE_RESP]:
                row[C_RLARGE] += 1
            row[C_RMAX] = max(row[C_RMAX], np.int64(d.msg_len))
        if d.proto == 6:
            row[C_TCP] += 1
        row[C_NAME_SUM] += n
        row[C_NAME_MAX] = max(row[C_NAME_MAX], n)
        # servers
        placed = False
        for s in range(SERVER_SLOTS):
            if srvn[slot, s] > 0 and srv[slot, s, 0] == shi and srv[slot, s, 1] == slo:
                srvn[slot, s] += 1
                placed = True
                break
        if not placed:
            for s in range(SERVER_SLOTS):
                if srvn[slot, s] == 0:
                    srv[slot, s, 0] = shi
                    srv[slot, s, 1] = slo
                    srvn[slot, s] = 1
                    break
        # distinct subdomains
        if row[C_UNIQ] >= UNIQUE_CAP:
            row[C_SAT] += 1
            continue
        sub = _SEED ^ np.uint64(sub_len)      # the subdomain's labels, from their hashes
        for j in range(count - reg if not direct else count):
            sub = mix64(sub ^ lhash[j])
        if not _set_insert(set_keys, set_serial, mix64(sub ^ mix64(np.uint64(serial) + _SEED)), serial):
            continue
        state[S_SET] += 1
        row[C_UNIQ] += 1
        row[C_UBYTES] += sub_len
        longest = 0
        for j in range(count):
            longest = max(longest, llen[j])
        row[C_LABEL_SUM] += n - (count - 1)          # label bytes of the whole name (dots out)
        row[C_LABEL_N] += count
        row[C_LABEL_MAX] = max(row[C_LABEL_MAX], longest)
        row[C_FIRST_MAX] = max(row[C_FIRST_MAX], llen[0])
        if not reverse:
            long_name = n > params[P_LONG_NAME]
            long_first = llen[0] > params[P_LONG_LABEL]
            if long_name:
                row[C_LONG_NAME] += 1
            if long_first:
                row[C_LONG_FIRST] += 1
            if long_name or long_first:
                row[C_LONG_ANY] += 1
        case_random = not direct and _mixed_case(blob, off + n - dom_len, dom_len)
        cls, total, ent, norm = _charset(blob, off + sub_off, sub_len - sub_off, hist, reverse, case_random)
        row[C_CS + cls] += 1
        flt[slot, F_ENT_SUM] += ent
        flt[slot, F_ENT_MAX] = max(flt[slot, F_ENT_MAX], ent)
        flt[slot, F_HN_SUM] += norm
        enc = cls != CS_PLAIN and total >= params[P_ENC_MIN_LEN] and norm >= ENC_MIN_NORM_ENTROPY
        if enc:
            row[C_ENC] += 1
        # sample names (copied out by Python): only names that look like tunnel data, or any name
        # once the key has SAMPLE_AFTER distinct subdomains, so one-name keys cost Python nothing
        if row[C_SAMPLES] < SAMPLES and (enc or row[C_LONG_ANY] > 0 or row[C_UNIQ] >= SAMPLE_AFTER):
            row[C_SAMPLES] += 1
            samples[ns, 0] = serial
            samples[ns, 1] = i
            ns += 1
    return dns.shape[0], nd, ns


@nb.njit(cache=True)
def rebuild(keys, used, cnt, flt, srv, srvn, keep, set_keys, set_serial, set_keep_serials, dom_keys):
    """Move the kept slots (``keep``, a bool per slot) into fresh positions of the same arrays,
    keep the set members whose serial is in ``set_keep_serials`` (sorted), and refill dom_keys
    with the domains of the kept slots.  Returns (entries, set members, domains)."""
    cap = keys.shape[0]
    idx = np.nonzero(keep)[0]
    k_keys = keys[idx].copy()
    k_cnt = cnt[idx].copy()
    k_flt = flt[idx].copy()
    k_srv = srv[idx].copy()
    k_srvn = srvn[idx].copy()
    used[:] = False
    dom_keys[:] = 0
    ndom = 0
    for j in range(idx.shape[0]):
        k = k_keys[j]
        slot = _key_slot(keys, used, k[K_CHI], k[K_CLO], k[K_DOM], k[K_SHI], k[K_SLO], np.int64(k[K_WIN]))
        used[slot] = True
        keys[slot] = k
        cnt[slot] = k_cnt[j]
        flt[slot] = k_flt[j]
        srv[slot] = k_srv[j]
        srvn[slot] = k_srvn[j]
        if k[K_DOM] != DIRECT_HASH and _dom_insert(dom_keys, k[K_DOM]):
            ndom += 1
    old_keys = set_keys.copy()
    old_serial = set_serial.copy()
    set_keys[:] = 0
    set_serial[:] = 0
    nset = 0
    for j in range(old_keys.shape[0]):
        if old_keys[j] == 0:
            continue
        s = old_serial[j] - 1
        p = np.searchsorted(set_keep_serials, s)
        if p < set_keep_serials.shape[0] and set_keep_serials[p] == s:
            _set_insert(set_keys, set_serial, old_keys[j], s)
            nset += 1
    return idx.shape[0] if cap > 0 else 0, nset, ndom


# --- Python side: the Public Suffix List table and the per-batch extractor ----------------------

_PSL = None


def psl_table():
    """(keys, flags, most labels of a rule) of the bundled Public Suffix List, built once.
    Rules are read as publicsuffixlist reads them (lower case, first word of a line, IDN rules
    also in their punycode form, ICANN and private sections both)."""
    global _PSL
    if _PSL is None:
        from publicsuffixlist import PSLFILE, encode_idn

        bodies, kinds = [], []
        with open(PSLFILE, "rb") as fh:
            for line in fh:
                rule = line.decode("utf8", "surrogateescape").lower().split(" ")[0].rstrip()
                if not rule or rule.startswith("//"):
                    continue
                forms = {rule}
                if not rule.isascii():
                    try:
                        forms.add(("!" if rule[0] == "!" else "") + encode_idn(rule.lstrip("!")))
                    except UnicodeError:
                        pass
                for form in sorted(forms):
                    if form.startswith("!"):
                        bodies.append(form[1:]), kinds.append(PSL_EXC)
                    elif form.startswith("*."):
                        bodies.append(form[2:]), kinds.append(PSL_WILD)
                    else:
                        bodies.append(form), kinds.append(PSL_EXACT)
        raw = [b.encode("utf8", "surrogateescape") for b in bodies]
        lens = np.array([len(r) for r in raw], np.int64)
        offs = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
        buf = np.frombuffer(b"".join(raw), np.uint8)
        size = 1 << int(np.ceil(np.log2(len(raw) * 4)))
        keys, flags = np.zeros(size, np.uint64), np.zeros(size, np.uint8)
        most = _psl_build(buf, offs, lens, np.array(kinds, np.uint8), keys, flags)
        _PSL = (keys, flags, int(most))
    return _PSL


def keep_mask(cnt: np.ndarray) -> np.ndarray:
    """Closed records worth keeping for the detector: some volume or some tunnel-like name."""
    return (cnt[:, C_UBYTES] >= 64) | (cnt[:, C_LONG_ANY] > 0) | (cnt[:, C_ENC] > 0) | (cnt[:, C_UNIQ] >= 20)


def _pow2(n: int) -> int:
    return 1 << max(4, int(np.ceil(np.log2(max(n, 1)))))


class DnsTunnelFeatures:
    """Packet-grade extractor: ``update`` once per decoded batch, ``records`` at the end."""

    def __init__(self, context):
        cfg = context.config.dns_tunnel
        self.window_ns = int(cfg.window_s * 1e9)
        self.params = np.array([self.window_ns, cfg.long_name_chars, cfg.long_label_chars,
                                cfg.large_response_bytes, ENC_MIN_LEN], np.int64)
        self.psl = psl_table()
        cap = _pow2(int(cfg.capacity / MAX_LOAD) + 1)
        set_cap = _pow2(int(cfg.unique_capacity / MAX_LOAD) + 1)
        self._cap, self._set_cap = cap, set_cap
        self.keys = np.zeros((cap, NKEY), np.uint64)
        self.cnt = np.zeros((cap, NCOL), np.int64)
        self.flt = np.zeros((cap, NFCOL), np.float64)
        self.srv = np.zeros((cap, SERVER_SLOTS, 2), np.uint64)
        self.srvn = np.zeros((cap, SERVER_SLOTS), np.int64)
        self._reset()
        self.state = np.zeros(6, np.int64)
        self.state[S_MAXWIN] = np.iinfo(np.int64).min
        self.domains: dict[int, str] = {}
        self.samples: dict[int, list[str]] = {}
        self._closed: list[dict] = []
        self.early_closes = 0
        self.windows_closed = 0

    def _reset(self) -> None:
        """Empty table, set and domain set.  Fresh zeroed arrays (calloc) rather than fills: memory
        is only touched where keys land."""
        self.used = np.zeros(self._cap, np.bool_)
        self.set_keys = np.zeros(self._set_cap, np.uint64)
        self.set_serial = np.zeros(self._set_cap, np.int64)
        self.dom_keys = np.zeros(self._cap, np.uint64)

    def update(self, batch) -> None:
        dns = batch.dns
        if len(dns) == 0:
            return
        new_dom = np.empty((len(dns), 3), np.int64)
        new_hash = np.empty(len(dns), np.uint64)
        samples = np.empty((len(dns), 2), np.int64)
        before = int(self.state[S_MAXWIN])
        start = 0
        keys, flags, most = self.psl
        while True:
            nxt, nd, ns = aggregate(dns, batch.blob, start, self.params, keys, flags, most, self.keys, self.used,
                                    self.cnt, self.flt, self.srv, self.srvn, self.set_keys, self.set_serial,
                                    self.dom_keys, self.state, new_dom, new_hash, samples)
            if nd or ns:
                self._names(dns, batch.blob, new_dom[:nd], new_hash[:nd], samples[:ns])
            if nxt >= len(dns):
                break
            self.early_closes += 1
            self._close(None)
            start = nxt
        now = int(self.state[S_MAXWIN])
        if now > before and before != np.iinfo(np.int64).min:
            self._close(now)

    def _names(self, dns, blob, new_dom, new_hash, samples) -> None:
        """Text of new registered domains and sample names: once per distinct domain and at most
        SAMPLES names per key, never per packet."""
        offs = dns["qname_off"]
        lens = dns["qname_len"]
        for (row, start, length), h in zip(new_dom.tolist(), new_hash.tolist()):
            base = int(offs[row]) + start
            self.domains[h] = blob[base:base + length].tobytes().decode("ascii", "backslashreplace").lower()
        for serial, row in samples.tolist():
            base = int(offs[row])
            self.samples.setdefault(serial, []).append(
                blob[base:base + int(lens[row])].tobytes().decode("ascii", "backslashreplace"))

    def _close(self, before_window: int | None) -> None:
        """Close the keys of windows before ``before_window`` (all keys when None)."""
        used = self.used
        closing = used.copy() if before_window is None else used & (self.keys[:, K_WIN].astype(np.int64)
                                                                     < before_window)
        idx = np.flatnonzero(closing)
        if len(idx):
            self.windows_closed += 1
            cnt = self.cnt[idx]
            kept = idx[keep_mask(cnt)]
            if len(kept):
                srvn = self.srvn[kept]
                top = np.argmax(srvn, axis=1)
                rec_keys = self.keys[kept].copy()
                rec_cnt = self.cnt[kept].copy()
                self._closed.append({
                    "keys": rec_keys, "cnt": rec_cnt, "flt": self.flt[kept].copy(),
                    "server": self.srv[kept, top].copy(), "server_rows": srvn[np.arange(len(kept)), top],
                    "servers": (srvn > 0).sum(axis=1),
                    "domain": [self.domains.get(h, "") if h != int(DIRECT_HASH) else ""
                               for h in rec_keys[:, K_DOM].tolist()],
                    "samples": [self.samples.get(s, []) for s in rec_cnt[:, C_SERIAL].tolist()],
                })
        stay = used & ~closing
        if not stay.any():
            self._reset()
            self.state[S_ENTRIES] = self.state[S_SET] = self.state[S_DOMS] = 0
            self.domains, self.samples = {}, {}
            return
        serials = np.sort(self.cnt[stay, C_SERIAL])
        entries, nset, ndom = rebuild(self.keys, self.used, self.cnt, self.flt, self.srv, self.srvn, stay,
                                      self.set_keys, self.set_serial, serials, self.dom_keys)
        self.state[S_ENTRIES], self.state[S_SET], self.state[S_DOMS] = entries, nset, ndom
        open_doms = set(self.keys[self.used, K_DOM].tolist())
        self.domains = {h: t for h, t in self.domains.items() if h in open_doms}
        open_serials = set(serials.tolist())
        self.samples = {s: v for s, v in self.samples.items() if s in open_serials}

    def records(self) -> dict:
        """Every kept record (closing what is still open), as arrays plus text lists."""
        if self.used.any():
            self._close(None)
        parts = self._closed
        if not parts:
            return {"keys": np.zeros((0, NKEY), np.uint64), "cnt": np.zeros((0, NCOL), np.int64),
                    "flt": np.zeros((0, NFCOL)), "server": np.zeros((0, 2), np.uint64),
                    "server_rows": np.zeros(0, np.int64), "servers": np.zeros(0, np.int64), "domain": [],
                    "samples": []}
        out = {name: np.concatenate([p[name] for p in parts]) for name in
               ("keys", "cnt", "flt", "server", "server_rows", "servers")}
        out["domain"] = [d for p in parts for d in p["domain"]]
        out["samples"] = [s for p in parts for s in p["samples"]]
        self._closed = [out]
        return out

    def stats(self) -> dict:
        return {"dns_rows": int(self.state[S_ROWS]), "early_closes": self.early_closes,
                "windows_closed": self.windows_closed}
