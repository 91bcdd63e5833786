"""Deny-log decoders for Cisco ASA/FTD, PAN-OS, FortiGate and Check Point.

Every corpus line of these vendors goes through ``parse_line`` with the full vendor set: it must be
claimed by its own decoder, denies must carry the fields read off the line by hand (literal
expectations below), the rest must be skips; the one failing corpus line is named with its reason.
Synthetic lines in the vendors' documented formats cover the message kinds the corpus lacks.  The
Hypothesis tests hold every ``parse`` to the contract: it never raises, whatever the text.
"""

from __future__ import annotations

import ipaddress

import pytest
from conftest import CORPUS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowsense.denylog import checkpoint, cisco_asa, fortigate, iptables, panos
from flowsense.denylog.base import ACTIONS, Deny, Fail, Header, Skip
from flowsense.denylog.framing import TimeContext, frame
from flowsense.denylog.reader import parse_line

VENDORS = (iptables, cisco_asa, panos, fortigate, checkpoint)
MINE = (cisco_asa, panos, fortigate, checkpoint)
FIREWALL = CORPUS / "firewall"
CTX = TimeContext(2016)

ASA = "metron/cisco-asa-syslog.log"
PAN = "metron/panos-traffic-threat-syslog.log"
PAN_CS = "crowdsec-hub/panos-threat-nmap-nse.log"
FGT = "beats/fortigate-traffic.log"
CKP = "beats/checkpoint-r81-syslog.log"
FILES = {ASA: "cisco_asa", PAN: "panos", PAN_CS: "panos", FGT: "fortigate", CKP: "checkpoint"}  # who claims each
COUNTS = {ASA: (14, 114, 0), PAN: (43, 56, 1), PAN_CS: (1, 1, 0), FGT: (1, 12, 0), CKP: (0, 1, 0)}  # deny, skip, fail
# The only corpus failure: metron sanitised the destination 23.200.10.217 into '23.200,10,217', two
# extra CSV columns that shift the action column onto a NAT port.
KNOWN_FAILS = {(PAN, 88): Fail("unknown action")}
IIS = "threat:HTTP: IIS Denial Of Service Attempt(40019)"
# (file, line number) -> (src, dst, proto, sport, dport, action, rule) read off the line, or the Skip/Fail
CORPUS_EXPECTED = {
    (ASA, 1): Skip("not a deny"),  # 609001 Built local-host
    (ASA, 2): Skip("not a deny"),  # 302021 Teardown ICMP with a (LOCAL\user.name) annotation
    (ASA, 9): ("186.111.72.11", "204.111.72.226", 6, 80, 45019, "deny", "ASA-106015"),
    (ASA, 17): ("10.22.8.84", "10.22.8.219", 6, 445, 60726, "deny", "ASA-106015"),
    (ASA, 21): ("50.111.72.230", "204.111.72.254", 6, 80, 53077, "deny", "ASA-106015"),
    (ASA, 35): ("10.22.8.112", "198.111.72.227", 6, 52235, 80, "deny", "ASA-106015"),
    (ASA, 69): ("10.22.8.85", "10.22.8.11", 6, 58359, 88, "deny", "ASA-106015"),
    (ASA, 98): ("186.111.72.11", "204.111.72.199", 6, 80, 61438, "deny", "ASA-106015"),
    (ASA, 106): ("172.20.30.1", "10.25.24.122", 1, 0, 0, "deny", "ASA-313004"),
    (ASA, 108): ("14.169.120.66", "172.18.105.105", 47, 0, 0, "deny", "ASA-106010"),
    (ASA, 112): ("198.27.69.147", "", 1, 3, 3, "deny", "ASA-313001"),  # no destination: the ASA itself
    (ASA, 124): ("10.47.32.45", "10.254.8.193", 6, 60641, 5060, "deny", "ASA-106001"),
    (ASA, 125): ("10.230.4.87", "10.22.75.251", 1, 8, 0, "deny", "ASA-106014"),
    (ASA, 126): ("10.230.4.88", "192.168.2.53", 17, 42350, 53, "deny", "Inside_access_in"),
    (ASA, 127): ("10.30.6.47", "192.168.133.204", 6, 4562, 443, "deny", "Inside_access_in"),
    (ASA, 128): ("10.30.6.47", "192.168.133.204", 6, 4563, 443, "deny", "Inside_access_in"),
    (PAN, 1): ("10.0.0.115", "216.0.10.198", 6, 54180, 80, "reset", IIS),
    (PAN, 17): ("94.0.0.3", "10.0.0.208", 6, 80, 60194, "deny", "threat:Virus/Win32.WGeneric.dyxeh(2367869)"),
    (PAN, 18): ("10.0.0.38", "10.3.0.31", 6, 60510, 445, "reset",
                "threat:Microsoft Windows SMBv2 Remote Code Execution Vulnerability(32541)"),
    (PAN, 30): ("10.0.0.67", "54.0.0.140", 6, 50429, 80, "reset",
                "threat:WGeneric.Gen Command and Control Traffic(13600)"),
    (PAN, 33): Skip("alert"),
    (PAN, 51): Skip("allow"),
    (PAN, 72): ("10.0.0.219", "10.3.0.21", 6, 62063, 389, "deny", "catch all deny"),
    (PAN, 88): Fail("unknown action"),
    (PAN_CS, 1): ("1.2.3.2", "1.2.3.3", 6, 47094, 22, "reset",
                  "threat:SSH User Authentication Brute Force Attempt(40015)"),
    (PAN_CS, 2): Skip("alert"),
    (FGT, 1): ("10.10.10.10", "175.16.199.1", 17, 60899, 161, "deny", "0"),
    (FGT, 2): Skip("not a deny"),  # action dns
    (FGT, 3): Skip("not a deny"),  # accept
    (FGT, 6): Skip("not a deny"),  # ip-conn
    (FGT, 7): Skip("not a deny"),  # close, though utmaction="block"
    (FGT, 13): Skip("not a deny"),  # server-rst
    (CKP, 1): Skip("not a deny"),  # Accept, a Log Update with '\]' inside a value
}

# Lines in the documented formats, for what the corpus lacks: (vendor, line, expected)
SYNTHETIC = [
    ("cisco_asa", "May  5 19:02:58 dev01: %ASA-2-106006: Deny inbound UDP from 192.0.2.2/65020 to 198.51.100.10/65020 "
     "on interface fw111", ("192.0.2.2", "198.51.100.10", 17, 65020, 65020, "deny", "ASA-106006")),
    ("cisco_asa", "Apr 30 2013 09:22:33: %ASA-2-106007: Deny inbound UDP from 192.0.2.66/12981 to 10.1.2.60/53 due "
     "to DNS Query", ("192.0.2.66", "10.1.2.60", 17, 12981, 53, "deny", "ASA-106007")),
    ("cisco_asa", "<166>Mar  1 10:00:00 fw1 %ASA-2-106001: Inbound TCP connection denied from 2001:db8::7/51000 to "
     "2001:db8:1::80/22 flags SYN  on interface outside", ("2001:db8::7", "2001:db8:1::80", 6, 51000, 22, "deny",
                                                          "ASA-106001")),
    ("cisco_asa", "May  5 19:02:25 dev01: %ASA-3-106010: Deny inbound sctp src fw111:10.10.10.10/5114 dst "
     "fw111:10.10.10.11/2", ("10.10.10.10", "10.10.10.11", 132, 5114, 2, "deny", "ASA-106010")),
    ("cisco_asa", "May  5 19:02:26 dev01: %ASA-3-106014: Deny inbound icmp src fw111:10.10.10.10 dst "
     "fw111:10.10.10.12(type 8, code 0)", ("10.10.10.10", "10.10.10.12", 1, 8, 0, "deny", "ASA-106014")),
    ("cisco_asa", "Dec 11 2018 08:01:38 <IP>: %ASA-6-106015: Deny TCP (no connection) from 192.0.2.222/1234 to "
     "192.168.1.34/5679 flags RST  on interface outside", ("192.0.2.222", "192.168.1.34", 6, 1234, 5679, "deny",
                                                           "ASA-106015")),
    ("cisco_asa", "Sep 12 2014 06:50:53 GIFRCHN01 : %ASA-2-106016: Deny IP spoof from (0.0.0.0) to 192.88.99.47 on "
     "interface Mobile_Traffic", ("0.0.0.0", "192.88.99.47", 0, 0, 0, "deny", "ASA-106016")),
    ("cisco_asa", "May  5 18:40:50 dev01: %ASA-4-106021: Deny TCP reverse path check from 192.168.2.2 to "
     "10.10.10.10 on interface fw111", ("192.168.2.2", "10.10.10.10", 6, 0, 0, "deny", "ASA-106021")),
    ("cisco_asa", "<161>Mar  1 10:00:00 fw1 : %ASA-1-106022: Deny UDP connection spoof from 198.51.100.3 to "
     "10.0.0.9 on interface inside", ("198.51.100.3", "10.0.0.9", 17, 0, 0, "deny", "ASA-106022")),
    ("cisco_asa", "<164>Mar  1 10:00:00 fw1 %ASA-4-106023: Deny icmp src outside:192.0.2.7 dst inside:10.0.0.5 "
     "(type 8, code 0) by access-group \"OUTSIDE_IN\" [0x0, 0x0]", ("192.0.2.7", "10.0.0.5", 1, 8, 0, "deny",
                                                                    "OUTSIDE_IN")),
    ("cisco_asa", "<164>Mar  1 10:00:00 fw1 %ASA-4-106023: Deny tcp src outside:2001:db8::10/51234(LOCAL\\alice) "
     "dst inside:2001:db8:1::5/443 by access-group \"OUTSIDE_IN\" [0x0, 0x0]",
     ("2001:db8::10", "2001:db8:1::5", 6, 51234, 443, "deny", "OUTSIDE_IN")),
    ("cisco_asa", "Apr 27 02:02:02 dev01: %ASA-4-106023: Deny tcp src outside:10.10.10.2/56444 dst "
     "srv:192.168.2.2/51635(testhostname.domain) by access-group \"global_access_1\"",
     ("10.10.10.2", "192.168.2.2", 6, 56444, 51635, "deny", "global_access_1")),
    # type/code on a TCP deny (seen in the wild): the ports stay the ports
    ("cisco_asa", "Apr 15 2013 09:36:50: %ASA-4-106023: Deny tcp src dmz:10.1.2.30/63016 dst outside:192.0.0.8/53 "
     "type 3, code 0, by access-group \"acl_dmz\" [0xe3aab522, 0x0]",
     ("10.1.2.30", "192.0.0.8", 6, 63016, 53, "deny", "acl_dmz")),
    ("cisco_asa", "Apr 24 2013 16:00:28 INT-FW01 : %ASA-6-106100: access-list inside denied udp "
     "inside/172.29.2.101(1039) -> outside/192.0.2.10(53) hit-cnt 1 first hit [0xd820e56a, 0x0]",
     ("172.29.2.101", "192.0.2.10", 17, 1039, 53, "deny", "inside")),
    ("cisco_asa", "Apr 15 2014 09:34:34 EDT: %ASA-session-5-106100: access-list acl_in denied tcp "
     "inside/10.1.2.16(2241)->outside/192.0.0.89(2000) hit-cnt 1 first hit [0x71a87d94, 0x0]",
     ("10.1.2.16", "192.0.0.89", 6, 2241, 2000, "deny", "acl_in")),
    # 106100 prints ICMP as source (0) -> destination (icmp type)
    ("cisco_asa", "<166>Mar  1 10:00:00 fw1 %ASA-6-106100: access-list OUT denied icmp outside/198.51.100.7(0) -> "
     "inside/10.0.0.5(8) hit-cnt 1 first hit [0x0, 0x0]", ("198.51.100.7", "10.0.0.5", 1, 8, 0, "deny", "OUT")),
    ("cisco_asa", "Apr 24 2013 16:00:27 INT-FW01 : %ASA-6-106100: access-list inside permitted udp "
     "inside/172.29.2.3(1065) -> outside/192.0.2.57(53) hit-cnt 144 300-second interval [0xe982c7a4, 0x0]",
     Skip("permitted")),
    ("cisco_asa", "Apr 30 2013 09:23:43: %ASA-5-106100: access-list acl_in est-allowed tcp inside/10.0.0.46(49840) "
     "-> outside/192.0.0.88(40443) hit-cnt 1 first hit [0x71a87d94, 0x0]", Skip("permitted")),
    ("cisco_asa", "Oct 20 2019 15:15:15 dev01: %ASA-5-106100: access-list testrulename denied tcp "
     "insideintf/somedomainname.local(27218) -> OUTSIDE/195.122.12.242(53) hit-cnt 1 first hit [0x1, 0x0]",
     Fail("unparsed 106100")),  # a name where the address belongs
    ("cisco_asa", "<163>Mar  1 10:00:00 fw1 %ASA-3-313008: Denied IPv6-ICMP type=128, code=0 from 2001:db8::7 on "
     "interface outside", ("2001:db8::7", "", 58, 128, 0, "deny", "ASA-313008")),
    ("cisco_asa", "Apr 27 02:03:03 dev01: %ASA-3-710003: TCP access denied by ACL from 104.46.88.19/6370 to "
     "outside:195.74.114.34/23", ("104.46.88.19", "195.74.114.34", 6, 6370, 23, "deny", "ASA-710003")),
    ("cisco_asa", "Jan 14 2015 13:16:14: %ASA-4-338008: Dynamic Filter dropped blacklisted TCP traffic from "
     "inside:10.1.1.1/33340 (10.2.1.1/33340) to outsidet:192.0.2.223/80 (192.0.2.223/80), destination 192.0.2.223 "
     "resolved from dynamic list: 192.0.2.223/255.255.255.255, threat-level: very-high, category: Malware",
     ("10.1.1.1", "192.0.2.223", 6, 33340, 80, "drop", "ASA-338008")),
    ("cisco_asa", "May  5 18:40:50 dev01: %FTD-4-106023: Deny tcp src fw111:10.10.10.10/64388 dst "
     "out111:192.168.2.2/443 by access-group \"out1111_access_out\" [0x47e21ef4, 0x47e21ef4]",
     ("10.10.10.10", "192.168.2.2", 6, 64388, 443, "deny", "out1111_access_out")),
    ("cisco_asa", "<162>Mar  1 10:00:00 ftd1 %FTD-2-106001: Inbound TCP connection denied from 192.0.2.9/40000 to "
     "10.0.0.4/3389 flags SYN  on interface outside", ("192.0.2.9", "10.0.0.4", 6, 40000, 3389, "deny",
                                                      "FTD-106001")),
    ("cisco_asa", "2019-08-16T09:35:15Z firepower  %FTD-1-430002: AccessControlRuleAction: Block, SrcIP: 10.0.100.30, "
     "DstIP: 10.0.1.20, ICMPType: Echo Request, ICMPCode: No Code, Protocol: icmp, IngressInterface: output, "
     "EgressInterface: input, ACPolicy: default, AccessControlRuleName: Block-inbound-ICMP, InitiatorPackets: 0",
     ("10.0.100.30", "10.0.1.20", 1, 0, 0, "deny", "Block-inbound-ICMP")),
    ("cisco_asa", "Aug 14 2019 15:09:41 siem-ftd  %FTD-1-430003: AccessControlRuleAction: Block with reset, "
     "SrcIP: 10.0.1.20, DstIP: 10.0.100.30, SrcPort: 41544, DstPort: 8000, Protocol: tcp, ACPolicy: default, "
     "AccessControlRuleName: Intrusion-Rule", ("10.0.1.20", "10.0.100.30", 6, 41544, 8000, "reset",
                                               "Intrusion-Rule")),
    ("cisco_asa", "2019-08-15T16:07:18Z firepower  %FTD-1-430002: AccessControlRuleAction: Allow, SrcIP: 10.0.1.20, "
     "DstIP: 52.59.244.233, SrcPort: 43228, DstPort: 80, Protocol: tcp, AccessControlRuleName: Rule-1",
     Skip("not a deny")),
    ("cisco_asa", "Aug 15 2012 23:30:09 : %ASA-6-302016 Teardown UDP connection 40 for outside:10.44.4.4/500 to "
     "inside:10.44.2.2/500 duration 0:02:02 bytes 1416", Skip("not a deny")),
    ("cisco_asa", "May  5 19:02:25 dev01: %ASA-4-733100: [192.168.2.2] drop rate-1 exceeded. Current burst rate is 0 "
     "per second", Skip("not a deny")),
    ("cisco_asa", "<164>Mar  1 10:00:00 fw1 %ASA-4-419002: Received duplicate TCP SYN from outside:192.0.2.1/1000 to "
     "inside:10.0.0.1/80 with different initial sequence number.", Skip("not a deny")),
    ("cisco_asa", "<164>Mar  1 10:00:00 fw1 %ASA-4-106023: Deny tcp src outside:192.0.2.7/1000 by access-group "
     "\"X\"", Fail("unparsed 106023")),
    # PAN-OS 10 TRAFFIC in RFC 5424 framing, device name column present
    ("panos", "<14>1 2024-03-01T10:00:00.000Z pa-fw01 - - - - 1,2024/03/01 10:00:00,007051000113358,TRAFFIC,deny,"
     "2561,2024/03/01 10:00:00,198.51.100.23,203.0.113.10,0.0.0.0,0.0.0.0,deny-inbound-rdp,,,not-applicable,vsys1,"
     "untrust,dmz,ethernet1/1,,default,2024/03/01 10:00:00,0,1,51515,3389,0,0,0x0,tcp,reset-both,74,74,0,1,"
     "2024/03/01 10:00:00,0,any,,7291039291,0x0,US,US,,1,0,policy-deny,0,0,0,0,,PA-VM-01,from-policy",
     ("198.51.100.23", "203.0.113.10", 6, 51515, 3389, "reset", "deny-inbound-rdp")),
    # URL block with a quoted, comma-holding URL column
    ("panos", "<12>Mar  1 10:05:00 pa-fw01 1,2024/03/01 10:05:00,007051000113358,THREAT,url,2561,2024/03/01 10:05:00,"
     "10.1.1.20,192.0.2.80,203.0.113.1,192.0.2.80,web-out,,,web-browsing,vsys1,trust,untrust,ethernet1/2,"
     "ethernet1/1,default,2024/03/01 10:05:00,884422,1,50111,80,40111,80,0x40b000,tcp,block-url,"
     "\"bad.example.com/a,b?x=1\",(9999),malware,informational,client-to-server,7204134051344758261,"
     "0x8000000000000000,10.0.0.0-10.255.255.255,US,,text/html,0,,,1,,,,,,,,,0,0,0,0,,PA-VM-01",
     ("10.1.1.20", "192.0.2.80", 6, 50111, 80, "deny", "threat:(9999)")),
    ("panos", "<14>Mar  1 10:00:01 pa-fw01 1,2024/03/01 10:00:01,007051000113358,TRAFFIC,drop,1,2024/03/01 10:00:01,"
     "2001:db8::5,2001:db8:1::9,::,::,drop-icmp6,,,ping6,vsys1,untrust,trust,ethernet1/1,,default,"
     "2024/03/01 10:00:01,0,1,0,0,0,0,0x0,ipv6-icmp,drop-icmp,78,78,0,1,2024/03/01 10:00:01,0,any,,1,0x0,US,US,,1,0,"
     "policy-deny", ("2001:db8::5", "2001:db8:1::9", 58, 0, 0, "drop", "drop-icmp6")),
    ("panos", "<14>Mar  1 10:00:02 pa-fw01 1,2024/03/01 10:00:02,007051000113358,TRAFFIC,start,1,2024/03/01 10:00:02,"
     "10.1.1.20,192.0.2.80,203.0.113.1,192.0.2.80,web-out,,,ssl,vsys1,trust,untrust,ethernet1/2,ethernet1/1,default,"
     "2024/03/01 10:00:02,884423,1,50112,443,40112,443,0x400000,tcp,allow,120,60,60,2", Skip("allow")),
    ("panos", "<14>Mar  1 10:00:03 pa-fw01 1,2024/03/01 10:00:03,007051000113358,SYSTEM,general,0,2024/03/01 10:00:03,"
     ",general,,0,0,general,informational,\"User admin logged in via Web from 192.0.2.5 using https\",1,0x0,0,0,0,0,,"
     "PA-VM-01", Skip("not a deny")),
    ("panos", "1,2024/03/01 10:00:04,007051000113358,TRAFFIC,deny,1,2024/03/01 10:00:04,10.0.0.1,10.0.0.2",
     Fail("short record")),
    ("panos", "1,2024/03/01 10:00:05,007051000113358,TRAFFIC,deny,1,2024/03/01 10:00:05,10.0.0.1,\"10.0.0.2\",a\rb",
     Fail("bad CSV")),  # a CR inside a record, which the csv module refuses
    # FortiGate: quoted values with spaces (and a decoy 'action=' inside one), eventtime in ns
    ("fortigate", "<189>date=2024-03-01 time=10:00:00 devname=\"FGT-HQ\" devid=\"FG100FTK19000001\" "
     "eventtime=1709287200123456789 tz=\"+0100\" logid=\"0000000013\" type=\"traffic\" subtype=\"forward\" "
     "level=\"notice\" vd=\"root\" srcip=198.51.100.7 srcport=40123 srcintf=\"wan1\" srcintfrole=\"wan\" "
     "dstip=203.0.113.25 dstport=445 dstintf=\"internal\" dstintfrole=\"lan\" sessionid=1234567 proto=6 "
     "action=\"deny\" policyid=7 policytype=\"policy\" policyname=\"Block inbound SMB\" "
     "msg=\"note: srcip=10.9.9.9 action=accept is text\" service=\"SMB\" dstcountry=\"United States\" "
     "srccountry=\"Reserved\" trandisp=\"noop\" duration=0 sentbyte=0 rcvdbyte=0 sentpkt=0 appcat=\"unscanned\"",
     ("198.51.100.7", "203.0.113.25", 6, 40123, 445, "deny", "Block inbound SMB")),
    # FortiOS 5.0 wrote 'status=' and left values unquoted
    ("fortigate", "<13>date=2014-09-04 time=10:04:39 devname=FortiGate-500D devid=FGT5HD3914800308 logid=0000000013 "
     "type=traffic subtype=forward level=notice vd=FWTest srcip=172.22.240.129 srcintf=\"port11\" dstip=172.22.28.32 "
     "dstintf=\"port12\" sessionid=115384 status=deny policyid=2 dstcountry=\"Reserved\" srccountry=\"Reserved\" "
     "trandisp=noop service=PING proto=1 duration=0 sentbyte=0 rcvdbyte=0",
     ("172.22.240.129", "172.22.28.32", 1, 0, 0, "deny", "2")),
    ("fortigate", "<189>date=2019-05-13 time=17:05:59 logid=\"0720018433\" type=\"utm\" subtype=\"anomaly\" "
     "eventtype=\"anomaly\" level=\"alert\" vd=\"vdom1\" eventtime=1557792359461869329 severity=\"critical\" "
     "srcip=10.1.100.11 srccountry=\"Reserved\" dstip=172.16.200.55 srcintf=\"port12\" srcintfrole=\"undefined\" "
     "sessionid=0 action=\"clear_session\" proto=1 service=\"PING\" count=1 attack=\"icmp_flood\" "
     "icmpid=\"0x1474\" icmptype=\"0x08\" icmpcode=\"0x00\" attackid=16777316 policyid=1 policytype=\"DoS-policy\" "
     "msg=\"anomaly: icmp_flood, 51 > threshold 50\"", ("10.1.100.11", "172.16.200.55", 1, 8, 0, "drop", "1")),
    ("fortigate", "<189>date=2019-05-15 time=17:56:41 logid=\"0419016384\" type=\"utm\" subtype=\"ips\" "
     "eventtype=\"signature\" level=\"alert\" vd=\"root\" eventtime=1557968201 severity=\"critical\" "
     "srcip=10.1.100.22 srccountry=\"Reserved\" dstip=172.16.200.55 srcintf=\"port10\" srcintfrole=\"lan\" "
     "dstintf=\"port9\" dstintfrole=\"wan\" sessionid=4017 action=\"dropped\" proto=6 service=\"HTTP\" policyid=1 "
     "attack=\"Adobe.Flash.newfunction.Handling.Code.Execution\" srcport=46810 dstport=80",
     ("10.1.100.22", "172.16.200.55", 6, 46810, 80, "drop", "1")),
    ("fortigate", "<189>date=2019-05-13 time=16:29:45 logid=\"0316013056\" type=\"utm\" subtype=\"webfilter\" "
     "eventtype=\"ftgd_blk\" level=\"warning\" vd=\"vdom1\" eventtime=1557790184975119738 policyid=1 "
     "sessionid=381780 srcip=10.1.100.11 srcport=44258 srcintf=\"port12\" dstip=185.244.31.158 dstport=80 "
     "dstintf=\"port11\" proto=6 service=\"HTTP\" hostname=\"morrishittu.ddns.net\" action=\"blocked\" "
     "msg=\"URL belongs to a denied category in policy\"", ("10.1.100.11", "185.244.31.158", 6, 44258, 80, "deny",
                                                            "1")),
    ("fortigate", "date=2024-03-01 time=10:00:00 devname=\"FGT-HQ\" logid=\"0001000014\" type=\"traffic\" "
     "subtype=\"local\" level=\"notice\" vd=\"root\" eventtime=1709287200123 srcip=2001:db8::5 srcintf=\"wan1\" "
     "dstip=2001:db8:ffff::1 dstintf=\"root\" sessionid=99 proto=58 action=\"deny\" policyid=0 "
     "policytype=\"local-in-policy6\" service=\"PING6\" icmpid=\"0x0001\" icmptype=\"0x80\" icmpcode=\"0x00\"",
     ("2001:db8::5", "2001:db8:ffff::1", 58, 128, 0, "deny", "0")),
    ("fortigate", "date=2024-03-01 time=10:00:05 devname=\"FGT-HQ\" logid=\"0000000013\" type=\"traffic\" "
     "subtype=\"forward\" srcip=10.0.0.5 srcport=5000 dstip=192.0.2.10 dstport=443 proto=6 action=\"accept\" "
     "msg=\"was action=deny before the change\" policyid=3", Skip("not a deny")),
    ("fortigate", "date=2024-03-01 time=10:00:06 devname=\"FGT-HQ\" logid=\"0100032001\" type=\"event\" "
     "subtype=\"system\" level=\"information\" vd=\"root\" logdesc=\"Admin login successful\" user=\"admin\" "
     "ui=\"https(192.0.2.9)\" action=\"login\" status=\"success\" msg=\"Administrator admin logged in\"",
     Skip("not a deny")),
    ("fortigate", "date=2024-03-01 time=10:00:07 logid=\"0000000013\" type=\"traffic\" subtype=\"forward\" "
     "srcip=10.0.0.5 srcport=5000 dstport=443 proto=6 action=\"deny\" policyid=3", Fail("missing address")),
    ("checkpoint", "<134>1 2021-05-05T12:27:09Z cp-m CheckPoint 1231 - [action:\"Drop\"; flags:\"278528\"; "
     "ifdir:\"inbound\"; ifname:\"bond1.3999\"; loguid:\"{0x60928f1d,0x8,0x40de101f,0xfcdbb197}\"; "
     "origin:\"127.0.0.1\"; originsicname:\"CN=CP,O=cp.com.9jjkfo\"; sequencenum:\"62\"; time:\"1620217629\"; "
     "version:\"5\"; __policy_id_tag:\"product=VPN-1 & FireWall-1[db_tag={F6212FB3-54CE-6344-9164-B224119E2B92};"
     "mgmt=cp-m;date=1620031791;policy_name=CP-Cluster]\"; action_reason:\"Dropped by multiportal infrastructure\"; "
     "dst:\"89.160.20.156\"; product:\"VPN & FireWall\"; proto:\"6\"; s_port:\"52780\"; service:\"80\"; "
     "src:\"89.160.20.156\"]", ("89.160.20.156", "89.160.20.156", 6, 52780, 80, "drop", "")),
    # escaped quote and ']' in the rule name; xlatesrc/rule_action must not be taken for src/action
    ("checkpoint", "<134>1 2024-03-01T10:00:00Z gw1 CheckPoint 4242 - [action:\"Drop\"; ifdir:\"inbound\"; "
     "loguid:\"{0x65e1a7a0,0x0,0x1e02a8c0,0xc0000000}\"; origin:\"192.0.2.1\"; time:\"1709287200\"; "
     "__policy_id_tag:\"product=VPN-1 & FireWall-1[db_tag={12345678-ABCD};mgmt=mgmt;policy_name=Standard\\]\"; "
     "dst:\"203.0.113.80\"; layer_name:\"Network\"; match_id:\"12\"; rule_action:\"Accept\"; "
     "rule_name:\"Block \\\"bad\\\" hosts [tmp\\]\"; xlatesrc:\"192.0.2.99\"; proto:\"6\"; s_port:\"51515\"; "
     "service:\"22\"; src:\"198.51.100.9\"]",
     ("198.51.100.9", "203.0.113.80", 6, 51515, 22, "drop", "Block \"bad\" hosts [tmp]")),
    ("checkpoint", "<134>1 2024-03-01T10:00:01Z gw1 CheckPoint 4242 - [action:\"Reject\"; loguid:\"{0x1,0x2}\"; "
     "origin:\"192.0.2.1\"; time:\"1709287201\"; dst:\"2001:db8::53\"; layer_name:\"Network\"; match_id:\"5\"; "
     "proto:\"17\"; s_port:\"40000\"; service:\"53\"; src:\"2001:db8:1::10\"]",
     ("2001:db8:1::10", "2001:db8::53", 17, 40000, 53, "reject", "Network:5")),
    # header rewritten by a relay: the record is in the message, not the SD slot
    ("checkpoint", "<134>Mar  1 10:00:02 gw1 CheckPoint[4242]: [action:\"Drop\"; loguid:\"{0x1,0x3}\"; "
     "time:\"1709287202\"; src:\"192.0.2.50\"; dst:\"192.0.2.60\"; proto:\"1\"; icmp_type:\"8\"; icmp_code:\"0\"; "
     "layer_name:\"Network\"; match_id:\"3\"]", ("192.0.2.50", "192.0.2.60", 1, 8, 0, "drop", "Network:3")),
    ("checkpoint", "<134>1 2022-07-06T16:08:25Z checkpoint-logs CheckPoint 2700 - [action:\"Log In\"; "
     "flags:\"150784\"; ifdir:\"inbound\"; logid:\"131073\"; loguid:\"{0xf40caad8,0x2dccf344,0xbf0fb0c8,0x6e943a48}\"; "
     "origin:\"216.160.83.56\"; src:\"81.2.69.192\"; product:\"Identity Awareness\"]", Skip("not a deny")),
    # LEA exports
    ("checkpoint", "time=2016-04-18 17:11:20|action=drop|orig=192.168.0.155|i/f_dir=inbound|i/f_name=eth1|"
     "has_accounting=0|uuid=<00000000,00000000,00000000,00000000>|product=VPN-1 & FireWall-1|rule=4|"
     "rule_uid={6F779801F-9827-4084-A513-8C6094CCDF29}|src=192.168.0.90|s_port=54438|dst=224.0.0.252|service=5355|"
     "proto=udp|__policy_id_tag=product=VPN-1 & FireWall-1[db_tag={EFBF0C12-72BB-5542-909E-6976080402E5};"
     "mgmt=mgmt_4400;date=1460945227;policy_name=Standard]|origin_sic_name=cn=cp_mgmt,o=4400..wewbq8",
     ("192.168.0.90", "224.0.0.252", 17, 54438, 5355, "drop", "4")),
    ("checkpoint", "loc=12|time=1460945480|action=reject|orig=192.0.2.1|i/f_dir=inbound|i/f_name=eth0|"
     "product=VPN-1 & FireWall-1|rule=7|rule_name=no\\|ping|src=198.51.100.4|dst=192.0.2.10|proto=icmp|"
     "ICMP Type=8|ICMP Code=0", ("198.51.100.4", "192.0.2.10", 1, 8, 0, "reject", "no|ping")),
    ("checkpoint", "Oct 22 01:27:16 pluto lea: loc=7803|time=1199716450|action=accept|orig=fw1|i/f_dir=inbound|"
     "i/f_name=PCnet1|has_accounting=0|uuid=<47823861,00000253,7b040a0a,000007b6>|product=VPN-1 & FireWall-1|"
     "src=naruto|s_port=36973|dst=fw1|service=941|proto=tcp|rule=1", Skip("not a deny")),
    ("checkpoint", "Oct 22 01:27:17 pluto lea: loc=7804|time=1199716451|action=drop|orig=fw1|i/f_dir=inbound|"
     "product=VPN-1 & FireWall-1|src=naruto|s_port=36974|dst=fw1|service=22|proto=tcp|rule=2",
     Fail("address is a name")),
]



def synthetic(fragment: str) -> str:
    """The one synthetic line holding ``fragment``."""
    (line,) = [line for _, line, _ in SYNTHETIC if fragment in line]
    return line


# Device and time the messages carry themselves: (line, device, ts ns)
CARRIED = [
    (synthetic("PA-VM-01,from-policy"), "PA-VM-01", None),  # PAN-OS times are zoneless: left to the framing
    (synthetic("Block inbound SMB"), "FGT-HQ", 1709287200123456789),  # eventtime in ns
    (synthetic("FortiGate-500D"), "FortiGate-500D", None),  # FortiOS 5.0: no eventtime
    (synthetic("eventtime=1557968201 "), "", 1557968201 * 10**9),  # eventtime in s
    (synthetic("eventtime=1709287200123 "), "FGT-HQ", 1709287200123 * 10**6),  # eventtime in ms
    (synthetic("cp-m CheckPoint"), "127.0.0.1", 1620217629 * 10**9),
    (synthetic("orig=192.168.0.155"), "192.168.0.155", None),  # LEA local date text
    (synthetic("rule_name=no"), "192.0.2.1", 1460945480 * 10**9),
]


def corpus_lines():
    for rel in FILES:
        for number, line in enumerate((FIREWALL / rel).read_text(encoding="utf-8").splitlines(), 1):
            yield rel, number, line


def outcome(result):
    """A Deny as the (src, dst, proto, sport, dport, action, rule) the expectations are written in."""
    if isinstance(result, Deny):
        return result.src, result.dst, result.proto, result.sport, result.dport, result.action, result.rule
    return result


def check_deny(d: Deny):
    """What every deny must satisfy, whatever the vendor."""
    ipaddress.ip_address(d.src)
    if d.dst or not d.rule.endswith(("-313001", "-313008")):  # only these name no destination
        ipaddress.ip_address(d.dst)
    assert 0 <= d.proto < 256 and 0 <= d.sport < 65536 and 0 <= d.dport < 65536
    assert d.action in ACTIONS
    assert d.ts is None or 10**18 <= d.ts < 10**19


@pytest.fixture(scope="module")
def parsed(corpus):
    return {(rel, number): parse_line(line, CTX, VENDORS) for rel, number, line in corpus_lines()}


def test_corpus_lines_claimed_by_their_vendor(parsed):
    for (rel, number), (vendor, result, _) in parsed.items():
        assert vendor == FILES[rel], (rel, number, vendor, result)


def test_corpus_counts(parsed):
    for rel, expected in COUNTS.items():
        results = [r for (f, _), (_, r, _) in parsed.items() if f == rel]
        assert tuple(sum(isinstance(r, kind) for r in results) for kind in (Deny, Skip, Fail)) == expected, rel


def test_corpus_expected_lines(parsed):
    for key, expected in CORPUS_EXPECTED.items():
        assert outcome(parsed[key][1]) == expected, key


def test_corpus_denies_are_sound_and_fails_known(parsed):
    for key, (_, result, _) in parsed.items():
        if isinstance(result, Deny):
            check_deny(result)
        elif isinstance(result, Fail):
            assert KNOWN_FAILS.get(key) == result, key
    assert all(parsed[key][1] == fail for key, fail in KNOWN_FAILS.items())


def test_other_vendors_lines_not_claimed(corpus):
    """Files of other vendors (iptables, pf, Juniper, MikroTik, UniFi CEF) are none of ours."""
    others = [p for p in FIREWALL.rglob("*.log") if str(p.relative_to(FIREWALL)) not in FILES]
    assert others
    for path in others:
        for line in path.read_text(encoding="utf-8").splitlines():
            hdr, msg = frame(line, CTX)
            assert [m.NAME for m in MINE if m.parse(msg, hdr) is not None] == [], (path.name, line)


@pytest.mark.parametrize("vendor, line, expected", SYNTHETIC, ids=[f"{v}-{i}" for i, (v, _, _) in
                                                                   enumerate(SYNTHETIC)])
def test_documented_formats(vendor, line, expected):
    name, result, _ = parse_line(line, CTX, VENDORS)
    assert name == vendor
    assert outcome(result) == expected
    if isinstance(result, Deny):
        check_deny(result)


@pytest.mark.parametrize("line, device, ts", CARRIED)
def test_device_and_time_from_the_message(line, device, ts):
    _, result, _ = parse_line(line, CTX, VENDORS)
    assert (result.device, result.ts) == (device, ts)


@pytest.mark.parametrize("module, text", [
    (cisco_asa, "%ASA-x-106023: Deny tcp"), (cisco_asa, "the ASA says %ASA-"),
    (panos, "1,2,3,4,5,6"), (panos, "1,2024/03/01 10:00:00,0001,FOOBAR,x,y"),
    (fortigate, "logid= but nothing"),
    (fortigate, "CEF:0|Fortinet|Fortigate|v6|13|x|5|FTNTFGTlogid=0000000013 act=deny"),
    (checkpoint, "[action:\"Drop\"; src:\"1.2.3.4\"]"), (checkpoint, "a=b|product=x"),
])
def test_near_misses_are_not_claimed(module, text):
    hdr, msg = frame(text, CTX)
    assert module.parse(msg, hdr) is None


SEEDS = [line for _, _, line in corpus_lines()] if FIREWALL.is_dir() else []
SEEDS += [line for _, line, _ in SYNTHETIC]
PREFIXES = ["%ASA-4-106023: Deny ", "%ASA-6-106100: access-list a denied ", "%FTD-1-430002: ",
            "%ASA-3-313001: Denied ICMP type=", "1,2024/03/01 10:00:00,0001,TRAFFIC,deny,1,x,",
            "1,2024/03/01 10:00:00,0001,THREAT,url,1,x,", 'logid="0000000013" type="traffic" action="deny" ',
            "<134>1 2024-03-01T10:00:00Z gw CheckPoint 1 - [action:\"Drop\"; loguid:\"x\"; ",
            "action=drop|product=x|orig=y|"]
RESULTS = (type(None), Deny, Skip, Fail)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def parse_all(line: str):
    hdr, msg = frame(line, CTX)
    for module in MINE:
        assert isinstance(module.parse(msg, hdr), RESULTS)


@FUZZ
@given(st.text(max_size=400))
def test_random_text_never_raises(text):
    parse_all(text)


@FUZZ
@given(st.sampled_from(PREFIXES), st.text(max_size=300), st.text(max_size=300))
def test_vendor_prefixed_text_never_raises(prefix, text, sd):
    parse_all(prefix + text)
    for module in MINE:  # odd headers too: any SD text, the Check Point program name
        assert isinstance(module.parse(prefix + text, Header(sd=sd, program="CheckPoint")), RESULTS)


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 3000), st.text(max_size=3)), max_size=8),
       st.integers(0, 3000))
def test_mutated_lines_never_raise(seed, edits, cut):
    line = seed
    for at, text in edits:
        line = line[:at] + text + line[at + 1:]
    parse_all(line[:cut] if cut < len(line) else line)
