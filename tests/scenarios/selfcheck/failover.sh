#!/bin/sh
# Failover scenarios (carrier_failover.xml, agent_phone_failover.xml) against failover_node.py, a
# raw-UDP stand-in for two nodes: A sets the call up and dies, B re-INVITEs the dialog. The
# media side is rtp_probe.py (the Python twin of tests/src/probe.rs): it must get RTP from A, then
# follow B. 127.0.0.1, from port 47500 up (free blocks of 36). Called by run.sh; runs alone too:
#   tests/scenarios/selfcheck/failover.sh   (exit 0 when every check passed)
set -u
S=$(cd "$(dirname "$0")/.." && pwd)
C="$S/selfcheck"
W=${FAILOVER_WORK:-$(mktemp -d)}
mkdir -p "$W"
fail=0
ok() { if [ "$1" -eq 0 ]; then echo "PASS $2"; else echo "FAIL $2 (exit $1)"; fail=1; fi; }
common="-i 127.0.0.1 -timeout 40s -timeout_error -nostdin -trace_err -trace_stat -trace_msg"

# free_base FROM: the first base >= FROM (step 40) whose 36 UDP ports base..base+35 are free now (a
# case uses base..base+33: probe ports, nodes A/B, SIPp and its media ports); a running cluster's
# media ports may sit anywhere in the ephemeral range.
free_base() {
  python3 - "$1" <<'EOF'
import socket, sys
for base in range(int(sys.argv[1]), 60000, 40):
    socks, ok = [], True
    try:
        for p in range(base, base + 36):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.bind(("127.0.0.1", p))
    except OSError:
        ok = False
    for s in socks:
        s.close()
    if ok:
        print(base)
        break
EOF
}

# probe_check FILE SOURCES: every port of the probe report got RTP from exactly SOURCES sources
# (2: the dead node, then the new one; the probe followed), and sent RTP back.
probe_check() {
  python3 - "$1" "$2" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
want = int(sys.argv[2])
bad = [r for r in rows if len(r["sources"]) != want or r["received"] == 0 or r["sent"] == 0]
for r in rows:
    print("  probe", r["port"], "received", r["received"], "sent", r["sent"], "sources", r["sources"], "max_gap_ms", r["max_gap_ms"])
sys.exit(1 if bad or not rows else 0)
EOF
}

# carrier CASE NODE_ARGS SIPP_SETS CALLS: one carrier_failover run (CALLS calls, one probe port each).
carrier() {
  case=$1; node_args=$2; sets=$3; calls=$4; base=$5; scen=${6:-$S/carrier_failover.xml}
  d="$W/$case"; mkdir -p "$d"
  ports=""; csv="SEQUENTIAL\n"; i=0
  while [ $i -lt "$calls" ]; do p=$((base + 2 * i)); ports="$ports $p"; csv="$csv$p;127.0.0.1;\n"; i=$((i + 1)); done
  printf "$csv" > "$d/probe.csv"
  python3 "$C/rtp_probe.py" 60 $ports > "$d/probe.txt" & probe=$!
  python3 "$C/failover_node.py" uas --a $((base + 20)) --b $((base + 22)) --calls "$calls" \
    --expect-ports "$(echo $ports | tr ' ' ',')" $node_args > "$d/node.txt" 2>&1 & node=$!
  sleep 0.5
  (cd "$d" && sipp -sf "$scen" -p $((base + 24)) -mp $((base + 30)) -s 075595598 \
    -key caller_prefix 1380013800 -inf "$d/probe.csv" -m "$calls" $sets $common 127.0.0.1:$((base + 20)) >/dev/null 2>&1)
  sipp_rc=$?
  wait $node; node_rc=$?
  kill -TERM $probe; wait $probe
}

# phone CASE NODE_ARGS SIPP_SETS CALLS: one agent_phone_failover process serving CALLS calls.
phone() {
  case=$1; node_args=$2; sets=$3; calls=$4; base=$5
  d="$W/$case"; mkdir -p "$d"
  ports=""; csv="SEQUENTIAL\n"; i=0
  while [ $i -lt "$calls" ]; do p=$((base + 2 * i)); ports="$ports $p"; csv="$csv$p;127.0.0.1;\n"; i=$((i + 1)); done
  printf "$csv" > "$d/probe.csv"
  python3 "$C/rtp_probe.py" 60 $ports > "$d/probe.txt" & probe=$!
  (cd "$d" && sipp -sf "$S/agent_phone_failover.xml" -p $((base + 24)) -mp $((base + 30)) \
    -inf "$d/probe.csv" -m "$calls" $sets $common >/dev/null 2>&1; echo $? > "$d/sipp.rc") & sippjob=$!
  sleep 0.5
  python3 "$C/failover_node.py" uac --a $((base + 20)) --b $((base + 22)) --phone 127.0.0.1:$((base + 24)) \
    --calls "$calls" --extensions 1001,1002,1003 --expect-ports "$(echo $ports | tr ' ' ',')" $node_args > "$d/node.txt" 2>&1
  node_rc=$?
  wait $sippjob; sipp_rc=$(cat "$d/sipp.rc")
  kill -TERM $probe; wait $probe
}

report() {
  ok "$sipp_rc" "$1 (sipp)"
  ok "$node_rc" "$1 (stand-in nodes: SIP checks of failover_node.py)"
  [ "$node_rc" -eq 0 ] || cat "$d/node.txt"
  probe_check "$d/probe.txt" "$2"; ok $? "$1 (RTP probe: media at field0, followed the new node)"
}

# Carrier: 2 calls, DTMF 2 from SIPp's pcap at A, failover, the carrier's BYE reaches B.
carrier c_reinvite "--failover-after 3 --expect-dtmf 2" "-set digit 2 -set menu_ms 1000 -set talk_ms 3000 -set reinvite_ms 10000" 2 "$(free_base 47500)"
report "carrier_failover.xml (re-INVITE, carrier BYE to the new node)" 2
grep -h "BYE received at B" "$W/c_reinvite/node.txt" | sed 's/^/  /'

# Carrier: the new node hangs up after the re-INVITE.
carrier c_nodebye "--failover-after 3 --mode node-bye" "-set digit 5 -set menu_ms 1000 -set talk_ms 20000" 1 "$(free_base 47540)"
report "carrier_failover.xml (re-INVITE, node BYE)" 2

# Carrier: the first node hangs up before any failover (no re-INVITE).
carrier c_byebefore "--failover-after 3 --mode bye-before" "-set menu_ms 1000" 1 "$(free_base 47580)"
report "carrier_failover.xml (node BYE before any re-INVITE)" 1

# Carrier: no re-INVITE within reinvite_ms must fail the call, with the reason in the error log.
carrier c_none "--failover-after 1 --mode none --bye-timeout 8" "-set menu_ms 1000 -set reinvite_ms 3000" 1 "$(free_base 47620)"
[ "$sipp_rc" -ne 0 ] && grep -q "no re-INVITE within reinvite_ms" "$W"/c_none/*errors.log; ok $? "carrier_failover.xml (no re-INVITE: call fails after reinvite_ms)"

# SIPp matches the optional="global" listening receives while the call is elsewhere: a copy of
# the scenario that pauses 5 s after each tick gets the re-INVITE during a pause (3.5 s after the
# ACK) and must still answer it (with optional="true" it is "unexpected" and the call aborted).
python3 - "$S/carrier_failover.xml" "$W/carrier_failover_paused.xml" <<'EOF'
import sys
s = open(sys.argv[1]).read()
assert s.count('<label id="tick" />') == 1
open(sys.argv[2], "w").write(s.replace('<label id="tick" />', '<label id="tick" />\n  <pause milliseconds="5000" />'))
EOF
carrier c_global "--failover-after 3.5" "-set menu_ms 1000 -set talk_ms 1000" 1 "$(free_base 47780)" "$W/carrier_failover_paused.xml"
report "carrier_failover.xml (re-INVITE while the call is not in the listening receive)" 2

# Agent phone: one SIPp process, 2 calls (CSV line per call), the phone hangs up toward B.
phone p_hangup "--failover-after 3" "-set hangup_ms 2000" 2 "$(free_base 47660)"
report "agent_phone_failover.xml (2 calls, re-INVITE, phone BYE to the new node)" 2
grep -h "BYE received at B" "$W/p_hangup/node.txt" | sed 's/^/  /'

# Agent phone: default, the new node hangs up.
phone p_nodebye "--failover-after 3 --mode node-bye" "" 2 "$(free_base 47700)"
report "agent_phone_failover.xml (2 calls, re-INVITE, node BYE)" 2

# Agent phone: the first node hangs up before any failover.
phone p_byebefore "--failover-after 2 --mode bye-before" "-set hangup_ms 2000" 1 "$(free_base 47740)"
report "agent_phone_failover.xml (node BYE before any re-INVITE)" 1

if [ $fail -eq 0 ]; then [ -z "${FAILOVER_WORK:-}" ] && rm -rf "$W"; else echo "failover logs in $W"; fi
exit $fail
