#!/usr/bin/env python3
"""Classifies perf script samples (comm,pid,tid,time,ip,sym; -g) of a storm window by
process (broker pid, loadgen pid, other) and by the path each sample served."""
import sys, collections, re
path, bpid, lpid = sys.argv[1], sys.argv[2], sys.argv[3]
samples = []; cur = None; hdr = None
for l in open(path):
    l = l.rstrip('\n')
    if not l.strip():
        if cur is not None: samples.append((hdr, cur)); cur = None
        continue
    if not l[0].isspace():
        m = re.search(r' (\d+)/(\d+) ', l)
        hdr = m.group(1) if m else '?'; cur = []
        continue
    p = l.split(None, 1)
    if len(p) == 2: cur.append(p[1])
if cur is not None: samples.append((hdr, cur))

def who(pid):
    return 'broker' if pid == bpid else 'loadgen' if pid == lpid else 'others'

def path_of(fr):
    s = set(f.split('+')[0] for f in fr)
    soft = 'net_rx_action' in s
    side = ''
    if soft:
        if s & {'tcp_conn_request', 'tcp_v4_conn_request'}: side = 'rx: SYN on the listener (broker side)'
        elif s & {'tcp_check_req', 'tcp_child_process', 'tcp_v4_syn_recv_sock'}: side = 'rx: handshake ACK/first data creating the child (broker side)'
        elif 'tcp_rcv_synsent_state_process' in s or ('tcp_rcv_state_process' in s and 'tcp_finish_connect' in s): side = 'rx: SYN-ACK at the client (loadgen side)'
        elif s & {'tcp_rcv_established', 'tcp_data_queue'}: side = 'rx: established segment (either side)'
        else: side = 'rx: IP/TCP demux before the socket (either side)'
    for key, name in [('tcp_v4_connect', 'connect (SYN)'), ('io_connect', 'connect (SYN)'), ('__sys_connect', 'connect (SYN)'),
                      ('io_accept', 'accept'), ('do_accept', 'accept'),
                      ('io_socket', 'socket()'), ('__sys_socket', 'socket()'), ('__sys_bind', 'bind/setsockopt'), ('do_sock_setsockopt', 'bind/setsockopt'), ('__sys_setsockopt', 'bind/setsockopt'),
                      ('io_send', 'send'), ('io_sendmsg', 'send'), ('__sys_sendto', 'send'),
                      ('io_recv', 'recv'), ('io_recvmsg', 'recv'), ('__sys_recvfrom', 'recv'),
                      ('io_msg_ring', 'hand-off'), ('io_async_cancel', 'cancel/close'), ('io_close', 'cancel/close'), ('__fput', 'close'),
                      ('run_timer_softirq', 'timers'), ('tcp_delack_timer', 'timers')]:
        if key in s:
            return name + (' / ' + side if side else '')
    if side: return 'other / ' + side
    if any(f.startswith(('schedule', '__schedule', 'finish_task_switch')) for f in fr[:6]): return 'scheduler'
    if fr and ('::' in fr[0] or fr[0].startswith(('mi_', '_mi_'))): return 'user space'
    if any('io_uring' in f or f.startswith('io_') for f in fr): return 'io_uring other'
    return 'other'

c = collections.Counter(); tot = collections.Counter()
for pid, fr in samples:
    w = who(pid); tot[w] += 1; c[(w, path_of(fr))] += 1
n = len(samples)
for w in ('broker', 'loadgen', 'others'):
    print(f"## {w}: {tot[w]} samples, {100*tot[w]/n:.1f}% of the window's samples")
    for (ww, p), v in sorted(c.items(), key=lambda kv: -kv[1]):
        if ww == w and v / max(1, tot[w]) >= 0.01:
            print(f"  {100*v/tot[w]:5.1f}%  {p}")
