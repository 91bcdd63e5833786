"""Named decode anomalies ("weirds", after Zeek's vocabulary).

A weird is a bit on the row that met it and a named counter in stats.json; it never stops the
run.  The bit positions below are the contract between the Numba decoders and everything else.
"""

WEIRDS = (
    "truncated_link_header",       # frame shorter than its link-layer header
    "unknown_link_type",           # LINKTYPE flowsense cannot decode
    "encapsulation_too_deep",      # more VLAN/MPLS/PPPoE layers than the decoder walks
    "truncated_IP",                # captured bytes end inside the IP header
    "bad_IP_version",              # version nibble disagrees with the link layer's claim
    "bad_IP_header_len",           # IPv4 IHL < 5 or beyond the captured bytes
    "IP_len_lt_header",            # IP total length smaller than its own header
    "IP_len_zero",                 # IPv4 total length 0 (TSO capture): captured length used
    "IP_payload_truncated",        # captured bytes end before the IP total length (snaplen)
    "bad_IPv6_ext_header",         # IPv6 extension header runs past the captured bytes
    "IPv6_ext_chain_too_long",     # more extension headers than the bounded walk allows
    "truncated_TCP_header",
    "bad_TCP_header_len",
    "truncated_UDP_header",
    "bad_UDP_len",                 # UDP length field outside [8, IP payload]
    "truncated_ICMP_header",
    "truncated_DNS_header",
    "DNS_name_truncated",          # name runs past the captured message
    "DNS_name_too_long",           # name longer than 255 bytes
    "DNS_bad_label_type",          # label type 0x40/0x80 (extended/reserved)
    "DNS_pointer_loop",            # compression pointers exceed the bounded hop count
    "DNS_question_truncated",      # qtype/qclass missing after the name
)

BIT = {name: i for i, name in enumerate(WEIRDS)}
assert len(WEIRDS) <= 32


def names(mask: int) -> list[str]:
    return [name for i, name in enumerate(WEIRDS) if mask >> i & 1]
