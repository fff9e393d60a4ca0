#!/usr/bin/env bash
set -u
HZ=$(getconf CLK_TCK)
for bin in ringmq ringmq-e47 ringmq ringmq-e47; do
P=$((30000 + RANDOM % 10000))
taskset -c 0 /tmp/sec6-bin/$bin --shards 1 --listen 127.0.0.1:$P --password-file /tmp/sec6-pw2 --allow-anonymous false > /tmp/sec6-vt.blog 2>&1 &
B=$!
sleep 1
taskset -c 1 /tmp/sec6-bin/loadgen connect --clients 5000 --hold 1s --port $P --username dev --password secret-pw > /tmp/sec6-vt.lg 2>&1
v=0; for t in /proc/$B/task/*; do if grep -q 'ringmq-verify' $t/comm 2>/dev/null; then c=$(awk -v hz=$HZ '{ sub(/^.*\) /, ""); print int(($12 + $13) * 1000 / hz) }' $t/stat); v=$((v+c)); fi; done
echo "$bin: verifier threads CPU ${v} ms; $(grep -m1 'connections ' /tmp/sec6-vt.lg | sed 's/^ *//'); load $(cut -d' ' -f1 /proc/loadavg)"
kill -INT $B; wait $B 2>/dev/null
done
