#!/usr/bin/env bash
set -u
cd /tmp
rm -f /tmp/sec6-pw; mosquitto_passwd -c -b /tmp/sec6-pw dev secret-pw
HZ=$(getconf CLK_TCK)
cpu() { awk -v hz=$HZ '{ sub(/^.*\) /, ""); print int(($12 + $13) * 1000 / hz) }' /proc/$1/stat; }
one() {
  local name=$1 port=$2 pid=$3 auth=$4
  sleep 1; local c0=$(cpu $pid)
  local args=(); [[ $auth == yes ]] && args=(--username dev --password secret-pw)
  taskset -c 1 /tmp/sec6-bin/loadgen connect --clients 5000 --hold 1s --port $port "${args[@]}" > /tmp/sec6-conn-$name.log 2>&1
  local c1=$(cpu $pid)
  echo "$name auth=$auth: $(grep -m1 'connections ' /tmp/sec6-conn-$name.log | sed 's/^ *//') | broker CPU $((c1-c0)) ms | load $(cut -d' ' -f1 /proc/loadavg)"
  kill -INT $pid; wait $pid 2>/dev/null
}
for auth in yes no; do
P=$((30000 + RANDOM % 10000))
if [[ $auth == yes ]]; then A=(--password-file /tmp/sec6-pw --allow-anonymous false); else A=(--allow-anonymous true); fi
taskset -c 0 /tmp/sec6-bin/ringmq --shards 1 --listen 127.0.0.1:$P "${A[@]}" > /tmp/sec6-conn-r.blog 2>&1 &
one ringmq $P $! $auth
grep -o 'auth_verified=[0-9]*\|auth_cache_hits=[0-9]*' /tmp/sec6-conn-r.blog | tr '\n' ' '; echo
P=$((30000 + RANDOM % 10000))
printf 'listener %s 127.0.0.1\n%s\npersistence false\nlog_dest stderr\nlog_type error\nuser root\nmax_connections -1\n' $P "$([[ $auth == yes ]] && echo "password_file /tmp/sec6-pw
allow_anonymous false" || echo "allow_anonymous true")" > /tmp/sec6-mq.conf
taskset -c 0 mosquitto -c /tmp/sec6-mq.conf > /tmp/sec6-conn-m.blog 2>&1 &
one mosquitto $P $! $auth
done
