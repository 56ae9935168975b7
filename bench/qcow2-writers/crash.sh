#!/bin/sh
# Crash-then-resume test: <w>-crash writes 1/3 of the shuffled chunks, checkpoints
# (ours: checkpoint(); imago: flush()+sync()), writes the next 1/3, exits without flushing
# (process crash; page cache survives). <w>-continue reopens the file and rewrites every
# chunk from the checkpoint on, then finishes. Then qemu-img check + compare.
cd "$(dirname "$0")/data" || exit 1
B=../target/release/qcow2-writers-bench
for c in "2g 1048576" "odd37 4608" "40g 1048576" "200g 1048576"; do
  set -- $c
  for w in ours imago; do
    o=crash-$1-$w.qcow2; rm -f $o
    $B $w-crash in-$1.raw $o --chunk $2 --shuffle 21 2>/dev/null
    crashed=$(qemu-img check $o 2>&1 | grep -c '^ERROR'); crashed_rc=$(qemu-img check $o >/dev/null 2>&1; echo $?)
    $B $w-continue in-$1.raw $o --chunk $2 --shuffle 21 2>/dev/null || echo "continue failed"
    qemu-img check --output=json $o > /tmp/chk.json 2>/dev/null; rc=$?
    res=$(python3 -c "import json;j=json.load(open('/tmp/chk.json'));print('corruptions=%s leaks=%s'%(j.get('corruptions',0),j.get('leaks',0)))")
    qemu-img compare -q -f raw -F qcow2 in-$1.raw $o && cmp=identical || cmp=DIFFERS
    echo "| $1 | $w | after crash: check rc=$crashed_rc, $crashed ERROR lines | after resume: check rc=$rc $res | $cmp |"
    rm -f $o
  done
done
