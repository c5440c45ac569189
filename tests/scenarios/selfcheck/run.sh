#!/bin/sh
# SIPp against SIPp on 127.0.0.1 high ports: checks every scenario in ../ parses and runs its flow.
# Usage: tests/scenarios/selfcheck/run.sh   (exit 0 when every run succeeded)
set -u
S=$(cd "$(dirname "$0")/.." && pwd)
C="$S/selfcheck"
W=$(mktemp -d)
fail=0
ok() { if [ "$1" -eq 0 ]; then echo "PASS $2"; else echo "FAIL $2 (exit $1)"; fail=1; fi; }
common="-i 127.0.0.1 -m 1 -timeout 30s -timeout_error -nostdin -trace_err -trace_stat"

# carrier_ivr, caller hangs up (digit 2 -> DTMF event 2 must reach the RTP sink)
(cd $W && sipp -sf $C/uas_node_answer.xml -p 47060 -mp 47100 -key rtp_sink 47200 $common >/dev/null 2>&1; echo $? > uas1.rc) &
python3 $C/rtp_sink.py 47200 18 > $W/sink1.txt &
sleep 0.5
(cd $W && sipp -sf $S/carrier_ivr.xml -p 47061 -mp 47110 -s 075595598 -key caller_prefix 1380013800 -set digit 2 -set talk_ms 9000 $common 127.0.0.1:47060 >/dev/null 2>&1); ok $? "carrier_ivr.xml (caller BYE)"
wait; ok "$(cat $W/uas1.rc)" "selfcheck/uas_node_answer.xml"; cat $W/sink1.txt
grep -q "dtmf events \[2\]" $W/sink1.txt; ok $? "carrier_ivr.xml sent DTMF 2 and audio"

# carrier_ivr, node hangs up during the talk pause (global BYE branch)
(cd $W && sipp -sf $C/uas_node_release.xml -p 47062 -mp 47120 -key rtp_sink 47202 -set release_ms 8000 $common >/dev/null 2>&1; echo $? > uas2.rc) &
sleep 0.5
(cd $W && sipp -sf $S/carrier_ivr.xml -p 47063 -mp 47130 -s 075595598 -key caller_prefix 1380013800 -set digit 9 -set talk_ms 20000 $common 127.0.0.1:47062 >/dev/null 2>&1); ok $? "carrier_ivr.xml (node BYE)"
wait; ok "$(cat $W/uas2.rc)" "selfcheck/uas_node_release.xml"

# carrier_abandon
(cd $W && sipp -sf $C/uas_node_answer.xml -p 47064 -mp 47140 -key rtp_sink 47204 $common >/dev/null 2>&1; echo $? > uas3.rc) &
sleep 0.5
(cd $W && sipp -sf $S/carrier_abandon.xml -p 47065 -mp 47150 -s 075595598 -key caller_prefix 1380013800 -set hold_ms 1000 $common 127.0.0.1:47064 >/dev/null 2>&1); ok $? "carrier_abandon.xml"
wait; ok "$(cat $W/uas3.rc)" "selfcheck/uas_node_answer.xml (abandon)"

# carrier_wait_release
(cd $W && sipp -sf $C/uas_node_release.xml -p 47066 -mp 47160 -key rtp_sink 47206 -set release_ms 9000 $common >/dev/null 2>&1; echo $? > uas4.rc) &
sleep 0.5
(cd $W && sipp -sf $S/carrier_wait_release.xml -p 47067 -mp 47170 -s 075595598 -key caller_prefix 1380013800 $common 127.0.0.1:47066 >/dev/null 2>&1); ok $? "carrier_wait_release.xml"
wait; ok "$(cat $W/uas4.rc)" "selfcheck/uas_node_release.xml (wait release)"

# carrier_voicemail: the stand-in node hangs up after the message (DTMF 0, *, # must arrive)
(cd $W && sipp -sf $C/uas_node_release.xml -p 47068 -mp 47230 -key rtp_sink 47211 -set release_ms 23000 $common >/dev/null 2>&1; echo $? > uas5.rc) &
python3 $C/rtp_sink.py 47211 24 > $W/sink6.txt &
sleep 0.5
(cd $W && sipp -sf $S/carrier_voicemail.xml -p 47069 -mp 47240 -s 075595598 -key caller_prefix 1380013800 $common 127.0.0.1:47068 >/dev/null 2>&1); ok $? "carrier_voicemail.xml"
wait; ok "$(cat $W/uas5.rc)" "selfcheck/uas_node_release.xml (voicemail)"; cat $W/sink6.txt
grep -q "dtmf events \[0, 10, 11\]" $W/sink6.txt; ok $? "carrier_voicemail.xml sent DTMF 0 * #"

# agent_register then agent_phone on the same port, called by a stand-in node
printf 'SEQUENTIAL\n1001;secret;gd.callgrid.local;\n' > $W/agent.csv
(cd $W && sipp -sf $C/registrar.xml -p 47070 $common >/dev/null 2>&1; echo $? > reg.rc) &
sleep 0.5
(cd $W && sipp -sf $S/agent_register.xml -p 47071 -inf $W/agent.csv -au 1001 -ap secret $common 127.0.0.1:47070 >/dev/null 2>&1); ok $? "agent_register.xml"
wait; ok "$(cat $W/reg.rc)" "selfcheck/registrar.xml (digest verified)"
(cd $W && sipp -sf $S/agent_phone.xml -p 47071 -mp 47180 $common >/dev/null 2>&1; echo $? > ph.rc) &
python3 $C/rtp_sink.py 47208 11 > $W/sink5.txt &
sleep 0.5
(cd $W && sipp -sf $C/uac_node_call.xml -p 47072 -mp 47190 -key rtp_sink 47208 $common 127.0.0.1:47071 >/dev/null 2>&1); ok $? "selfcheck/uac_node_call.xml"
wait; ok "$(cat $W/ph.rc)" "agent_phone.xml"; cat $W/sink5.txt

# agent_phone_hangup
(cd $W && sipp -sf $S/agent_phone_hangup.xml -p 47073 -mp 47210 -set talk_ms 8000 $common >/dev/null 2>&1; echo $? > ph2.rc) &
sleep 0.5
(cd $W && sipp -sf $C/uac_node_call_wait_bye.xml -p 47074 -mp 47220 -key rtp_sink 47209 $common 127.0.0.1:47073 >/dev/null 2>&1); ok $? "selfcheck/uac_node_call_wait_bye.xml"
wait; ok "$(cat $W/ph2.rc)" "agent_phone_hangup.xml"

# Failover: carrier_failover.xml and agent_phone_failover.xml against two stand-in nodes.
sh $C/failover.sh || fail=1

[ $fail -eq 0 ] && rm -rf "$W" || echo "logs in $W"
exit $fail
